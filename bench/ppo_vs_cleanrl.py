"""Our PPO's learning curve beside the real CleanRL `ppo_atari.py`'s, from the logs of two finished runs.

Prints one JSON object (and writes it with --json): for each run the mean return of its last 100 whole games
(unclipped, all lives) and the steps it covered; the ratio ours / CleanRL's; and draws both curves (the mean
return of the games that ended in each window of `--window` agent steps) into one PNG.

  ours     a dvclive folder of atarirep.agents.ppo.train (plots/metrics/charts/episode_return.tsv, the mean
           return of the games that ended in each iteration, and charts/episodes.tsv, how many did). The last
           100 games are the last iterations' games, each iteration's mean weighted by its count; the oldest of
           those iterations counts in full, so a few more than 100 games may enter.
  cleanrl  a TSV `global_step<TAB>return`, one row per game, exported from CleanRL's tensorboard events file
           (tag charts/episodic_return) with its own environment, which has tensorboard:

    python -c "import sys; from tensorboard.backend.event_processing.event_accumulator import EventAccumulator as E
    a = E(sys.argv[1]); a.Reload(); print('global_step\\treturn')
    [print(f'{e.step}\\t{e.value}') for e in a.Scalars('charts/episodic_return')]" runs/<run>/events.* > cleanrl.tsv

Usage: python bench/ppo_vs_cleanrl.py OURS_LIVE_DIR CLEANRL_TSV --png curve.png [--json out.json] [--title T]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import report
from matplotlib.figure import Figure

LAST_GAMES = 100


def ours(live_dir: Path) -> pd.DataFrame:
    """Per iteration: step, mean return of the games that ended in it, their count (iterations with games only)."""
    metrics = live_dir / "plots" / "metrics" / "charts"
    returns = pd.read_csv(metrics / "episode_return.tsv", sep="\t")
    counts = pd.read_csv(metrics / "episodes.tsv", sep="\t")
    return returns.merge(counts, on="step").rename(columns={"episode_return": "mean", "episodes": "games"})


def ours_last_mean(rows: pd.DataFrame, last: int = LAST_GAMES) -> tuple[float, int]:
    """The weighted mean return of the last iterations holding at least `last` games, and how many games."""
    tail = rows.iloc[::-1]
    taken = tail[tail["games"].cumsum().shift(fill_value=0) < last]
    return float(np.average(taken["mean"], weights=taken["games"])), int(taken["games"].sum())


def windowed(steps: np.ndarray, values: np.ndarray, weights: np.ndarray, window: int) -> tuple[list, list]:
    """The weighted mean of `values` in each window of `window` steps, at the window's end."""
    bins = (steps - 1) // window
    xs, ys = [], []
    for b in np.unique(bins):
        inside = bins == b
        xs.append(int((b + 1) * window))
        ys.append(float(np.average(values[inside], weights=weights[inside])))
    return xs, ys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ours", type=Path)
    parser.add_argument("cleanrl", type=Path)
    parser.add_argument("--png", type=Path, required=True)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--window", type=int, default=20_480)
    parser.add_argument("--title", default="PPO on Breakout")
    args = parser.parse_args()

    our_rows = ours(args.ours)
    theirs = pd.read_csv(args.cleanrl, sep="\t")
    our_mean, our_games = ours_last_mean(our_rows)
    their_mean = float(theirs["return"].iloc[-LAST_GAMES:].mean())
    result = {
        "ours": {"last_100_mean_return": our_mean, "games_averaged": our_games, "steps": int(our_rows["step"].max())},
        "cleanrl": {
            "last_100_mean_return": their_mean,
            "games_averaged": min(LAST_GAMES, len(theirs)),
            "steps": int(theirs["global_step"].max()),
        },
        "ratio": our_mean / their_mean if their_mean else None,
        "window": args.window,
    }

    fig = Figure(figsize=(6.5, 4.0), layout="constrained")
    ax = fig.add_subplot()
    for label, (x, y) in {
        "atarirep PPO": windowed(
            our_rows["step"].to_numpy(), our_rows["mean"].to_numpy(), our_rows["games"].to_numpy(), args.window
        ),
        "CleanRL ppo_atari.py": windowed(
            theirs["global_step"].to_numpy(), theirs["return"].to_numpy(), np.ones(len(theirs)), args.window
        ),
    }.items():
        ax.plot(x, y, label=label)
    ax.set_xlabel("agent steps (frames / 4)")
    ax.set_ylabel(f"mean return of the games ended in each {args.window:,} steps")
    ax.set_title(args.title)
    ax.grid(alpha=0.3)
    ax.legend()
    report.finish(result, args.json, fig, args.png)


if __name__ == "__main__":
    main()
