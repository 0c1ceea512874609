"""Collecting labelled episodes: several environments stepped by policies across worker processes,
written as one stored dataset (atarirep.episodes) with the benchmark's dataset rules applied.

Each environment has its own seed stream and step budget, so the output for a seed is byte-identical
whatever the number of workers. Frames are compressed as they are produced (memory stays bounded) and
written atomically: a killed collection leaves no folder that looks finished.
"""

from __future__ import annotations

import hashlib
import math
import multiprocessing as mp
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from atarirep import annotations as ram_annotations
from atarirep import episodes, seeds, splits
from atarirep.envs import LabelledAtariEnv, resolve_game
from atarirep.games import get_protocol
from atarirep.plumbing import atomic
from atarirep.plumbing.errors import UserError
from atarirep.policies import COLLECT_MODES, RANDOM_ACTIONS, make_policy


def _run_env(job: dict, report: Callable[[int], object]) -> dict:
    """Step one environment for its budget of frames; frames go compressed to job['part_path']."""
    env = LabelledAtariEnv(job["game"], job["protocol"], job["annotation_set"])
    ale_seed, env_rng, policy_rng = seeds.collection_env(job["seed"], job["stream"], job["rank"])
    policy = make_policy(
        job["collect_mode"],
        int(env.action_space.n),
        policy_rng,
        random_actions=job["random_actions"],
        agent_checkpoint=job["agent_checkpoint"],
        agent_random_prob=job["agent_random_prob"],
    )
    budget, num_vars = job["budget"], len(env.annotation.variables)
    labels = np.empty((budget, num_vars), np.uint8)
    actions = np.full(budget, -1, np.int16)  # the action that led to this frame; -1 on a first frame
    rewards = np.zeros(budget, np.float32)  # the (protocol-clipped) reward of that step
    episode = np.empty(budget, np.int32)
    hashes = np.empty((budget, 16), np.uint8)  # for removing test frames equal to train/val frames
    writer = episodes.ChunkWriter(Path(job["part_path"]))
    obs, _ = env.reset(seed=ale_seed)
    env.np_random = env_rng  # reset noops draw from this environment's own stream
    ep, is_first, ended = 0, True, False
    for i in range(budget):
        writer.add(obs)
        labels[i] = env.ram_labels()
        episode[i] = ep
        hashes[i] = np.frombuffer(hashlib.blake2b(obs, digest_size=16).digest(), np.uint8)
        if i % 256 == 255:
            report(256)
        if i == budget - 1:
            break
        if ended:  # the terminal frame is stored; the reset frame starts the next episode, with its own label
            writer.end_episode()
            ep, is_first, ended = ep + 1, True, False
            obs, _ = env.reset()
            continue
        action = policy.act(obs, is_first, 0.0 if is_first else float(rewards[i]))
        obs, reward, terminated, truncated, _ = env.step(action)
        actions[i + 1], rewards[i + 1] = action, reward
        is_first, ended = False, terminated or truncated
    writer.close()
    env.close()
    report(budget % 256)
    return {
        "rank": job["rank"],
        "labels": labels,
        "actions": actions,
        "rewards": rewards,
        "episode": episode,
        "hashes": hashes,
        "variables": env.annotation.variables,
        "chunk_frames": np.asarray(writer.chunk_frames, np.int64),
        "chunk_bytes": np.asarray(writer.chunk_bytes, np.int64),
    }


_progress_counter = None


def _init_worker(counter) -> None:
    global _progress_counter
    _progress_counter = counter


def _report_to_counter(n: int) -> None:
    assert _progress_counter is not None  # set by _init_worker in every pool worker
    with _progress_counter.get_lock():
        _progress_counter.value += n


def _run_envs_in_worker(jobs: list[dict]) -> list[dict]:
    return [_run_env(job, _report_to_counter) for job in jobs]


def _run_all(jobs: list[dict], num_workers: int, progress: bool, description: str) -> list[dict]:
    total = sum(job["budget"] for job in jobs)
    bar = tqdm(total=total, desc=description, unit="step", disable=not progress, smoothing=0.1)
    try:
        if num_workers == 1:
            return [_run_env(job, bar.update) for job in jobs]
        # Environments are dealt to workers round-robin; each environment's output is independent of it.
        groups = [jobs[w::num_workers] for w in range(num_workers)]
        ctx = mp.get_context("spawn")  # no fork: worker state never inherits torch/threads from the parent
        counter = ctx.Value("q", 0)
        with ProcessPoolExecutor(num_workers, mp_context=ctx, initializer=_init_worker, initargs=(counter,)) as pool:
            futures = [pool.submit(_run_envs_in_worker, group) for group in groups]
            while not all(f.done() for f in futures):
                time.sleep(0.2)
                bar.update(counter.value - bar.n)
            results = [r for f in futures for r in f.result()]
        bar.update(counter.value - bar.n)
        return sorted(results, key=lambda r: r["rank"])
    finally:
        bar.close()


