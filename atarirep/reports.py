"""Reports: the benchmark's tables and figures from probe scores, per game, category, variable and method.

Builds pandas DataFrames and matplotlib Figures from the probe stage's per-variable scores and
renders tables as Markdown, CSV and LaTeX (PROTOCOLS.md section 2: per game the mean of the
category means, then the mean over games). It does not probe (atarirep.probe); `save` is the only
function that writes, and only into the folder it is given.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure   # no pyplot: no global figure state, no backend to choose

from atarirep import annotations, io
from atarirep.errors import UserError
from atarirep.probe import METRICS, aggregate

SCORE_COLUMNS = ("game", "method", "variable", "categories", "f1", "accuracy")
FIRST_METHODS, LAST_METHODS = ("majority",), ("supervised",)   # baselines frame the table, as in the paper
MISSING = "-"


# -- reading probe results -------------------------------------------------------------------------
def load_results(probes_dir: str | os.PathLike, games: list[str] | None = None) -> pd.DataFrame:
    """Every scores.csv under `probes_dir` (the probe stage's outputs) as one table.

    One row per (game, method, variable); columns game, method, variable, categories (tuple of str),
    f1, accuracy. With `games` (non-empty), only those games (any spelling), each required to be present.
    """
    probes_dir = Path(probes_dir)
    files = sorted(probes_dir.rglob("scores.csv"))
    if not files:
        raise UserError(f"no probe results (scores.csv) under {probes_dir}; run the probe stages first (dvc repro)")
    parts = []
    for path in files:
        try:
            part = pd.read_csv(path, dtype={"categories": str, "variable": str, "game": str, "method": str},
                               keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as err:
            raise UserError(f"probe results {path} are corrupt ({type(err).__name__}); rerun its probe stage "
                            "(dvc repro) or dvc pull") from None
        missing = [c for c in SCORE_COLUMNS if c not in part.columns]
        if missing or not len(part):
            raise UserError(f"probe results {path} lack columns {', '.join(missing) or '(no rows)'}; rerun its "
                            "probe stage (dvc repro)")
        parts.append(part[list(SCORE_COLUMNS)])
    results = pd.concat(parts, ignore_index=True)
    results["categories"] = results["categories"].map(lambda s: tuple(c for c in s.split(";") if c))
    for metric in METRICS:
        results[metric] = pd.to_numeric(results[metric], errors="coerce")
    if results[list(METRICS)].isna().any().any():
        raise UserError(f"probe results under {probes_dir} hold non-numeric scores; rerun the probe stages")
    duplicated = results.duplicated(["game", "method", "variable"])
    if duplicated.any():
        game, method = results.loc[duplicated, ["game", "method"]].iloc[0]
        raise UserError(f"two probe results for game {game} and method {method} under {probes_dir}; "
                        "remove the stale one")
    if games:
        keys = {annotations.game_key(g): g for g in results["game"].unique()}
        absent = [g for g in games if annotations.game_key(g) not in keys]
        if absent:
            raise UserError(f"no probe results for game {absent[0]} under {probes_dir} (found "
                            f"{', '.join(sorted(keys.values()))}); probe it first (dvc exp run -S env={absent[0]}) "
                            "or drop it from games")
        wanted = [keys[annotations.game_key(g)] for g in games]
        results = results[results["game"].isin(wanted)].reset_index(drop=True)
    return results


def study_games(env: str, games: list[str]) -> list[str]:
    """The games a report covers: `env` (the per-game chain) then `games` (the multi-game chain)."""
    return annotations.check_distinct([env, *games])


def method_order(methods) -> list[str]:
    """Methods in table order: majority first, supervised last, the rest alphabetically."""
    methods = list(dict.fromkeys(methods))
    middle = sorted(m for m in methods if m not in FIRST_METHODS + LAST_METHODS)
    return [m for m in FIRST_METHODS if m in methods] + middle + [m for m in LAST_METHODS if m in methods]


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
    table = table.reindex([c for c in annotations.CATEGORIES if c in table.index])
    table = table[method_order(table.columns)]
    table.loc["across_categories"] = game_table(results, metric).loc["mean", table.columns]
    table.index.name, table.columns.name = "category", None
    return table


def variable_table(results: pd.DataFrame, game: str, metric: str = "f1") -> pd.DataFrame:
    """variables x (categories, methods...) of one game: each variable's `metric` per method."""
    rows = results[results["game"] == game]
    if rows.empty:
        raise UserError(f"no probe results for game {game}; probe it first or pick one of "
                        f"{', '.join(sorted(results['game'].unique()))}")
    table = rows.pivot(index="variable", columns="method", values=metric)
    table = table.reindex(list(dict.fromkeys(rows["variable"])))[method_order(table.columns)]
    categories = rows.drop_duplicates("variable").set_index("variable")["categories"]
    table.insert(0, "categories", categories.reindex(table.index).map(", ".join))
    table.index.name, table.columns.name = "variable", None
    return table


def tables(results: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Every table, by name: <metric>_by_game, <metric>_by_category, <metric>_by_variable_<game>."""
    out = {}
    for metric in METRICS:
        out[f"{metric}_by_game"] = game_table(results, metric)
        out[f"{metric}_by_category"] = category_table(results, metric)
        for game in sorted(results["game"].unique()):
            out[f"{metric}_by_variable_{game}"] = variable_table(results, game, metric)
    return out


def summary(results: pd.DataFrame) -> dict:
    """Metrics for `dvc metrics show`: per metric and method, the mean over games of across-categories
    and of the plain per-game mean over variables; plus the games covered."""
    across = aggregate(results, by="across_categories")
    overall = aggregate(results, by="overall")
    out: dict = {"games": sorted(results["game"].unique().tolist())}
    for metric in METRICS:
        out[metric] = {method: {"across_categories": float(across.loc[across["method"] == method, metric].mean()),
                                "overall": float(overall.loc[overall["method"] == method, metric].mean())}
                       for method in method_order(results["method"])}
    return out


# -- rendering -------------------------------------------------------------------------------------
def _cells(table: pd.DataFrame, digits: int) -> list[list[str]]:
    def cell(value) -> str:
        if isinstance(value, (float, np.floating)):
            return MISSING if math.isnan(value) else f"{value:.{digits}f}"
        return str(value)
    return [[str(index), *map(cell, row)] for index, row in zip(table.index, table.itertuples(index=False))]


def _numeric(table: pd.DataFrame) -> list[bool]:
    return [pd.api.types.is_numeric_dtype(dtype) for dtype in table.dtypes]


def to_markdown(table: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub-flavoured Markdown table; numbers right-aligned with `digits` decimals, missing as '-'."""
    header = [table.index.name or "", *map(str, table.columns)]
    align = [":--", *("--:" if n else ":--" for n in _numeric(table))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in _cells(table, digits)]
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def to_latex(table: pd.DataFrame, digits: int = 3) -> str:
    """A booktabs `tabular` (needs \\usepackage{booktabs}); a summary row (mean, across_categories)
    is set off by a rule."""
    spec = "l" + "".join("r" if n else "l" for n in _numeric(table))
    header = [table.index.name or "", *map(str, table.columns)]
    lines = [rf"\begin{{tabular}}{{{spec}}}", r"\toprule", " & ".join(map(_latex_escape, header)) + r" \\",
             r"\midrule"]
    for row in _cells(table, digits):
        if row[0] in ("mean", "across_categories"):
            lines.append(r"\midrule")
        lines.append(" & ".join("--" if c == MISSING else _latex_escape(c) for c in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def to_csv(table: pd.DataFrame) -> str:
    """CSV with the index as first column, numbers to 6 decimals, missing values empty."""
    return table.to_csv(float_format="%.6f", lineterminator="\n")


# -- figures ---------------------------------------------------------------------------------------
def category_bars(results: pd.DataFrame, metric: str = "f1") -> Figure:
    """Grouped bars: one group per category (and across categories), one bar per method; mean over games."""
    table = category_table(results, metric)
    num_groups, num_methods = table.shape
    fig = Figure(figsize=(max(6.0, 1.3 * num_groups + 1), 4.0), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / max(num_methods, 1)
    x = np.arange(num_groups)
    for i, method in enumerate(table.columns):
        ax.bar(x - 0.4 + width * (i + 0.5), table[method].to_numpy(dtype=float), width, label=method)
    ax.set_xticks(x, [c.replace("_", " ") for c in table.index], rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel(metric)
    num_games = results["game"].nunique()
    ax.set_title(f"{metric} per category, mean over {num_games} game{'s' * (num_games != 1)}")
    fig.legend(loc="outside right upper", fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    return fig


def game_heatmap(results: pd.DataFrame, metric: str = "f1") -> Figure:
    """Heatmap of games (and their mean) x methods: the across-categories `metric`, values written in."""
    table = game_table(results, metric)
    values = table.to_numpy(dtype=float)
    fig = Figure(figsize=(max(5.0, 1.1 * table.shape[1] + 2), max(2.5, 0.45 * table.shape[0] + 1.5)),
                 layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(values), vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(table.shape[1]), table.columns, rotation=30, ha="right")
    ax.set_yticks(range(table.shape[0]), table.index)
    for (row, col), value in np.ndenumerate(values):
        if not math.isnan(value):
            ax.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize="small",
                    color="black" if value > 0.6 else "white")
    fig.colorbar(image, ax=ax, label=f"{metric} (mean across categories)")
    ax.set_title(f"{metric} per game and method")
    return fig


def figures(results: pd.DataFrame) -> dict[str, Figure]:
    """Every figure, by name: <metric>_by_category (grouped bars), <metric>_by_game (heatmap)."""
    out = {}
    for metric in METRICS:
        out[f"{metric}_by_category"] = category_bars(results, metric)
        out[f"{metric}_by_game"] = game_heatmap(results, metric)
    return out


# -- writing ---------------------------------------------------------------------------------------
def save(out_dir: str | os.PathLike, tables_by_name: dict[str, pd.DataFrame], figures_by_name: dict[str, Figure],
         metrics: dict) -> None:
    """Write one report folder atomically: tables/<name>.{md,csv,tex}, figures/<name>.png, summary.json."""
    with io.atomic_dir(out_dir) as folder:
        (folder / "tables").mkdir()
        (folder / "figures").mkdir()
        for name, table in tables_by_name.items():
            (folder / "tables" / f"{name}.md").write_text(to_markdown(table))
            (folder / "tables" / f"{name}.csv").write_text(to_csv(table))
            (folder / "tables" / f"{name}.tex").write_text(to_latex(table))
        for name, fig in figures_by_name.items():
            fig.savefig(folder / "figures" / f"{name}.png", dpi=120, metadata={"Software": None})
        io.write_json(folder / "summary.json", metrics)
