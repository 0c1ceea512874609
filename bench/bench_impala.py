"""IMPALA's throughput against PPO's on the same machine and game, its scaling with actors, the learner's
utilisation, and saliency's time per frame. Prints one JSON object.

  impala    atarirep.agents.impala.train on GAME with the reference settings (unrolls of 80, 8 a learner
            step as in torchbeast, RMSprop, the Nature CNN) for --learner-steps learner steps, once per actor count of
            --actors (each actor a process with one env). frames_per_s = 4 x the agent steps trained on per
            second, over the learner steps after the first (the actors' start and the first batch are not
            counted), from the run's own dvclive log; learner_utilisation = the mean share of those learner
            steps spent computing (V-trace, RMSprop, publishing weights), the rest waiting for unrolls: near
            1, the learner is the bottleneck; low, the actors are.
  ppo       atarirep.agents.ppo.train on GAME with CleanRL's settings (8 envs x 128 steps) for --ppo-iterations
            iterations; frames_per_s over the iterations after the first, from its dvclive log.
  saliency  both perturbation maps (policy and value) of one 84x84x4 stack at r = d = 2 (42 x 42 = 1,764
            perturbed stacks) on CPU: batched (saliency.saliency_maps, the stage's code) for the PPO network
            (its first convolution computed only where a perturbation reaches) and for a multi-task IMPALA
            network through one game's view (whole network on every perturbed stack); against the reference's
            way, one perturbed stack at a time through the network (Greydanus et al.'s loop), same scores.
            Goal: under 1 s a frame batched.

Usage: python bench/bench_impala.py [--game Pong] [--actors 1 2] [--learner-steps 6] [--ppo-iterations 4]
       [--threads N] [--quick] [--json out.json]
On a GPU machine the learner runs on CUDA (device auto): pass --actors 1 2 4 8 16 to see whether 16 actors
keep it busy (learner_utilisation near 1 means the learner, not the actors, limits the frames per second).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from report import finish

from atarirep.agents import impala, ppo, saliency
from atarirep.agents.network import ActorCritic, IMPALANet, OneGame
from atarirep.plumbing import devices

FRAME_SKIP = 4


def _log(log_dir: Path, name: str) -> pd.Series:
    """One dvclive metric of a run (charts/<name>) by step."""
    table = pd.read_csv(log_dir / "plots/metrics/charts" / f"{name}.tsv", sep="\t")
    return table.set_index("step")[name]


def run_impala(game: str, actors: int, learner_steps: int, device: str) -> dict:
    steps = learner_steps * impala.IMPALAConfig().steps_per_update
    config = impala.IMPALAConfig(total_steps=steps, num_actors=actors, checkpoint_every=steps)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        impala.train(game, 0, Path(tmp) / "out", Path(tmp) / "logs", config, device=device, progress=False)
        wall = time.perf_counter() - started
        steps_per_s = _log(Path(tmp) / "logs", "steps_per_s").iloc[1:]
        utilisation = _log(Path(tmp) / "logs", "learner_utilisation").iloc[1:]
    # frames/s over the timed learner steps: their agent steps over the sum of their durations
    seconds = (config.steps_per_update / steps_per_s).sum()
    return {
        "actors": actors,
        "frames_per_s": round(FRAME_SKIP * config.steps_per_update * len(steps_per_s) / seconds, 1),
        "learner_utilisation": round(float(utilisation.mean()), 3),
        "learner_steps_timed": len(steps_per_s),
        "wall_s_with_start": round(wall, 1),
    }


def run_ppo(game: str, iterations: int, device: str) -> dict:
    config = ppo.config_from({"total_steps": iterations * 1024, "checkpoint_every": iterations * 1024})
    with tempfile.TemporaryDirectory() as tmp:
        ppo.train(game, 0, Path(tmp) / "out", Path(tmp) / "logs", config, device=device, progress=False)
        steps_per_s = _log(Path(tmp) / "logs", "steps_per_s").iloc[1:]
    seconds = (config.batch_size / steps_per_s).sum()
    return {
        "frames_per_s": round(FRAME_SKIP * config.batch_size * len(steps_per_s) / seconds, 1),
        "iterations_timed": len(steps_per_s),
    }


def one_at_a_time(network: torch.nn.Module, stack: np.ndarray, radius: int, stride: int) -> tuple[np.ndarray, ...]:
    """The reference's loop: every perturbed stack through the network alone (float input in [0, 1])."""
    images = torch.from_numpy(stack).float().div(255)
    blurred = saliency.gaussian_blur(images)
    rows, cols = saliency.grid(84, stride), saliency.grid(84, stride)
    forward = saliency.float_forward(network)
    policy, value = np.zeros((len(rows), len(cols))), np.zeros((len(rows), len(cols)))
    with torch.inference_mode():
        logits0, value0 = forward(images)
        for i in range(len(rows)):
            for j in range(len(cols)):
                mask = torch.from_numpy(saliency.get_mask((int(rows[i]), int(cols[j])), (84, 84), radius)).float()[None]
                logits, values = forward(saliency.perturb(images, blurred, mask))
                policy[i, j] = 0.5 * float((logits - logits0).pow(2).sum())
                value[i, j] = 0.5 * float((values - value0).pow(2).sum())
    return policy, value


