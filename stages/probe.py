"""probe: score how well one method's encoder (or a baseline) tells the `env` game's state variables."""

from atarirep import probe
from atarirep.plumbing import params
from atarirep.plumbing.errors import run_stage


def main(method: str, episodes_dir: str, out_dir: str, encoder_path: str | None = None) -> None:
    p = params.load("probe")
    probe.run(
        episodes_dir,
        encoder_path,
        out_dir,
        method=method,
        lr=p.lr,
        batch_size=p.batch_size,
        epochs=p.epochs,
        patience=p.patience,
        seed=p.seed,
        device=p.device,
        fast=p.fast,
        supervised_per_variable=p.supervised_per_variable,
        supervised_epochs=p.supervised_epochs,
        sampling=p.sampling,
        keep=p.keep,
        progress=True,
    )


if __name__ == "__main__":
    run_stage(main)
