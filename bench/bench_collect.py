"""Collection speed and memory: the collect stage against a plain single-process loop.

The baseline is the reference's way: gymnasium's ALE env at frameskip 1 under baselines-style
wrappers (no-op reset, max-and-skip, episodic life, FIRE reset, grayscale), AtariARIWrapper labels,
frames kept in a Python list. Both run the same game, protocol, environment count and step count,
in the same run. Prints one JSON object.

    python bench/bench_collect.py [--game Pong] [--steps 8000] [--memory-steps 100000] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
from report import finish

from atarirep import AtariARIWrapper
from atarirep.collection import collect
from atarirep.envs import _luminance, resolve_game


class ReferenceStyleEnv(gym.Wrapper):
    """wrap_deepmind(make_atari(...)) of the reference, folded into one wrapper for brevity."""

    def __init__(self, env, rng):
        super().__init__(env)
        self.rng, self.lives, self.real_done = rng, 0, True
        self.uses_fire = env.unwrapped.get_action_meanings()[1] == "FIRE"

    def _skip(self, action):
        total, frames = 0.0, []
        for i in range(4):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total += reward
            if i >= 2:
                frames.append(obs)
            if terminated or truncated:
                break
        obs = _luminance(np.max(np.stack(frames or [obs]), axis=0))[None]
        return obs, total, terminated or truncated, info

    def step(self, action):
        obs, reward, done, info = self._skip(action)
        self.real_done = done
        lives = self.env.unwrapped.ale.lives()
        if 0 < lives < self.lives:
            done = True
        self.lives = lives
        return obs, np.sign(reward), done, False, info

    def reset(self, **kwargs):
        if self.real_done:
            self.env.reset(**kwargs)
            for _ in range(self.rng.integers(1, 31)):
                _, _, terminated, truncated, _ = self.env.step(0)
                if terminated or truncated:
                    self.env.reset()
        else:
            self._skip(0)
        info = {}
        if self.uses_fire:
            for action in (1, 2):
                obs, _, done, info = self._skip(action)
                if done:
                    self.env.reset()
        obs, _, _, info = self._skip(0)
        self.lives = self.env.unwrapped.ale.lives()
        return obs, info


def plain_loop(game: str, steps: int, num_envs: int, seed: int) -> float:
    """Seconds to collect `steps` labelled frames over `num_envs` envs in one process, reference style."""
    rng = np.random.default_rng(seed)
    start = time.perf_counter()  # construction counted, as in the collect stage
    envs = [
        ReferenceStyleEnv(
            AtariARIWrapper(
                gym.make(f"ALE/{game}-v5", frameskip=1, repeat_action_probability=0.0, full_action_space=False)
            ),
            rng,
        )
        for _ in range(num_envs)
    ]
    for i, env in enumerate(envs):
        env.reset(seed=seed + i)
    episodes = [[[]] for _ in envs]
    for _ in range(steps // num_envs):
        for i, env in enumerate(envs):
            obs, _, done, _, info = env.step(int(rng.integers(1, env.action_space.n)))
            episodes[i][-1].append((obs.copy(), info["labels"]))
            if done:
                env.reset()
                episodes[i].append([])
    return time.perf_counter() - start


def timed_collect(game: str, steps: int, num_envs: int, num_workers: int, seed: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        collect(
            game,
            os.path.join(tmp, "out"),
            steps=steps,
            splits_fractions={"train": 0.8, "val": 0.2},
            seed=seed,
            num_envs=num_envs,
            num_workers=num_workers,
            min_episode_length=0,
        )
        return time.perf_counter() - start


def peak_memory_mib(game: str, steps: int, num_envs: int) -> dict:
    """Peak resident memory of a `steps`-step collection (2 workers), main process and largest worker."""
    code = (
        "import resource, sys, tempfile, os\n"
        "from atarirep.collection import collect\n"
        "if __name__ == '__main__':\n"
        "    with tempfile.TemporaryDirectory() as tmp:\n"
        f"        collect({game!r}, os.path.join(tmp, 'out'), steps={steps}, num_envs={num_envs}, num_workers=2,\n"
        "                splits_fractions={'train': 0.7, 'val': 0.1, 'test': 0.2})\n"
        "    usage = resource.getrusage\n"
        "    print(usage(resource.RUSAGE_SELF).ru_maxrss, usage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    main_kib, worker_kib = int(out[-2]), int(out[-1])
    return {
        "steps": steps,
        "seconds": round(time.perf_counter() - start, 1),
        "main_process_peak_mib": round(main_kib / 1024),
        "largest_worker_peak_mib": round(worker_kib / 1024),
        "frames_as_uint8_mib": round(steps * 210 * 160 / 2**20),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--game", default="Pong")
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--memory-steps", type=int, default=100_000, help="0 skips the memory measurement")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the JSON here (bench/results/NAME.json)")
    args = parser.parse_args()
    game, seed = resolve_game(args.game), 42
    plain = plain_loop(game, args.steps, args.num_envs, seed)
    one = timed_collect(game, args.steps, args.num_envs, 1, seed)
    two = timed_collect(game, args.steps, args.num_envs, 2, seed)

    def fps(seconds):
        return round(args.steps / seconds)

    result = {
        "game": game,
        "steps": args.steps,
        "num_envs": args.num_envs,
        "plain_loop_fps": fps(plain),
        "collect_1_worker_fps": fps(one),
        "collect_2_workers_fps": fps(two),
        "speedup_1_worker": round(plain / one, 2),
        "speedup_2_workers": round(plain / two, 2),
        "goal": "speedup_1_worker >= 0.8 and speedup_2_workers > 1",
    }
    if args.memory_steps:
        result["memory"] = peak_memory_mib(game, args.memory_steps, args.num_envs)
    finish(result, args.json)


if __name__ == "__main__":
    main()
