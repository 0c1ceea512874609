"""Returns of trained agents under the evaluation protocols (docs/protocols.md 4).

- `evaluate`: raw returns of whole games played by a network's policy under a protocol.
- `evaluate_checkpoints`: the evaluate_agent stage: every sampled checkpoint of a game, its files written.

Their scores, aggregates and curves are atarirep.reports.returns and atarirep.reports.curves.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from atarirep import seeds
from atarirep.agents import acting, checkpoints
from atarirep.agents.network import AgentNetwork
from atarirep.games import get_protocol
from atarirep.plumbing import atomic, devices
from atarirep.reports.curves import learning_curve_figure
from atarirep.reports.returns import ROW_COLUMNS, final_returns, has_reference_scores, human_normalized


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
    envs = acting.agent_envs(network, game, protocol, episodes)
    try:
        returns = np.full(episodes, np.nan)  # NaN: the env's first game is still running
        played = acting.play(network, envs, envs.reset(seed), np.random.default_rng(seed), epsilon)
        for step in itertools.islice(played, max_steps):
            # Outside training `terminated` is a game over only, so these are the envs of finished_returns.
            ended = np.flatnonzero(step.terminated | step.truncated)
            assert len(ended) == len(step.finished_returns)
            for env, value in zip(ended, step.finished_returns, strict=True):
                if math.isnan(returns[env]):
                    returns[env] = value
            if not np.isnan(returns).any():
                break
        running = np.isnan(returns)
        returns[running] = envs.running_returns[running]
        return returns.tolist()
    finally:
        envs.close()


def sampled_checkpoints(root: str | os.PathLike, game: str) -> list[tuple[int, int, int, Path]]:
    """[(seed, step, frames, path)] of `checkpoints.sampled_runs(root)`, every file read once first so that a bad
    one stops before any game is played. The published files carry no frame count: agent steps x the frame skip
    of 4."""
    found = []
    for seed, run in checkpoints.sampled_runs(Path(root)).items():
        for step, path in run:
            _, meta = checkpoints.load_for_game(path, game)
            found.append((seed, step, int(meta.get("frames", 4 * step)), path))
    return found


def evaluate_checkpoints(
    game: str,
    sampled_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    protocols: list[str],
    episodes: int,
    epsilon: float,
    max_steps: int,
    seed: int,
    device: str,
) -> None:
    """`evaluate` every sampled checkpoint of `game` (`sampled_checkpoints`) under each protocol; writes, all at
    once, <out_dir>/returns.csv (ROW_COLUMNS), metrics.json (per protocol: the last checkpoints' mean return over
    seeds and episodes and its human-normalised score, null for a game without reference scores) and
    learning_curve.png. Each run's games follow `seeds.agent_games(seed, run seed)`."""
    from atarirep.games import resolve_ale_game

    protocols = [get_protocol(name).name for name in protocols]  # an unknown one stops here
    game = resolve_ale_game(game)  # agents play any game with a ROM (AirRaid has no annotations)
    dev = devices.resolve(device)
    found = sampled_checkpoints(sampled_root, game)
    rows = []
    for run_seed, step, frames, path in found:
        network, _ = checkpoints.load_for_game(path, game)
        network.to(dev)
        eval_seed = seeds.agent_games(seed, run_seed)
        for protocol in protocols:
            started = time.perf_counter()
            returns = evaluate(
                network, game, protocol, episodes=episodes, epsilon=epsilon, max_steps=max_steps, seed=eval_seed
            )
            rows += [(game, run_seed, step, frames, protocol, episode, value) for episode, value in enumerate(returns)]
            print(
                f"{game} seed {run_seed} step {step} {protocol}: mean return {np.mean(returns):.1f} over "
                f"{len(returns)} games ({time.perf_counter() - started:.1f} s)",
                flush=True,
            )
    table = pd.DataFrame(rows, columns=ROW_COLUMNS)
    metrics = {}
    for name, group in final_returns(table).groupby("protocol", sort=False):
        mean = float(group["return"].mean())
        metrics[name] = {
            "mean_return": mean,
            "human_normalized": human_normalized(game, mean) if has_reference_scores(game) else None,
            "seeds": int(group["seed"].nunique()),
            "episodes": len(group),
            "step": int(group["step"].max()),
        }
    with atomic.atomic_dir(out_dir) as tmp:
        table.to_csv(tmp / "returns.csv", index=False, lineterminator="\n")
        atomic.write_json(tmp / "metrics.json", metrics)
        learning_curve_figure(table, tmp / "learning_curve.png")
    print(f"evaluated {len(found)} checkpoints of {game} under {', '.join(protocols)} in {out_dir}")
