"""saliency: perturbation saliency maps (Greydanus et al. 2018) of one game's last sampled checkpoints.

    python stages/saliency.py GAME SAMPLED_ROOT OUT_DIR      (SAMPLED_ROOT: data/checkpoints_sampled/PPO_classic/GAME)

For each of the last `saliency.checkpoints` checkpoints of the first seed: one game played by its policy
under `saliency.protocol` (one env; actions drawn as evaluate_agent draws them, from the same seed), the
first `saliency.frames` observations, and both maps of each (radius and stride from the params). Writes, all
at once, OUT_DIR/SEED/model_STEP/episode.gif (every kept frame), frame_XXXX.png (every 8th) and
OUT_DIR/metrics.json (per checkpoint: frames, seconds, mean policy and value saliency).
"""

import time
from pathlib import Path

import torch

from atarirep import seeds
from atarirep.agents import checkpoints, saliency
from atarirep.envs import resolve_ale_game
from atarirep.plumbing import devices, params
from atarirep.plumbing.atomic import atomic_dir, write_json
from atarirep.plumbing.errors import run_stage

PNG_EVERY = 8  # a still of every 8th kept frame
GIF_FPS = 15  # agent steps are 4 emulator frames at 60 Hz: 15 a second is real time
SCALE = 4  # 84x84 -> 336x336, nearest neighbour


def load_params() -> params.Saliency:
    """params.yaml's `saliency` section, its values checked (as check_params does)."""
    p = params.load("saliency")
    saliency.check_settings(p)
    return p


def chosen_checkpoints(root: Path, game: str, count: int) -> list[tuple[int, int, Path]]:
    """[(seed, step, path)] of the last `count` checkpoints of the first seed, each read once first so that a
    bad one stops the stage before any game is played."""
    seed, run = next(iter(checkpoints.sampled_runs(root).items()))
    found = []
    for step, path in run[-count:]:
        checkpoints.load_for_game(path, game)
        found.append((seed, step, path))
    return found


def main(game: str, sampled_root: str, out_dir: str) -> None:
    p = load_params()
    game = resolve_ale_game(game)  # agents play any game with a ROM
    device = devices.resolve(p.device)
    found = chosen_checkpoints(Path(sampled_root), game, p.checkpoints)
    batch_size = 1024 if device.type == "cuda" else saliency.DEFAULT_BATCH
    metrics = {}
    with atomic_dir(out_dir) as tmp:
        for seed, step, path in found:
            network, _ = checkpoints.load_for_game(path, game)  # a multi-task network: game's value output
            network.to(device)
            play_seed = seeds.agent_games(p.seed, seed)
            stacks = saliency.episode_stacks(
                network, game, p.protocol, frames=p.frames, epsilon=p.epsilon, seed=play_seed
            )
            started = time.perf_counter()
            policy, value = saliency.saliency_maps(network, stacks, p.radius, p.stride, batch_size)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - started
            folder = tmp / str(seed) / f"model_{step}"
            folder.mkdir(parents=True)
            pictures = [
                saliency.overlay(stack[-1], pm, vm, scale=SCALE)
                for stack, pm, vm in zip(stacks, policy, value, strict=True)
            ]
            for index in range(0, len(pictures), PNG_EVERY):
                saliency.write_png(pictures[index], folder / f"frame_{index:04d}.png")
            saliency.write_gif(pictures, folder / "episode.gif", fps=GIF_FPS)
            metrics[f"{seed}/model_{step}"] = {
                "seed": seed,
                "step": step,
                "frames": len(stacks),
                "seconds": round(seconds, 3),
                "seconds_per_frame": round(seconds / len(stacks), 4),
                "mean_policy_saliency": float(policy.mean()),
                "mean_value_saliency": float(value.mean()),
            }
            print(
                f"{game} seed {seed} step {step}: saliency of {len(stacks)} frames in {seconds:.1f} s "
                f"({seconds / len(stacks):.2f} s a frame on {device.type})",
                flush=True,
            )
        write_json(tmp / "metrics.json", metrics)
    print(f"saliency of {len(found)} checkpoints of {game} in {out_dir}")


if __name__ == "__main__":
    run_stage(main)
