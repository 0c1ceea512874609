"""The agents' report: the trained agents' final returns per game and protocol, and their aggregates over games.

`report` reads <evaluations_root>/<game>/returns.csv (evaluate_agent) for the games of params `report.games`;
writes, at once, <out_dir>/returns_by_game.{md,csv} (the last checkpoints' mean return and its
human-normalised score, per game x protocol), aggregate.{json,md} (IQM, median and mean of
human-normalised scores over seeds x games with stratified-bootstrap 95% CIs, per protocol),
learning_curves.png, and training_<game>.png: the return curve above F1 per category of the agent's
encoder against the same training frames (<agent_probes_root>/<game>/f1_by_category.csv, probe_checkpoints).
The multi-task run's evaluations (evaluate_multitask, one folder per game of `multitask.games`) give
multitask_returns_by_game (beside the single-task agent's return where a game is in both),
multitask_aggregate and multitask_learning_curves.png; comparison.{md,csv} sets out, per multi-task game and
protocol, the reference's three models (docs/protocols.md 4) where they were run: single-task agents,
"multi-task (clipped)" (multitask.algo IMPALA) and "multi-task PopArt" (IMPALA_PopArt), naming those that
were not. Aggregates cover the games with reference scores only.
"""

import os
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter

from atarirep.plumbing.atomic import atomic_dir, write_json
from atarirep.plumbing.errors import UserError
from atarirep.reports import returns
from atarirep.reports.curves import draw_returns, learning_curve_figure
from atarirep.reports.figures import draw_category_curve
from atarirep.reports.formats import to_csv, to_markdown

# The reference's three models, in its order: the column label and how a caption names each.
MODELS = {
    "single_task": "single-task",
    "multitask_clipped": "multi-task (clipped)",
    "multitask_popart": "multi-task PopArt",
}
MULTITASK_MODEL = {"IMPALA": "multitask_clipped", "IMPALA_PopArt": "multitask_popart"}  # by multitask.algo


def read_returns(path: Path, game: str) -> pd.DataFrame:
    try:
        rows = pd.read_csv(path)
    except FileNotFoundError:
        raise UserError(
            f"{path} is missing; run `dvc repro` for evaluate_agent on {game}, or drop {game} from games"
        ) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        raise UserError(f"{path} is not a readable CSV; rerun evaluate_agent on {game}") from None
    if list(rows.columns) != returns.ROW_COLUMNS or set(rows["game"]) != {game}:
        raise UserError(
            f"{path} does not hold {game}'s returns with columns {', '.join(returns.ROW_COLUMNS)}; "
            f"rerun evaluate_agent on {game}"
        )
    return rows


def seed_by_game(final: pd.DataFrame, protocol: str, games: list[str]) -> pd.DataFrame:
    """(seeds x games) human-normalised mean final return under `protocol`; every game needs the same seeds."""
    means = final[final["protocol"] == protocol].groupby(["seed", "game"])["return"].mean().unstack("game")
    means = means.reindex(columns=games)
    if means.isna().any().any():
        missing = [f"{game} seed {seed}" for game in games for seed in means.index if pd.isna(means.at[seed, game])]
        raise UserError(
            f"protocol {protocol} has no returns for {', '.join(missing)}; evaluate every game with "
            "the same seeds and protocols (rerun evaluate_agent)"
        )
    return pd.DataFrame(
        {game: returns.human_normalized(game, means[game].to_numpy()) for game in games}, index=means.index
    )


