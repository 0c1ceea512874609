"""RL agents, their checkpoints, and what is measured on them.

- `vector_env`: the games stepped as a batch as CleanRL's wrapper chain steps them (84x84x4 stacks) under a
  protocol of `atarirep.games.PROTOCOLS`, and `agent_frames`, the 84x84 view of stored 210x160 frames.
- `network`: the networks agents use: the actor-critic on the Nature CNN (PPO), IMPALA's (Nature CNN or
  IMPALA ResNet, the last action and reward beside the features, a value output per game under PopArt), the
  Q-network of imported DQN-family checkpoints.
- `acting`: the one rule by which every network acts (Gumbel-max draws, greedy, epsilon) and the one loop that
  plays games with a network (evaluation, saliency, collection by a trained agent).
- `ppo`: PPO, one file that reads top to bottom (CleanRL's `ppo_atari` settings, docs/protocols.md 4).
- `runner`: what PPO and IMPALA runs share around their loops: the work folder a killed run resumes from,
  the run's fingerprint, the learning-rate and checkpoint schedules, dvclive logging.
- `impala`, `vtrace`, `popart`: IMPALA (monobeast actors and learner), V-trace, PopArt.
- `checkpoints`: the published trained-agent format (gzip of a torch-saved dict with "estimator_state"),
  the `ALGO_protocol/GAME/SEED/model_STEP.gz` layout, and the geometric rule that keeps K of N.
- `evaluation`: returns of checkpoints under the classic and modern protocols (their reports: atarirep.reports).
- `probing`: an agent's encoder probed on labelled episodes with the probe package's batched probes.
- `saliency`: perturbation saliency of the policy and the value.
"""
