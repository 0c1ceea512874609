"""Learning curves of the agents' evaluations: mean return against frames per protocol, with a bootstrap 95%
band (over seeds' mean returns, or over episodes with one seed).
"""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # no pyplot: no global figure state; PNGs are drawn by Agg
from matplotlib.ticker import EngFormatter


def _curve(rows: pd.DataFrame, rng: np.random.Generator, reps: int = 1000):
    """frames, mean return, and the bootstrap 95% band: over seeds' mean returns, or over episodes if one seed."""
    frames, means, lows, highs = [], [], [], []
    for frame, group in rows.groupby("frames", sort=True):
        if group["seed"].nunique() > 1:
            samples = group.groupby("seed")["return"].mean().to_numpy()
        else:
            samples = group["return"].to_numpy(np.float64)
        resampled = rng.choice(samples, size=(reps, len(samples))).mean(axis=1)
        frames.append(frame)
        means.append(samples.mean())
        lows.append(np.percentile(resampled, 2.5))
        highs.append(np.percentile(resampled, 97.5))
    return frames, means, lows, highs


def learning_curve_figure(rows: pd.DataFrame, path: str | os.PathLike) -> None:
    """A PNG at `path`: one panel per game, mean return against frames per protocol, a 95% bootstrap band."""
    games = list(dict.fromkeys(rows["game"]))
    cols = min(len(games), 4)
    nrows = math.ceil(len(games) / cols)
    fig = Figure(figsize=(4.5 * cols, 3.4 * nrows), layout="constrained")
    for i, game in enumerate(games):
        ax = fig.add_subplot(nrows, cols, i + 1)
        of_game = rows[rows["game"] == game]
        draw_returns(ax, of_game)
        ax.set_title(f"{game} ({of_game['seed'].nunique()} seeds)")
    fig.savefig(path, dpi=120, metadata={"Software": None})


def draw_returns(ax, rows: pd.DataFrame) -> None:
    """On `ax`: one game's mean return against frames per protocol, with a 95% bootstrap band."""
    for protocol, group in rows.groupby("protocol", sort=False):
        frames, means, lows, highs = _curve(group, np.random.default_rng(0))
        ax.plot(frames, means, marker=".", label=protocol)
        ax.fill_between(frames, lows, highs, alpha=0.25)
    ax.set_xlabel("frames")
    ax.xaxis.set_major_formatter(EngFormatter())  # 100k, 10M: frame counts stay legible
    ax.set_ylabel("return")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
