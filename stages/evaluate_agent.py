"""evaluate_agent: returns of every sampled checkpoint of one game's runs, under each evaluation protocol.

Writes <out_dir>/returns.csv (game, seed, step, frames, protocol, episode, return), metrics.json (per
protocol: the last checkpoints' mean return over seeds and episodes, and its human-normalised score: null for a
game without reference scores, such as AirRaid and Carnival) and learning_curve.png, all at once.

The sampled root is one game's ALGO_protocol/GAME folder of SEED/model_STEP.gz files, or a multi-task run's
ALGO_protocol/multitask folder (its network plays GAME, one of its games): ours, or a published
DQN-family run brought in with `dvc import-url <collection>/DQN_modern/Pong/0
data/checkpoints_sampled/DQN_modern/Pong/0` (its Q-network acts epsilon-greedily; see
atarirep.agents.checkpoints.load_network for what loads).
"""

from atarirep.agents import evaluation
from atarirep.plumbing import params
from atarirep.plumbing.errors import run_stage


def main(game: str, sampled_root: str, out_dir: str) -> None:
    p = params.load("evaluate_agent")
    evaluation.evaluate_checkpoints(
        game,
        sampled_root,
        out_dir,
        protocols=p.protocols,
        episodes=p.episodes,
        epsilon=p.epsilon,
        max_steps=p.max_steps,
        seed=p.seed,
        device=p.device,
    )


if __name__ == "__main__":
    run_stage(main)
