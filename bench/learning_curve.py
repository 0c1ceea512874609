"""An agent's learning curve, against frames, from its dvclive log (a finished run's, or the work folder of one
still training: `.<out>.partial/live`). Prints one JSON object (and writes it with --json) and draws the curve
into a PNG beside the random agent's score.

For each window of `--window` agent steps: the mean return of the whole games (unclipped, all lives) that ended
in it, weighted by how many did (a window not yet ended is left out). Also: the last window's mean, the steps
and frames covered, and the run's frames/s (4 x the logged charts/steps_per_s: median and quartiles over its
learner steps or iterations; these depend on what else the machine ran, so say how with --note).

Usage: python bench/learning_curve.py LIVE_DIR --png curve.png [--json out.json] [--label IMPALA] [--game Breakout]
       [--random 1.7] [--window 50000] [--title T] [--note TEXT]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import report
from matplotlib.figure import Figure
from ppo_vs_cleanrl import ours, windowed

FRAME_SKIP = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("live", type=Path)
    parser.add_argument("--png", type=Path, required=True)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--label", default="atarirep IMPALA")
    parser.add_argument("--game", default="Breakout")
    parser.add_argument("--random", type=float, help="the random agent's score on the game (a horizontal line)")
    parser.add_argument("--window", type=int, default=50_000)
    parser.add_argument("--title", default="")
    parser.add_argument("--note", default="", help="how the run was made (recorded in the JSON)")
    args = parser.parse_args()

    rows = ours(args.live)
    steps, means = windowed(rows["step"].to_numpy(), rows["mean"].to_numpy(), rows["games"].to_numpy(), args.window)
    if len(steps) > 1 and steps[-1] > rows["step"].max():  # the last window has not ended: left out
        steps, means = steps[:-1], means[:-1]
    speed = pd.read_csv(args.live / "plots/metrics/charts/steps_per_s.tsv", sep="\t")["steps_per_s"] * FRAME_SKIP
    result = {
        "benchmark": "learning_curve",
        "agent": args.label,
        "game": args.game,
        "steps": int(rows["step"].max()),
        "frames": int(rows["step"].max()) * FRAME_SKIP,
        "games": int(rows["games"].sum()),
        "window": args.window,
        "curve": {"steps": steps, "mean_return": [round(m, 3) for m in means]},
        "last_window_mean_return": round(means[-1], 3),
        "random_agent": args.random,
        "frames_per_s": {
            q: round(float(speed.quantile(p)), 1) for q, p in (("q25", 0.25), ("median", 0.5), ("q75", 0.75))
        },
        "note": args.note,
    }

    fig = Figure(figsize=(6.5, 4.0), layout="constrained")
    ax = fig.add_subplot()
    ax.plot([s * FRAME_SKIP for s in steps], means, label=args.label)
    if args.random is not None:
        ax.axhline(args.random, color="grey", linestyle="--", label="random agent")
    ax.set_xlabel("frames")
    ax.set_ylabel("mean return (whole games)")
    ax.set_title(args.title or f"{args.label} on {args.game} (windows of {args.window * FRAME_SKIP:,} frames)")
    ax.grid(alpha=0.3)
    ax.legend()
    report.finish(result, args.json, fig, args.png)


if __name__ == "__main__":
    main()
