"""RL agents, their checkpoints, and what is measured on them.

- `vector_env`: the games stepped as a batch by ale-py's C++ `AtariVectorEnv` (84x84x4 stacks) under a
  protocol of `atarirep.envs.PROTOCOLS`, and `agent_frames`, the same 84x84 view of stored 210x160 frames.
- `network`: the actor-critic on the Nature CNN, the one network every algorithm here trains.
- `ppo`: PPO, one file that reads top to bottom (CleanRL's `ppo_atari` settings, PROTOCOLS.md 4).
- `checkpoints`: the published trained-agent format (gzip of a torch-saved dict with "estimator_state"),
  the `ALGO_protocol/GAME/SEED/model_STEP.gz` layout, and the geometric rule that keeps K of N.
- `evaluation`: returns of checkpoints under the classic and modern protocols, human-normalised scores.
"""
