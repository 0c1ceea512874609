"""Each game's PopArt statistics through a multi-task run, from its dvclive folder: do they track the games' own
return scales?

Reads plots/metrics/popart/{mu,sigma}/<game>.tsv and plots/metrics/charts/episode_return/<game>.tsv of an
atarirep.agents.impala.train run with PopArt; draws sigma and mu per game against agent steps (log scale for
sigma) into one PNG and prints one JSON object: each game's last mu, sigma and mean return of its games.

Usage: python bench/popart_sigma.py LIVE_DIR --png sigma.png [--json out.json]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import report
from matplotlib.figure import Figure


def series(metrics: Path, name: str, game: str) -> pd.DataFrame:
    path = metrics / name / f"{game}.tsv"
    return pd.read_csv(path, sep="\t") if path.exists() else pd.DataFrame(columns=["step", game])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("live", type=Path)
    parser.add_argument("--png", type=Path, required=True)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    metrics = args.live / "plots" / "metrics"
    games = sorted(p.stem for p in (metrics / "popart" / "sigma").glob("*.tsv"))
    fig = Figure(figsize=(9.0, 3.6), layout="constrained")
    ax_sigma, ax_mu = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    result = {}
    for game in games:
        sigma, mu = series(metrics, "popart/sigma", game), series(metrics, "popart/mu", game)
        returns = series(metrics, "charts/episode_return", game)
        ax_sigma.plot(sigma["step"], sigma.iloc[:, 1], label=game)
        ax_mu.plot(mu["step"], mu.iloc[:, 1], label=game)
        result[game] = {
            "sigma": float(sigma.iloc[-1, 1]),
            "mu": float(mu.iloc[-1, 1]),
            "mean_return": float(returns.iloc[:, 1].mean()) if len(returns) else None,
            "steps": int(sigma["step"].iloc[-1]),
        }
    ax_sigma.set_yscale("log")
    for ax, name in ((ax_sigma, "sigma"), (ax_mu, "mu")):
        ax.set_xlabel("agent steps (all games)")
        ax.set_ylabel(f"PopArt {name}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    report.finish(result, args.json, fig, args.png)


if __name__ == "__main__":
    main()
