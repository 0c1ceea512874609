"""The probe report: probe scores read back, the benchmark's tables per game, category, variable and method,
and the comparison with the paper's tables.

Builds pandas DataFrames from the probe stage's per-variable scores (docs/protocols.md section 2: per game the
mean of the category means, then the mean over games). It does not probe (atarirep.probe), draw
(atarirep.reports.figures, which also writes the folder) or render text (atarirep.reports.formats).
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import pandas as pd
import yaml

from atarirep import annotations as ram_annotations
from atarirep.plumbing.errors import UserError
from atarirep.reports.formats import NOTE
from atarirep.scores import METRICS, aggregate

SCORE_COLUMNS = ("game", "method", "variable", "categories", "f1", "accuracy")
# Table 2's columns in the paper's order, then our extra encoders (the trained agent's last: `rl_agent`, written by
# probe_checkpoints); ST-DIM's ablations have a table of their own.
PAPER_METHODS = ("majority", "random_cnn", "vae", "pixel_pred", "cpc", "stdim", "supervised")
EXTRA_METHODS = ("tokenizer", "rl_agent")
RL_AGENT = "rl_agent"
ABLATIONS = ("stdim", "global_local_stdim", "global_t_dim", "jsd_stdim", "static_dim")  # ST-DIM first, for reference
DISPLAY_NAMES = {
    "majority": "majority",
    "random_cnn": "random-CNN",
    "vae": "VAE",
    "pixel_pred": "pixel prediction",
    "cpc": "CPC",
    "stdim": "ST-DIM",
    "supervised": "supervised",
    "tokenizer": "tokenizer (IRIS)",
    "rl_agent": "RL agent (PPO)",
    "global_local_stdim": "ST-DIM, global-local only",
    "global_t_dim": "Global-T-DIM",
    "jsd_stdim": "JSD-ST-DIM",
    "static_dim": "static DIM",
}
PAPER_REFERENCE = "Anand et al. 2019, Unsupervised State Representation Learning in Atari (NeurIPS), random-agent data"


# -- reading probe results -------------------------------------------------------------------------
def shown_methods(report) -> list[str]:
    """The report's columns, in order, from its params (atarirep.plumbing.params.Report): baselines, the pretraining
    methods, then the RL agent's checkpoints when `rl_agent` is on."""
    return [*report.baselines, *report.methods, *([RL_AGENT] if report.rl_agent else [])]


def scores_path(probes_dir: str | os.PathLike, game: str, method: str) -> Path:
    """Where the probe stage writes one game's scores for one method."""
    return Path(probes_dir) / game / method / "scores.csv"


def load_results(probes_dir: str | os.PathLike, games: list[str], methods: list[str]) -> pd.DataFrame:
    """The probe stage's scores for exactly `games` x `methods`: `probes_dir/<game>/<method>/scores.csv`.

    One row per (game, method, variable); columns game, method, variable, categories (tuple of str),
    f1, accuracy. Results of other games or methods on disk are not read; a missing or corrupt one is
    a UserError naming the stage to run.
    """
    probes_dir = Path(probes_dir)
    parts = []
    for game in games:
        for method in methods:
            parts.append(_read_scores(scores_path(probes_dir, game, method), game, method))
    if not parts:
        raise UserError(
            "the report has no games or no methods to show; list them in params.yaml (games, "
            "report.methods, report.baselines)"
        )
    results = pd.concat(parts, ignore_index=True)
    results["categories"] = results["categories"].map(lambda s: tuple(c for c in s.split(";") if c))
    return results


