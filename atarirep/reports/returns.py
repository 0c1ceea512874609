"""The agents' returns as scores: the evaluate_agent table's columns, each run's final returns, human-normalised
scores (0 = random play, 1 = the human reference of atarirep/resources/atari_scores.yaml, the Agent57 table) and
their IQM, median and mean with stratified-bootstrap 95% CIs (rliable, imported only where it aggregates).

Plain numpy and pandas: no emulator, no torch, so reports read returns on a machine without either.
"""

from __future__ import annotations

import functools
import warnings
from importlib import resources

import numpy as np
import pandas as pd
import yaml

from atarirep.games import game_key
from atarirep.plumbing.errors import UserError

BOOTSTRAP_REPS = 2000  # rliable's default number of bootstrap resamples
ROW_COLUMNS = ["game", "seed", "step", "frames", "protocol", "episode", "return"]


@functools.cache
def reference_scores() -> dict[str, tuple[float, float]]:
    """ALE name -> (random score, human score) of the 57 games."""
    text = resources.files("atarirep.resources").joinpath("atari_scores.yaml").read_text()
    return {name: (float(v["random"]), float(v["human"])) for name, v in yaml.safe_load(text).items()}


def has_reference_scores(game: str) -> bool:
    """Whether `game` (any spelling) has random and human scores (the 57 games; AirRaid and Carnival have none)."""
    return game_key(game) in {game_key(name) for name in reference_scores()}


def human_normalized(game: str, score):
    """(score - random) / (human - random) for `game` (any spelling: MsPacman, ms_pacman); works on arrays too."""
    by_key = {game_key(name): value for name, value in reference_scores().items()}
    if game_key(game) not in by_key:
        raise UserError(
            f"game {game!r} has no random and human reference scores; atarirep/resources/atari_scores.yaml "
            "lists the 57 games of the Atari benchmark by ALE name (e.g. MsPacman)"
        )
    random, human = by_key[game_key(game)]
    normalized = (np.asarray(score, np.float64) - random) / (human - random)
    return float(normalized) if normalized.ndim == 0 else normalized


def final_returns(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows (ROW_COLUMNS) of each game and seed's last checkpoint, every protocol and episode."""
    last = rows.groupby(["game", "seed"])["step"].transform("max")
    return rows[rows["step"] == last]


def aggregate(scores: dict[str, np.ndarray], reps: int = BOOTSTRAP_REPS, seed: int = 0) -> dict:
    """IQM, median and mean of human-normalised scores, with stratified-bootstrap 95% CIs, per key.

    `scores`: key (e.g. a protocol) -> (runs, games) array of human-normalised scores. The bootstrap
    resamples runs within each game (Agarwal et al. 2021, rliable); with one run the CI is the point itself.
    Each key is resampled from its own RandomState(seed), so its CIs do not depend on the other keys.
    Returns {key: {"iqm"|"median"|"mean": {"value", "ci_low", "ci_high"}, "runs": n, "games": m}}.
    """
    from rliable import library as rly  # imported here: only the agents' report needs rliable
    from rliable import metrics

    names = ("iqm", "median", "mean")

    def estimates(x: np.ndarray) -> np.ndarray:
        return np.array([metrics.aggregate_iqm(x), metrics.aggregate_median(x), metrics.aggregate_mean(x)])

    out = {}
    global_state = np.random.get_state()
    for key, array in scores.items():
        array = np.asarray(array, np.float64)
        # rliable 1.2's StratifiedBootstrap draws its resamples from numpy's global generator (update_indices
        # calls np.random.choice), not from `random_state`: seed that too, and give it back afterwards.
        np.random.seed(seed)
        try:
            with warnings.catch_warnings():
                # arch 7 deprecates `random_state`, which rliable 1.2 passes; the resampling is the same.
                warnings.simplefilter("ignore", FutureWarning)
                points, intervals = rly.get_interval_estimates(
                    {key: array}, estimates, reps=reps, random_state=np.random.RandomState(seed)
                )
        finally:
            np.random.set_state(global_state)
        out[key] = {
            name: {
                "value": float(points[key][i]),
                "ci_low": float(intervals[key][0, i]),
                "ci_high": float(intervals[key][1, i]),
            }
            for i, name in enumerate(names)
        }
        out[key].update(runs=array.shape[0], games=array.shape[1])
    return out