def training_figure(returns: pd.DataFrame, curve: pd.DataFrame, game: str) -> Figure:
    """Return (top) and F1 per category of the agent's encoder (bottom) against the same training frames."""
    fig = Figure(figsize=(7.5, 6.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    draw_returns(top, returns)
    top.set_xlabel("")  # the shared axis is labelled below
    top.set_title(
        f"{game}: return and what the agent's encoder knows, over training "
        f"({returns['seed'].nunique()} seed{'s' * (returns['seed'].nunique() != 1)})"
    )
    draw_category_curve(bottom, curve)
    bottom.xaxis.set_major_formatter(EngFormatter())
    bottom.legend(fontsize="x-small", ncols=2)
    return fig


def returns_report(rows: pd.DataFrame, games: list[str], seed: int) -> tuple[pd.DataFrame, dict, str]:
    """(per game x protocol: the last checkpoints' mean return and its human-normalised score; the aggregate
    over the games that have reference scores, per protocol (rliable, `returns.aggregate`); that aggregate
    as a Markdown table with its caption)."""
    final = returns.final_returns(rows)
    protocols = list(dict.fromkeys(final["protocol"]))
    scored = [game for game in games if returns.has_reference_scores(game)]
    by_game = pd.DataFrame(index=pd.Index(games, name="game"))
    for protocol in protocols:
        means = final[final["protocol"] == protocol].groupby("game")["return"].mean().reindex(games)
        by_game[f"{protocol}_return"] = means
        by_game[f"{protocol}_human_normalized"] = [
            returns.human_normalized(g, m) if g in scored else float("nan") for g, m in means.items()
        ]
    caption = (
        "Human-normalised final returns: estimate [95% CI, stratified bootstrap over seeds, "
        f"{returns.BOOTSTRAP_REPS} resamples]"
    )
    left_out = [game for game in games if game not in scored]
    if left_out:
        caption += f"; {', '.join(left_out)} left out (no random and human reference scores)"
    if not scored:
        return by_game, {}, caption + "\n\nNo game has reference scores: no aggregate.\n"
    scores = {protocol: seed_by_game(final, protocol, scored).to_numpy() for protocol in protocols}
    summary = returns.aggregate(scores, reps=returns.BOOTSTRAP_REPS, seed=seed)
    cells = {
        protocol: {
            metric: f"{v['value']:.3f} [{v['ci_low']:.3f}, {v['ci_high']:.3f}]"
            for metric, v in summary[protocol].items()
            if isinstance(v, dict)
        }
        for protocol in protocols
    }
    table = pd.DataFrame.from_dict(cells, orient="index").rename_axis("protocol")
    table["runs x games"] = [f"{summary[p]['runs']} x {summary[p]['games']}" for p in protocols]
    return by_game, summary, caption + "\n\n" + to_markdown(table)


def comparison(single: pd.DataFrame, multitask: pd.DataFrame, algo: str) -> tuple[pd.DataFrame, str]:
    """(per multi-task game: the final mean return of each of the reference's models that has one, a column
    PROTOCOL_MODEL each; its Markdown with a caption naming the models left out). `single` and `multitask`
    are `returns_report` tables (PROTOCOL_return columns), `algo` the multi-task run's multitask.algo."""
    if algo not in MULTITASK_MODEL:
        raise UserError(f"params.yaml multitask.algo={algo!r} is unknown; use one of {', '.join(MULTITASK_MODEL)}")
    models = {"single_task": single, MULTITASK_MODEL[algo]: multitask}
    protocols = list(
        dict.fromkeys(c[: -len("_return")] for t in models.values() for c in t.columns if c.endswith("_return"))
    )
    table = pd.DataFrame(index=multitask.index)
    for protocol in protocols:
        for label in MODELS:
            column = f"{protocol}_return"
            if label in models and column in models[label]:
                values = models[label][column].reindex(table.index)
                if values.notna().any():
                    table[f"{protocol}_{label}"] = values
    shown = [label for label in MODELS if any(c.endswith(f"_{label}") for c in table.columns)]
    caption = "Final mean return per game of the reference's three models (docs/protocols.md 4): " + ", ".join(
        MODELS[label] for label in shown
    )
    left_out = [MODELS[label] for label in MODELS if label not in shown]
    if left_out:
        caption += (
            f"; not run here: {', '.join(left_out)} (single-task: the games of `games`; the multi-task "
            "models: multitask.algo IMPALA or IMPALA_PopArt, one per run of the pipeline)"
        )
    return table, caption + "\n\n" + to_markdown(table)


def report(
    evaluations_root: str | os.PathLike,
    agent_probes_root: str | os.PathLike,
    multitask_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    games: list[str],
    multitask_games: list[str],
    algo: str,
    seed: int,
) -> None:
    """The report_agents stage: reads the evaluations of `games` and of the multi-task run (`multitask_games`, run
    with multitask.algo `algo`) and the agents' probe curves; writes every table and figure into `out_dir` at once
    (the module's docstring lists them). `seed` seeds the bootstrap."""
    rows = pd.concat(
        [read_returns(Path(evaluations_root) / game / "returns.csv", game) for game in games], ignore_index=True
    )
    multitask_rows = pd.concat(
        [read_returns(Path(multitask_root) / game / "returns.csv", game) for game in multitask_games], ignore_index=True
    )
    curves = {}
    for game in games:
        curve_path = Path(agent_probes_root) / game / "f1_by_category.csv"
        if not curve_path.is_file():
            raise UserError(f"{curve_path} is missing; run `dvc repro` for probe_checkpoints@{game}")
        curves[game] = pd.read_csv(curve_path)
    by_game, summary, aggregate_md = returns_report(rows, games, seed)
    multitask, multitask_summary, multitask_md = returns_report(multitask_rows, multitask_games, seed)
    # Beside each multi-task return, the single-task agent's on the same game (when it is also in `games`).
    for column in [c for c in multitask.columns if c.endswith("_return")]:
        if column in by_game:
            multitask[f"{column}_single_task"] = by_game[column].reindex(multitask.index)
    compared, compared_md = comparison(by_game, multitask, algo)

    with atomic_dir(out_dir) as tmp:
        for name, table in (("returns_by_game", by_game), ("multitask_returns_by_game", multitask)):
            (tmp / f"{name}.md").write_text(to_markdown(table))
            (tmp / f"{name}.csv").write_text(to_csv(table))
        (tmp / "comparison.md").write_text(compared_md)
        (tmp / "comparison.csv").write_text(to_csv(compared))
        write_json(tmp / "aggregate.json", summary)
        (tmp / "aggregate.md").write_text(aggregate_md)
        write_json(tmp / "multitask_aggregate.json", multitask_summary)
        (tmp / "multitask_aggregate.md").write_text("One network over all these games (multitask). " + multitask_md)
        learning_curve_figure(rows, tmp / "learning_curves.png")
        learning_curve_figure(multitask_rows, tmp / "multitask_learning_curves.png")
        for game, curve in curves.items():
            figure = training_figure(rows[rows["game"] == game], curve, game)
            figure.savefig(tmp / f"training_{game}.png", dpi=120, metadata={"Software": None})
    print(f"reported {len(games)} games and the multi-task run's {len(multitask_games)} in {out_dir}")
