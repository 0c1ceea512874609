"""pretrain: learn an encoder for one method from the collected pretraining episodes, without labels."""

from atarirep import pretraining
from atarirep.plumbing import params
from atarirep.plumbing.errors import run_stage


def main(method: str, episodes_dir: str, out_dir: str) -> None:
    p = params.load("pretrain")
    pretraining.pretrain(
        method,
        episodes_dir,
        out_dir,
        epochs=p.epochs,
        batch_size=p.batch_size,
        lr=p.lr,
        patience=p.patience,
        keep=p.keep,
        seed=p.seed,
        device=p.device,
        sampling=p.sampling,
        precision=p.precision,
        method_config=p.method_config.get(method, {}),
    )


if __name__ == "__main__":
    run_stage(main)
