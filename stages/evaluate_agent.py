"""evaluate_agent: returns of every sampled checkpoint of one game's runs, under each evaluation protocol.

Writes <out_dir>/returns.csv (game, seed, step, frames, protocol, episode, return), metrics.json (per
protocol: the last checkpoints' mean return over seeds and episodes, and its human-normalised score: null for a
game without reference scores, such as AirRaid and Carnival) and learning_curve.png, all at once.

The sampled root is one game's ALGO_protocol/GAME folder of SEED/model_STEP.gz files, or a multi-task run's
ALGO_protocol/multitask folder (its network plays GAME, one of its games): ours, or a published
DQN-family run brought in with `dvc import-url <collection>/DQN_modern/Pong/0
data/checkpoints_sampled/DQN_modern/Pong/0` (its Q-network acts epsilon-greedily; see
atarirep.agents.checkpoints.load_network for what loads).
"""

import time
from pathlib import Path

import numpy as np
import pandas as pd

from atarirep import seeds
from atarirep.agents import checkpoints, evaluation
from atarirep.envs import resolve_ale_game
from atarirep.games import get_protocol
from atarirep.plumbing import devices, params
from atarirep.plumbing.atomic import atomic_dir, write_json
from atarirep.plumbing.errors import run_stage


def checked_checkpoints(root: Path, game: str) -> list[tuple[int, int, int, Path]]:
    """[(seed, step, frames, path)], every file read once first so that a bad one stops the stage at once."""
    found = []
    for seed, run in checkpoints.sampled_runs(root).items():
        for step, path in run:
            _, meta = checkpoints.load_for_game(path, game)
            # The published files carry no frame count: agent steps x the frame skip of 4.
            found.append((seed, step, int(meta.get("frames", 4 * step)), path))
    return found


def main(game: str, sampled_root: str, out_dir: str) -> None:
    p = params.load("evaluate_agent")
    protocols = [get_protocol(name).name for name in p.protocols]  # an unknown one stops here
    game = resolve_ale_game(game)  # agents play any game with a ROM (AirRaid has no annotations)
    device = devices.resolve(p.device)
    found = checked_checkpoints(Path(sampled_root), game)
    rows = []
    for seed, step, frames, path in found:
        network, _ = checkpoints.load_for_game(path, game)
        network.to(device)
        eval_seed = seeds.agent_games(p.seed, seed)
        for protocol in protocols:
            started = time.perf_counter()
            returns = evaluation.evaluate(
                network, game, protocol, episodes=p.episodes, epsilon=p.epsilon, max_steps=p.max_steps, seed=eval_seed
            )
            rows += [(game, seed, step, frames, protocol, episode, value) for episode, value in enumerate(returns)]
            print(
                f"{game} seed {seed} step {step} {protocol}: mean return {np.mean(returns):.1f} over "
                f"{len(returns)} games ({time.perf_counter() - started:.1f} s)",
                flush=True,
            )
    table = pd.DataFrame(rows, columns=evaluation.ROW_COLUMNS)
    final = evaluation.final_returns(table)
    metrics = {}
    for protocol, group in final.groupby("protocol", sort=False):
        mean = float(group["return"].mean())
        human = evaluation.human_normalized(game, mean) if evaluation.has_reference_scores(game) else None
        metrics[protocol] = {
            "mean_return": mean,
            "human_normalized": human,  # None: no reference scores
            "seeds": int(group["seed"].nunique()),
            "episodes": len(group),
            "step": int(group["step"].max()),
        }
    with atomic_dir(out_dir) as tmp:
        table.to_csv(tmp / "returns.csv", index=False, lineterminator="\n")
        write_json(tmp / "metrics.json", metrics)
        evaluation.learning_curve_figure(table, tmp / "learning_curve.png")
    print(f"evaluated {len(found)} checkpoints of {game} under {', '.join(protocols)} in {out_dir}")


if __name__ == "__main__":
    run_stage(main)
