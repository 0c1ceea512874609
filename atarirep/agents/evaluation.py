"""Returns of trained agents under the evaluation protocols, and their human-normalised scores (docs/protocols.md 4).

- `evaluate`: raw returns of whole games played by a network's policy under a protocol.
- `human_normalized`: a raw return on the scale 0 = random play, 1 = the human reference
  (atarirep/resources/atari_scores.yaml, the Agent57 table).
- `final_returns`: the rows of each run's last checkpoint, what tables and aggregates report.
- `aggregate`: IQM, median and mean of human-normalised scores with stratified-bootstrap 95% CIs (rliable).
- `learning_curve_figure`: mean return against frames with a bootstrap 95% band.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from importlib import resources

import numpy as np
import pandas as pd
import torch
import yaml
from matplotlib.figure import Figure  # no pyplot: no global figure state; PNGs are drawn by Agg
from matplotlib.ticker import EngFormatter

from atarirep.agents.network import AgentNetwork, choose_actions, play_outputs
from atarirep.agents.vector_env import AgentEnvs
from atarirep.games import game_key
from atarirep.plumbing.errors import UserError

BOOTSTRAP_REPS = 2000  # rliable's default number of bootstrap resamples
ROW_COLUMNS = ["game", "seed", "step", "frames", "protocol", "episode", "return"]


def evaluate(
    network: AgentNetwork, game: str, protocol: str, *, episodes: int, epsilon: float, max_steps: int, seed: int
) -> list[float]:
    """Raw (unclipped) returns of `episodes` whole games of `game` under `protocol`, played by `network`.

    The games run side by side, one env each, with one batched forward pass per step; each env counts only
    its first game. A life lost never ends a game here. Each action is the network's choice or, with
    probability `epsilon`, a uniformly random action: a sample of the policy for an actor-critic, the argmax
    of the head for a network that `acts_greedily` (a QNetwork: epsilon-greedy, as the published DQN-family
    agents were evaluated; an IMPALA checkpoint's policy, as torchbeast's test mode plays; ties go to the lowest
    action). An IMPALA network that reads the last action and reward gets them (zeros at a game's start). A game
    still running after `max_steps` agent steps is cut there and its return so far is counted (the protocol's
    108,000-frame cap, 27,000 steps, ends longer games in any case). Deterministic for a seed on CPU: the envs'
    no-ops and sticky actions follow `seed`, and so does the numpy generator that draws the actions.
    """
    envs = AgentEnvs(game, episodes, protocol, training=False, full_action_space=network.full_action_space)
    try:
        if envs.num_actions != network.num_actions:
            raise UserError(
                f"the network has {network.num_actions} actions but {envs.game} has {envs.num_actions}; "
                f"evaluate a checkpoint trained on {envs.game}"
            )
        device = next(network.parameters()).device
        rng = np.random.default_rng(seed)
        returns = np.full(episodes, np.nan)  # NaN: the env's first game is still running
        obs = envs.reset(seed)
        last_action, last_reward = np.zeros(episodes, np.int64), np.zeros(episodes, np.float32)
        for _ in range(max_steps):
            with torch.no_grad():  # policy logits or Q-values (B, A)
                head, _ = play_outputs(
                    network,
                    torch.from_numpy(obs).to(device),
                    torch.from_numpy(last_action).to(device),
                    torch.from_numpy(last_reward).to(device),
                )
            actions = choose_actions(network, head, rng, epsilon)
            step = envs.step(actions)
            last_action, last_reward = _last_inputs(actions, step)
            # Outside training `terminated` is a game over only, so these are the envs of finished_returns.
            ended = np.flatnonzero(step.terminated | step.truncated)
            assert len(ended) == len(step.finished_returns)
            for env, value in zip(ended, step.finished_returns, strict=True):
                if math.isnan(returns[env]):
                    returns[env] = value
            if not np.isnan(returns).any():
                break
            obs = step.obs
        running = np.isnan(returns)
        returns[running] = envs.running_returns[running]
        return returns.tolist()
    finally:
        envs.close()


def _last_inputs(actions: np.ndarray, step) -> tuple[np.ndarray, np.ndarray]:
    """The last action and reward an IMPALA network reads at the next step: zeros where a game starts."""
    started = step.terminated | step.truncated
    return (np.where(started, 0, actions).astype(np.int64), np.where(started, 0.0, step.reward).astype(np.float32))


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