def time_saliency(repeats: int) -> dict:
    torch.manual_seed(0)
    networks = {
        "ppo_actor_critic": ActorCritic(6).eval(),
        "impala_multitask_one_game": OneGame(IMPALANet(6, 6, popart=True), task=2).eval(),
    }
    stack = np.random.default_rng(0).integers(0, 256, size=(1, 4, 84, 84), dtype=np.uint8)
    out = {}
    for name, network in networks.items():
        batched = saliency.time_one_frame(network, radius=2, stride=2, repeats=repeats)
        started = time.perf_counter()
        reference = one_at_a_time(network, stack, radius=2, stride=2)
        looped = time.perf_counter() - started
        policy, value = saliency.saliency_grids(network, stack, radius=2, stride=2)
        same = bool(
            np.allclose(policy[0].numpy(), reference[0], rtol=1e-3, atol=1e-7)
            and np.allclose(value[0].numpy(), reference[1], rtol=1e-3, atol=1e-7)
        )
        out[name] = {
            "batched_s_per_frame": round(batched, 3),
            "one_at_a_time_s_per_frame": round(looped, 3),
            "speedup": round(looped / batched, 2),
            "same_scores": same,
            "under_1s": batched < 1.0,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--game", default="Pong")
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--learner-steps", type=int, default=6)
    parser.add_argument("--ppo-iterations", type=int, default=4)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="fewer steps: a check that the bench runs")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the JSON here (bench/results/NAME.json)")
    args = parser.parse_args()
    if args.quick:
        args.learner_steps, args.ppo_iterations, args.actors = 2, 2, args.actors[:2]
    torch.set_num_threads(args.threads)
    device = devices.resolve(args.device)

    report = {
        "device": str(device),
        "torch_threads": args.threads,
        "game": args.game,
        "ppo": run_ppo(args.game, args.ppo_iterations, str(device)),
    }
    report["impala"] = [run_impala(args.game, n, args.learner_steps, str(device)) for n in args.actors]
    fps = {entry["actors"]: entry["frames_per_s"] for entry in report["impala"]}
    report["impala_vs_ppo"] = {str(n): round(f / report["ppo"]["frames_per_s"], 2) for n, f in fps.items()}
    first = min(fps)
    report["impala_scaling"] = {str(n): round(f / fps[first], 2) for n, f in fps.items()}  # vs the fewest actors
    report["saliency"] = time_saliency(repeats=1 if args.quick else 3)
    finish(report, args.json)


if __name__ == "__main__":
    main()