def _too_few_episodes(
    kept_lengths: list[int],
    num_short: int,
    fractions: dict[str, float],
    steps: int,
    num_envs: int,
    min_episode_length: int,
) -> UserError:
    need = splits.min_episodes_for(fractions)
    typical = float(np.mean(kept_lengths)) if kept_lengths else steps / num_envs
    suggested = math.ceil(1.5 * need * max(typical, min_episode_length + 1) / num_envs) * num_envs
    pattern = "/".join(f"{round(100 * f)}" for f in fractions.values())
    return UserError(
        f"collected {len(kept_lengths)} episodes longer than {min_episode_length} frames "
        f"({num_short} shorter ones dropped), but a {pattern} split needs at least {need}; "
        f"raise steps from {steps} to at least {max(suggested, steps + num_envs)}"
    )


def _agent_meta(checkpoint: str | None, random_prob: float) -> dict:
    """Which agent collected the episodes: its checkpoint's own keys (game, seed, step, ...) and random_prob."""
    from atarirep.agents import checkpoints

    assert checkpoint is not None  # agent collection without a checkpoint is refused up front
    payload = checkpoints.read(checkpoint)
    return {
        **{k: payload[k] for k in ("algo", "protocol", "game", "seed", "step", "frames") if k in payload},
        "random_prob": random_prob,
    }


def validate(
    game: str,
    *,
    steps: int,
    splits_fractions: dict[str, float],
    num_envs: int,
    num_workers: int,
    annotation_set: str,
    protocol: str,
    collect_mode: str,
    random_actions: str,
    purpose: str,
    min_episode_length: int,
    entropy_threshold: float,
    agent_checkpoint: str | None = None,
    agent_random_prob: float = 0.2,
) -> str:
    """Check collection arguments before any emulator runs; returns the game's ALE name.

    Raises UserError (one line naming the problem and the fix) for any bad argument.
    """
    ale_name = resolve_game(game, annotation_set)
    get_protocol(protocol)
    splits.check_fractions(splits_fractions)
    if not isinstance(steps, int) or steps <= 0:
        raise UserError(f"steps must be a positive integer, got {steps!r}; for example steps: 50000")
    if num_envs < 1 or num_workers < 1:
        raise UserError(f"num_envs and num_workers must be at least 1, got {num_envs} and {num_workers}")
    if steps < num_envs:
        raise UserError(f"steps ({steps}) is smaller than num_envs ({num_envs}); raise steps or lower num_envs")
    if random_actions not in RANDOM_ACTIONS:
        raise UserError(f"random_actions {random_actions!r} is unknown; use one of {', '.join(RANDOM_ACTIONS)}")
    if purpose not in seeds.DATASET_STREAMS:
        raise UserError(f"purpose {purpose!r} is unknown; use one of {', '.join(seeds.DATASET_STREAMS)}")
    if min_episode_length < 0 or entropy_threshold < 0:
        raise UserError("min_episode_length and entropy_threshold must not be negative")
    if collect_mode not in COLLECT_MODES:
        raise UserError(f"collect_mode {collect_mode!r} is unknown; use one of {', '.join(COLLECT_MODES)}")
    if collect_mode == "agent" and not agent_checkpoint:
        raise UserError(
            "collect_mode agent needs an agent checkpoint; run train_agent and sample_checkpoints "
            "first (dvc repro does)"
        )
    if not 0 <= agent_random_prob <= 1:
        raise UserError(f"agent_random_prob {agent_random_prob} must be in [0, 1] (the reference: 0.2)")
    return ale_name