def _read_scores(path: Path, game: str, method: str) -> pd.DataFrame:
    kind = "probe_baseline" if method in ("majority", "supervised") else "probe"
    stage = f"probe_checkpoints@{game}" if method == RL_AGENT else f"{kind}@{game}-{method}"
    if not path.exists():
        raise UserError(
            f"no probe results {path} for game {game} and method {method}; run its stage "
            f"(dvc repro {stage}) or dvc pull"
        )
    try:
        part = pd.read_csv(
            path, dtype={"categories": str, "variable": str, "game": str, "method": str}, keep_default_na=False
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as err:
        raise UserError(
            f"probe results {path} are corrupt ({type(err).__name__}); rerun its stage "
            f"(dvc repro -f {stage}) or dvc pull"
        ) from None
    missing = [c for c in SCORE_COLUMNS if c not in part.columns]
    if missing or not len(part):
        raise UserError(
            f"probe results {path} lack columns {', '.join(missing) or '(no rows)'}; rerun its stage "
            f"(dvc repro -f {stage})"
        )
    part = part[list(SCORE_COLUMNS)]
    if set(part["game"]) != {game} or set(part["method"]) != {method}:
        raise UserError(
            f"probe results {path} hold game {part['game'].iloc[0]} and method {part['method'].iloc[0]}, "
            f"not {game} and {method}; rerun its stage (dvc repro -f {stage})"
        )
    for metric in METRICS:
        part[metric] = pd.to_numeric(part[metric], errors="coerce")
    if part[list(METRICS)].isna().any().any() or part["variable"].duplicated().any():
        raise UserError(
            f"probe results {path} hold non-numeric scores or a variable twice; rerun its stage (dvc repro -f {stage})"
        )
    return part


def method_order(methods) -> list[str]:
    """Methods in table order: the paper's columns (majority ... supervised), then our extra encoders, then
    any other method alphabetically. Ablations are ordered by `ABLATIONS`."""
    methods = list(dict.fromkeys(methods))
    known = [m for m in (*PAPER_METHODS, *EXTRA_METHODS, *ABLATIONS[1:]) if m in methods]
    return known + sorted(m for m in methods if m not in known)


def main_and_ablations(results: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(results of the main table's methods, results of ST-DIM and its ablations or None if no ablation ran)."""
    is_ablation = results["method"].isin(ABLATIONS[1:])
    ablations = results[results["method"].isin(ABLATIONS)] if is_ablation.any() else None
    return results[~is_ablation].reset_index(drop=True), ablations


# -- tables ----------------------------------------------------------------------------------------
def game_table(results: pd.DataFrame, metric: str = "f1") -> pd.DataFrame:
    """(games..., "mean") x methods: each game's mean over categories of `metric`, then the mean over games.

    The mean row is missing (NaN) for a method that lacks a game, rather than averaged over fewer games.
    """
    per_game = aggregate(results, by="across_categories")
    table = per_game.pivot(index="game", columns="method", values=metric)
    table = table[method_order(table.columns)]
    table.loc["mean"] = table.mean(skipna=False)
    table.index.name, table.columns.name = "game", None
    return table


def category_table(results: pd.DataFrame, metric: str = "f1") -> pd.DataFrame:
    """(categories..., "across_categories") x methods: the mean over games of each game's category mean.

    A game without a variable in a category does not count toward that category; the last row is
    the mean over games of the across-categories figure (game_table's mean row).
    """
    per_category = aggregate(results, by="category")
    table = per_category.pivot_table(index="category", columns="method", values=metric, aggfunc="mean")
    table = table.reindex([c for c in ram_annotations.CATEGORIES if c in table.index])
    table = table[method_order(table.columns)]
    table.loc["across_categories"] = game_table(results, metric).loc["mean"].loc[table.columns]
    table.index.name, table.columns.name = "category", None
    return table


def variable_table(results: pd.DataFrame, game: str, metric: str = "f1") -> pd.DataFrame:
    """variables x (categories, methods...) of one game: each variable's `metric` per method."""
    rows = results[results["game"] == game]
    if rows.empty:
        raise UserError(
            f"no probe results for game {game}; probe it first or pick one of "
            f"{', '.join(sorted(results['game'].unique()))}"
        )
    table = rows.pivot(index="variable", columns="method", values=metric)
    table = table.reindex(list(dict.fromkeys(rows["variable"])))[method_order(table.columns)]
    categories = rows.drop_duplicates("variable").set_index("variable")["categories"]
    table.insert(0, "categories", categories.reindex(table.index).map(", ".join))
    table.index.name, table.columns.name = "variable", None
    return table


def tables(results: pd.DataFrame, annotation_set: str = "paper") -> dict[str, pd.DataFrame]:
    """Every table, by name: <metric>_by_game, <metric>_by_category, <metric>_by_variable_<game> (the main
    methods and our extra encoders); <metric>_ablations_by_{game,category} (ST-DIM and its ablations, when
    any ran); f1_by_{game,category}_vs_paper (ours minus the paper's, `paper_difference`, which needs the
    annotation set the scores were probed with)."""
    main, ablations = main_and_ablations(results)
    games = list(dict.fromkeys(results["game"]))
    out = {}
    for metric in METRICS:
        out[f"{metric}_by_game"] = game_table(main, metric)
        out[f"{metric}_by_category"] = category_table(main, metric)
        for game in games:
            out[f"{metric}_by_variable_{game}"] = variable_table(results, game, metric)
        if ablations is not None:
            out[f"{metric}_ablations_by_game"] = game_table(ablations, metric)
            out[f"{metric}_ablations_by_category"] = category_table(ablations, metric)
    paper = paper_tables()
    for name in ("f1_by_game", "f1_by_category"):
        difference = paper_difference(out[name], paper[name], games, annotation_set=annotation_set)
        if difference is not None:
            out[f"{name}_vs_paper"] = difference
    return out


def paper_tables() -> dict[str, pd.DataFrame]:
    """The paper's Table 2 (`f1_by_game`: its 22 games and mean row x 7 methods) and Table 3
    (`f1_by_category`: 5 categories x 7 methods), from atarirep/resources/paper_tables.yaml."""
    data = yaml.safe_load(resources.files("atarirep.resources").joinpath("paper_tables.yaml").read_text())
    return {
        name: pd.DataFrame.from_dict(data[name], orient="index", columns=data["methods"])
        for name in ("f1_by_game", "f1_by_category")
    }


def _paper_games() -> list[str]:
    return [g for g in paper_tables()["f1_by_game"].index if g != "mean"]


def _probed(game: str, annotation_set: str) -> list[tuple[int, tuple[str, ...]]]:
    """What a game's probes measure under an annotation set: each variable's RAM byte and categories."""
    annotation = ram_annotations.for_game(game, annotation_set)
    return sorted(zip(annotation.ram_indices, map(ram_annotations.categories, annotation.variables), strict=True))


def unlike_paper(games, annotation_set: str) -> list[str]:
    """The games of `games` (in their order) that are in the paper's Table 2 but whose variables under
    `annotation_set` differ from the paper's annotation set: another RAM byte, a byte more or fewer, or a
    byte in other categories. Their F1 measures something else than the paper's, so it is not compared.
    A variable renamed on the same byte and in the same categories (YarsRevenge's `player_yar_x` in `paper`,
    `player_x` in `latest`) measures the same thing."""
    if annotation_set not in ram_annotations.ANNOTATION_SETS:
        raise UserError(
            f"annotation set {annotation_set!r} is unknown; use one of {', '.join(ram_annotations.ANNOTATION_SETS)}"
        )
    in_paper = set(_paper_games())
    return [
        g
        for g in dict.fromkeys(games)
        if g in in_paper and annotation_set != "paper" and _probed(g, annotation_set) != _probed(g, "paper")
    ]


def paper_difference(
    ours: pd.DataFrame, paper: pd.DataFrame, games, annotation_set: str = "paper"
) -> pd.DataFrame | None:
    """Our value minus the paper's for every cell in both tables, then a `mean_abs_difference` row per method
    (over the compared cells of its column); None if no cell is in both.

    `games`: the games `ours` averages; `annotation_set`: the annotation set their scores were probed with.
    A game whose variables differ from the paper's under that set (`unlike_paper`) is not compared, and the
    table's attrs[NOTE] names it. A summary row (the mean over games, or Table 3's per-category means)
    averages the paper's 22 games, so it is compared only when `games` are those same games, none left out;
    `across_categories` is not in the paper.
    """
    left_out = unlike_paper(games, annotation_set)
    ours = ours.drop(index=["across_categories", *left_out], errors="ignore")
    is_summary_table = "mean" not in paper.index  # Table 3: every row averages the 22 games
    same_games = not left_out and sorted(games) == sorted(_paper_games())
    rows = [r for r in ours.index if r in paper.index and ((r != "mean" and not is_summary_table) or same_games)]
    columns = [m for m in ours.columns if m in paper.columns]
    if not rows or not columns:
        return None
    difference = ours.loc[rows, columns] - paper.loc[rows, columns]
    cells = difference.drop(index="mean", errors="ignore")
    difference.loc["mean_abs_difference"] = cells.abs().mean()
    difference.index.name = ours.index.name
    if left_out:
        difference.attrs[NOTE] = left_out_note(left_out, annotation_set)
    return difference


def left_out_note(left_out, annotation_set: str) -> str:
    """The one line that says which games a comparison with the paper leaves out, and why."""
    return (
        f"Not compared with the paper: {', '.join(left_out)} (variables differ from the paper's under "
        f"annotations: {annotation_set}); nor are the paper's mean row and Table 3, which average its "
        "22 games."
    )


def summary(results: pd.DataFrame, annotation_set: str = "paper") -> dict:
    """Metrics for `dvc metrics show`, per metric and method: `across_categories`, the game table's mean row
    (the same rule: missing if a game lacks the method), and `overall`, the mean over games of the plain
    per-game mean over variables; plus the games covered, the annotation set, and, for F1, the mean absolute
    difference from the paper's Table 2 per method where comparable (`paper_difference`) and the games it
    leaves out because their variables differ from the paper's."""
    overall = aggregate(results, by="overall").pivot(index="game", columns="method")
    out: dict = {"games": list(dict.fromkeys(results["game"])), "annotations": annotation_set}
    for metric in METRICS:
        table = game_table(results, metric)
        out[metric] = {
            method: {
                "across_categories": _number(table.loc["mean", method]),
                "overall": _number(overall[metric][method].mean(skipna=False)),
            }
            for method in table.columns
        }
    out["f1_vs_paper_games_left_out"] = unlike_paper(out["games"], annotation_set)
    difference = paper_difference(
        game_table(results, "f1"), paper_tables()["f1_by_game"], out["games"], annotation_set=annotation_set
    )
    if difference is not None:
        out["f1_vs_paper_mean_abs_difference"] = {
            m: _number(v) for m, v in difference.loc["mean_abs_difference"].items()
        }
    return out


def _number(value) -> float | None:
    """A float for JSON, None for a missing value (JSON has no NaN)."""
    return None if pd.isna(value) else float(value)
