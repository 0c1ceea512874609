"""probe_checkpoints: probe the encoder of every sampled checkpoint of one game's agent runs (every seed).

Writes <out_dir>/scores.csv (per seed, checkpoint and variable), f1_by_category.{csv,md} (a row per seed x
checkpoint), f1_by_category.png (against training frames, mean over seeds) and metrics.json; and the first
seed's last checkpoint as the method `rl_agent` in the probe stage's format (<rl_agent_dir>/scores.csv and
metrics.json), for the report's tables.
"""

from atarirep.agents import probing
from atarirep.plumbing import params
from atarirep.plumbing.errors import run_stage


def main(game: str, sampled_root: str, episodes_dir: str, out_dir: str, rl_agent_dir: str) -> None:
    p = params.load("probe")
    probing.probe_checkpoints(
        game,
        sampled_root,
        episodes_dir,
        out_dir,
        rl_agent_dir,
        lr=p.lr,
        batch_size=p.batch_size,
        epochs=p.epochs,
        patience=p.patience,
        seed=p.seed,
        device=p.device,
        sampling=p.sampling,
        keep=p.keep,
        progress=True,
    )


if __name__ == "__main__":
    run_stage(main)