def collect(
    game: str,
    out_dir: str | os.PathLike,
    *,
    steps: int,
    splits_fractions: dict[str, float],
    seed: int = 42,
    purpose: str = "pretrain",
    num_envs: int = 8,
    num_workers: int = 1,
    annotation_set: str = "latest",
    protocol: str = "atariari",
    collect_mode: str = "random_agent",
    random_actions: str = "nonzero",
    min_episode_length: int = 64,
    entropy_threshold: float = 0.6,
    agent_checkpoint: str | None = None,
    agent_random_prob: float = 0.2,
    progress: bool = False,
) -> episodes.EpisodeStore:
    """Collect `steps` labelled frames of `game` over `num_envs` environments into folder `out_dir`.

    `steps` counts agent steps (stored frames, a reset frame included) over all environments, as
    AtariARI's get_episodes does; episodes still running when the budget ends are kept if long
    enough. Episodes of `min_episode_length` frames or fewer are dropped, the rest split by episode
    with a seeded shuffle, variables with label entropy below `entropy_threshold` nats (pooled over
    all kept frames) dropped, and test frames equal to a train or val frame removed.
    Returns the written dataset, opened.
    """
    ale_name = validate(
        game,
        steps=steps,
        splits_fractions=splits_fractions,
        num_envs=num_envs,
        num_workers=num_workers,
        annotation_set=annotation_set,
        protocol=protocol,
        collect_mode=collect_mode,
        random_actions=random_actions,
        purpose=purpose,
        min_episode_length=min_episode_length,
        entropy_threshold=entropy_threshold,
        agent_checkpoint=agent_checkpoint,
        agent_random_prob=agent_random_prob,
    )
    splits_fractions = splits.check_fractions(splits_fractions)  # canonical train, val, test order
    variables_all = ram_annotations.for_game(game, annotation_set).variables

    with atomic.atomic_dir(out_dir) as folder:
        parts = folder / "parts"
        parts.mkdir()
        budgets = [steps // num_envs + (rank < steps % num_envs) for rank in range(num_envs)]
        jobs = [
            {
                "game": ale_name,
                "protocol": protocol,
                "annotation_set": annotation_set,
                "seed": seed,
                "stream": seeds.DATASET_STREAMS[purpose],
                "rank": rank,
                "budget": budget,
                "collect_mode": collect_mode,
                "random_actions": random_actions,
                "agent_checkpoint": agent_checkpoint,
                "agent_random_prob": agent_random_prob,
                "part_path": str(parts / f"env{rank}.bin"),
            }
            for rank, budget in enumerate(budgets)
        ]
        results = _run_all(jobs, min(num_workers, num_envs), progress, f"collect {ale_name} ({purpose})")

        records = _episode_records(results)
        kept = [rec for rec in records if len(rec.rows) > min_episode_length]
        num_short = len(records) - len(kept)

        def too_few() -> UserError:
            lengths = [len(rec.rows) for rec in kept]
            return _too_few_episodes(lengths, num_short, splits_fractions, steps, num_envs, min_episode_length)

        if len(kept) < splits.min_episodes_for(splits_fractions):
            raise too_few()

        # Variables whose labels barely vary carry no signal for a probe (Breakout's block bytes).
        entropies = splits.label_entropy(np.concatenate([rec.field(results, "labels") for rec in kept]))
        kept_variables = splits.variables_to_keep(variables_all, entropies, entropy_threshold)
        if not kept_variables:
            raise UserError(
                f"every variable of {ale_name} has label entropy below {entropy_threshold} nats on "
                "this data; collect more steps or lower entropy_threshold"
            )

        rng = seeds.dataset_split(seed, seeds.DATASET_STREAMS[purpose])
        split_episodes = {
            name: [kept[i] for i in ids]
            for name, ids in splits.split_episodes(len(kept), splits_fractions, rng).items()
        }
        steps_table, chunk_frames, chunk_bytes, num_removed, num_test_dropped = _write_frames(
            folder / "frames.tmp", parts, results, split_episodes, variables_all, kept_variables
        )
        counts = {
            name: {
                "episodes": int(steps_table.loc[steps_table.split == name, "episode"].nunique()),
                "frames": int((steps_table.split == name).sum()),
            }
            for name in split_episodes
        }
        if any(c["frames"] == 0 for c in counts.values()):
            raise too_few()
        meta = {
            "game": ale_name,
            "annotation_set": annotation_set,
            "protocol": get_protocol(protocol).as_dict(),
            "purpose": purpose,
            "seed": seed,
            "steps": steps,
            "num_envs": num_envs,
            "collect_mode": collect_mode,
            "random_actions": random_actions,
            **({"agent": _agent_meta(agent_checkpoint, agent_random_prob)} if collect_mode == "agent" else {}),
            "min_episode_length": min_episode_length,
            "entropy_threshold": entropy_threshold,
            "splits": dict(splits_fractions),
            "counts": counts,
            "variables": kept_variables,
            "dropped_variables": {
                v: round(float(e), 6) for v, e in zip(variables_all, entropies, strict=True) if v not in kept_variables
            },
            "label_entropy": {v: round(float(e), 6) for v, e in zip(variables_all, entropies, strict=True)},
            "collected": {
                "episodes": len(records),
                "frames": steps,
                "short_episodes_dropped": num_short,
                "duplicate_test_frames_removed": num_removed,
                "test_episodes_dropped_after_dedup": num_test_dropped,
            },
        }
        episodes.write_store(folder, folder / "frames.tmp", chunk_frames, chunk_bytes, steps_table, meta)
        shutil.rmtree(parts)
    return episodes.load(out_dir)


@dataclass(frozen=True)
class _EpisodeRecord:
    """Where one collected episode lies: its rows in its environment's arrays and its chunks' bytes."""

    rank: int  # the environment
    env_episode: int  # the episode's number in that environment
    rows: np.ndarray  # (T,) rows of the environment's result arrays
    chunk_frames: np.ndarray  # frames per compressed chunk
    chunk_bytes: np.ndarray  # bytes per compressed chunk
    byte_range: tuple[int, int]  # the chunks' span in the environment's part file

    def field(self, results: list[dict], key: str) -> np.ndarray:
        return results[self.rank][key][self.rows]


def _episode_records(results: list[dict]) -> list[_EpisodeRecord]:
    """One record per collected episode, in (environment, episode) order; chunks never span episodes."""
    records = []
    for r in results:
        chunk_starts = np.r_[0, np.cumsum(r["chunk_frames"])]
        byte_starts = np.r_[0, np.cumsum(r["chunk_bytes"])]
        chunk_episode = r["episode"][chunk_starts[:-1]]
        for ep in np.unique(r["episode"]):
            chunks = np.flatnonzero(chunk_episode == ep)
            records.append(
                _EpisodeRecord(
                    r["rank"],
                    int(ep),
                    np.flatnonzero(r["episode"] == ep),
                    r["chunk_frames"][chunks],
                    r["chunk_bytes"][chunks],
                    (int(byte_starts[chunks[0]]), int(byte_starts[chunks[-1] + 1])),
                )
            )
    return records


def _write_frames(
    frames_path: Path,
    parts: Path,
    results: list[dict],
    split_episodes: dict[str, list[_EpisodeRecord]],
    variables: tuple[str, ...],
    kept_variables: list[str],
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, int, int]:
    """Copy the split episodes' compressed chunks into one file, split by split, without recompressing.

    Test frames equal to a train or val frame are left out of the table (their bytes stay in their
    chunk); a test episode left with one frame or none is dropped. Returns (steps table, frames per
    chunk, bytes per chunk, number of test frames removed (a dropped episode's lone frame included),
    number of test episodes dropped).
    """
    seen = splits.hash_set(
        np.concatenate(
            [rec.field(results, "hashes") for name, recs in split_episodes.items() if name != "test" for rec in recs]
        )
    )
    test_keeps, num_removed, num_dropped = splits.dedupe_test_episodes(
        [rec.field(results, "hashes") for rec in split_episodes.get("test", [])], seen
    )
    label_columns = [variables.index(v) for v in kept_variables]
    tables: list[pd.DataFrame] = []
    chunk_frames: list[int] = []
    chunk_bytes: list[int] = []
    next_frame = 0
    with open(frames_path, "wb") as out:
        for split_name, recs in split_episodes.items():
            for i, rec in enumerate(recs):
                keep = test_keeps[i] if split_name == "test" else np.ones(len(rec.rows), bool)
                if keep is None:  # a test episode left with one frame or none
                    continue
                with open(parts / f"env{rec.rank}.bin", "rb") as part:
                    part.seek(rec.byte_range[0])
                    out.write(part.read(rec.byte_range[1] - rec.byte_range[0]))
                chunk_frames += rec.chunk_frames.tolist()
                chunk_bytes += rec.chunk_bytes.tolist()
                t = np.flatnonzero(keep)
                table = pd.DataFrame(
                    {
                        "split": split_name,
                        "episode": len(tables),
                        "t": t,
                        "env": rec.rank,
                        "env_episode": rec.env_episode,
                        "frame": next_frame + t,
                        "action": rec.field(results, "actions")[keep],
                        "reward": rec.field(results, "rewards")[keep],
                    }
                )
                labels = rec.field(results, "labels")[keep][:, label_columns]
                tables.append(pd.concat([table, pd.DataFrame(labels, columns=kept_variables)], axis=1))
                next_frame += len(rec.rows)
    return (
        pd.concat(tables, ignore_index=True),
        np.asarray(chunk_frames),
        np.asarray(chunk_bytes),
        num_removed,
        num_dropped,
    )


def summary(store: episodes.EpisodeStore) -> dict:
    """Numbers worth tracking as DVC metrics: frames and episodes per split, variables kept and dropped."""
    meta = store.meta
    return {
        "game": meta["game"],
        **{f"{split}_{kind}": count[kind] for split, count in meta["counts"].items() for kind in count},
        "variables_kept": len(meta["variables"]),
        "variables_dropped": len(meta["dropped_variables"]),
        "duplicate_test_frames_removed": meta["collected"]["duplicate_test_frames_removed"],
        "test_episodes_dropped_after_dedup": meta["collected"]["test_episodes_dropped_after_dedup"],
        "short_episodes_dropped": meta["collected"]["short_episodes_dropped"],
    }
