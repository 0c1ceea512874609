"""The probe report's figures (grouped bars per category, a heatmap per game, F1 against training frames) and
`save`, which writes a report folder: its tables in every format, its figures and its metrics.

No pyplot: no global figure state, no backend to choose; PNGs are drawn by Agg without a timestamp.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from atarirep.plumbing import atomic
from atarirep.reports.formats import NOTE, to_csv, to_latex, to_markdown
from atarirep.reports.probes import DISPLAY_NAMES, category_table, game_table, main_and_ablations
from atarirep.scores import METRICS


def category_bars(results: pd.DataFrame, metric: str = "f1") -> Figure:
    """Grouped bars: one group per category (and across categories), one bar per method; mean over games."""
    table = category_table(results, metric)
    num_groups, num_methods = table.shape
    fig = Figure(figsize=(max(6.0, 1.3 * num_groups + 1), 4.0), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / max(num_methods, 1)
    x = np.arange(num_groups)
    for i, method in enumerate(table.columns):
        ax.bar(
            x - 0.4 + width * (i + 0.5),
            table[method].to_numpy(dtype=float),
            width,
            label=DISPLAY_NAMES.get(method, method),
        )
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
    fig = Figure(
        figsize=(max(5.0, 1.1 * table.shape[1] + 2), max(2.5, 0.45 * table.shape[0] + 1.5)), layout="constrained"
    )
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(values), vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(table.shape[1]), [DISPLAY_NAMES.get(m, m) for m in table.columns], rotation=30, ha="right")
    ax.set_yticks(range(table.shape[0]), table.index)
    for (row, col), value in np.ndenumerate(values):
        if not math.isnan(value):
            ax.text(
                col,
                row,
                f"{value:.2f}",
                ha="center",
                va="center",
                fontsize="small",
                color="black" if value > 0.6 else "white",
            )
    fig.colorbar(image, ax=ax, label=f"{metric} (mean across categories)")
    ax.set_title(f"{metric} per game and method")
    return fig


def draw_category_curve(ax, curve: pd.DataFrame, metric: str = "f1") -> None:
    """On `ax`: `metric` per category (across categories dashed, black) against training frames, the mean over
    seeds of `curve` (rows seed, step, frames and one column per category, as probe_checkpoints writes it)."""
    columns = [c for c in curve.columns if c not in ("seed", "step", "frames")]
    mean = curve.groupby("frames")[columns].mean().sort_index()
    for column in columns:
        across = column == "across_categories"
        ax.plot(
            mean.index,
            mean[column],
            marker="" if across else ".",
            linestyle="--" if across else "-",
            color="black" if across else None,
            linewidth=2 if across else 1.2,
            label=column.replace("_", " "),
        )
    ax.set_xlabel("training frames")
    ax.set_ylabel(metric)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)


def figures(results: pd.DataFrame) -> dict[str, Figure]:
    """Every figure, by name: <metric>_by_category (grouped bars), <metric>_by_game (heatmap); the main
    table's methods (ablations are in their tables)."""
    results, _ = main_and_ablations(results)
    out = {}
    for metric in METRICS:
        out[f"{metric}_by_category"] = category_bars(results, metric)
        out[f"{metric}_by_game"] = game_heatmap(results, metric)
    return out


# -- writing ---------------------------------------------------------------------------------------
def save(
    out_dir: str | os.PathLike,
    tables_by_name: dict[str, pd.DataFrame],
    figures_by_name: dict[str, Figure],
    metrics: dict,
    extra_json: dict[str, object] | None = None,
) -> None:
    """Write one report folder atomically: tables/<name>.{md,csv,tex} (a table's attrs[NOTE] under its
    Markdown and LaTeX), figures/<name>.png, summary.json, and `extra_json`'s files by name
    (atarirep.plumbing.experiments: experiments.json), if any."""
    with atomic.atomic_dir(out_dir) as folder:
        (folder / "tables").mkdir()
        (folder / "figures").mkdir()
        for name, table in tables_by_name.items():
            shown = table.rename(columns=DISPLAY_NAMES)  # the paper's names; the CSV keeps the method keys
            note = table.attrs.get(NOTE)
            (folder / "tables" / f"{name}.md").write_text(to_markdown(shown, note=note))
            (folder / "tables" / f"{name}.csv").write_text(to_csv(table))
            (folder / "tables" / f"{name}.tex").write_text(to_latex(shown, note=note))
        for name, fig in figures_by_name.items():
            fig.savefig(folder / "figures" / f"{name}.png", dpi=120, metadata={"Software": None})
        atomic.write_json(folder / "summary.json", metrics)
        for name, obj in (extra_json or {}).items():
            atomic.write_json(folder / name, obj)
