"""saliency: perturbation saliency maps (Greydanus et al. 2018) of one game's last sampled checkpoints.

    python stages/saliency.py GAME SAMPLED_ROOT OUT_DIR      (SAMPLED_ROOT: data/checkpoints_sampled/PPO_classic/GAME)

For each of the last `saliency.checkpoints` checkpoints of the first seed: one game played by its policy
under `saliency.protocol` (one env; actions drawn as evaluate_agent draws them, from the same seed), the
first `saliency.frames` observations, and both maps of each (radius and stride from the params). Writes, all
at once, OUT_DIR/SEED/model_STEP/episode.gif (every kept frame), frame_XXXX.png (every 8th) and
OUT_DIR/metrics.json (per checkpoint: frames, seconds, mean policy and value saliency).
"""

from atarirep.agents import saliency
from atarirep.plumbing import params
from atarirep.plumbing.errors import run_stage


def main(game: str, sampled_root: str, out_dir: str) -> None:
    saliency.checkpoint_saliency(game, sampled_root, out_dir, params.load("saliency"))


if __name__ == "__main__":
    run_stage(main)
