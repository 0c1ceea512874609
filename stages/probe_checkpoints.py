"""probe_checkpoints: probe the encoder of every sampled checkpoint of one game's agent runs (every seed).

Writes <out_dir>/scores.csv (per seed, checkpoint and variable), f1_by_category.{csv,md} (a row per seed x
checkpoint), f1_by_category.png (against training frames, mean over seeds) and metrics.json; and the first
seed's last checkpoint as the method `rl_agent` in the probe stage's format (<rl_agent_dir>/scores.csv and
metrics.json), for the report's tables.
"""

from atarirep import reports
from atarirep.agents import probing
from atarirep.plumbing import atomic, params
from atarirep.plumbing.errors import run_stage
from atarirep.probe.stage import write_scores
from atarirep.scores import summarize


def main(game: str, sampled_root: str, episodes_dir: str, out_dir: str, rl_agent_dir: str) -> None:
    p = params.load("probe")
    sampled, num_test_frames = probing.probe_sampled(
        sampled_root,
        episodes_dir,
        game=game,
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
    curve = probing.category_curve(sampled, "f1")
    game = sampled["game"].iloc[0]
    first_seed = int(sampled["seed"].min())
    last_step = int(sampled.loc[sampled["seed"] == first_seed, "step"].max())
    rl_agent = probing.method_rows(sampled, first_seed, last_step)
    last = curve.loc[curve.groupby("seed")["step"].idxmax()]
    metrics = {
        "game": game,
        "seeds": [int(s) for s in last["seed"]],
        "num_checkpoints": len(curve),
        "num_variables": int(rl_agent.shape[0]),
        "num_test_frames": num_test_frames,
        "last_checkpoint": {
            "frames": [int(f) for f in last["frames"]],
            "f1_across_categories": [float(v) for v in last["across_categories"]],
            "f1_across_categories_mean": float(last["across_categories"].mean()),
        },
        "rl_agent": {"seed": first_seed, "step": last_step, **summarize(rl_agent)},
    }
    table = sampled.assign(categories=sampled["categories"].map(";".join)).drop(columns="method")
    shown = curve.set_index("seed")
    with atomic.atomic_dir(out_dir) as folder:
        (folder / "scores.csv").write_text(table.to_csv(index=False, lineterminator="\n"))
        (folder / "f1_by_category.csv").write_text(reports.to_csv(shown))
        (folder / "f1_by_category.md").write_text(reports.to_markdown(shown))
        figure = probing.category_curve_figure(curve, "f1", title=f"{game}, {reports.DISPLAY_NAMES[probing.METHOD]}: ")
        figure.savefig(folder / "f1_by_category.png", dpi=120, metadata={"Software": None})
        atomic.write_json(folder / "metrics.json", metrics)
    write_scores(rl_agent_dir, rl_agent, num_test_frames=num_test_frames, sampling=p.sampling)
    print(
        f"probed {len(curve)} checkpoints of {len(last)} seed(s) of {game}; {probing.METHOD} is seed "
        f"{first_seed}'s step {last_step}"
    )


if __name__ == "__main__":
    run_stage(main)
