"""Collecting labelled episodes: several environments stepped by policies across worker processes,
written as one stored dataset (atarirep.episodes) with the benchmark's dataset rules applied.

Each environment has its own seed stream and step budget, so the output for a seed is byte-identical
whatever the number of workers. Frames are compressed as they are produced (memory stays bounded) and
written atomically: a killed collection leaves no folder that looks finished.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing as mp
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from atarirep import annotations as ram_annotations
from atarirep import episodes, policies, seeds, splits
from atarirep.envs import LabelledAtariEnv, resolve_game
from atarirep.games import get_protocol
from atarirep.plumbing import atomic
from atarirep.plumbing.errors import UserError


def _run_env(job: dict, report: Callable[[int], object]) -> dict:
    """Step one environment for its budget of frames; frames go compressed to job['part_path']."""
    env = LabelledAtariEnv(job["game"], job["protocol"], job["annotation_set"])
    ale_seed, env_rng, policy_rng = seeds.collection_env(job["seed"], job["stream"], job["rank"])
    policy = policies.make_policy(
        job["collect_mode"],
        int(env.action_space.n),
        policy_rng,
        random_actions=job["random_actions"],
        agent_checkpoint=job["agent_checkpoint"],
        agent_random_prob=job["agent_random_prob"],
    )
    budget = job["budget"]
    writer = episodes.PartWriter(Path(job["part_path"]), budget, len(env.annotation.variables))
    hashes = np.empty((budget, 16), np.uint8)  # for removing test frames equal to train/val frames
    obs, _ = env.reset(seed=ale_seed)
    env.np_random = env_rng  # reset noops draw from this environment's own stream
    action, reward, is_first, ended = -1, 0.0, True, False  # what led to `obs`: nothing on a first frame
    for i in range(budget):
        writer.add(obs, env.ram_labels(), action, reward)
        hashes[i] = np.frombuffer(hashlib.blake2b(obs, digest_size=16).digest(), np.uint8)
        if i % 256 == 255:
            report(256)
        if i == budget - 1:
            break
        if ended:  # the terminal frame is stored; the reset frame starts the next episode, with its own label
            writer.end_episode()
            action, reward, is_first, ended = -1, 0.0, True, False
            obs, _ = env.reset()
            continue
        action = policy.act(obs, is_first, float(np.float32(reward)))  # the reward as stored
        obs, reward, terminated, truncated, _ = env.step(action)
        is_first, ended = False, terminated or truncated
    part = writer.close()
    env.close()
    report(budget % 256)
    return {"rank": job["rank"], "part": part, "hashes": hashes}


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
    if purpose not in seeds.DATASET_STREAMS:
        raise UserError(f"purpose {purpose!r} is unknown; use one of {', '.join(seeds.DATASET_STREAMS)}")
    if min_episode_length < 0 or entropy_threshold < 0:
        raise UserError("min_episode_length and entropy_threshold must not be negative")
    policies.check_policy(collect_mode, random_actions, agent_checkpoint, agent_random_prob)
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

        records = [rec for r in results for rec in r["part"].episodes(r["rank"])]
        kept = [rec for rec in records if len(rec) > min_episode_length]
        num_short = len(records) - len(kept)

        def too_few() -> UserError:
            lengths = [len(rec) for rec in kept]
            return _too_few_episodes(lengths, num_short, splits_fractions, steps, num_envs, min_episode_length)

        if len(kept) < splits.min_episodes_for(splits_fractions):
            raise too_few()

        # Variables whose labels barely vary carry no signal for a probe (Breakout's block bytes).
        entropies = splits.label_entropy(np.concatenate([rec.part.labels[rec.rows] for rec in kept]))
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
        stored, num_removed, num_test_dropped = _dedupe_test(results, split_episodes)
        steps_table, chunk_frames, chunk_bytes = episodes.copy_episodes(
            folder / "frames.tmp", stored, variables_all, kept_variables
        )
        counts = episodes.split_counts(steps_table, split_episodes)
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


def _dedupe_test(
    results: list[dict], split_episodes: dict[str, list[episodes.PartEpisode]]
) -> tuple[dict[str, list[tuple[episodes.PartEpisode, np.ndarray]]], int, int]:
    """Per split, (episode, mask of the frames its table keeps): test frames equal to a train or val frame are
    left out (their bytes stay in their chunk) and a test episode left with one frame or none is dropped.
    Returns (them, number of test frames removed (a dropped episode's lone frame included), number of test
    episodes dropped)."""

    def hashes(rec: episodes.PartEpisode) -> np.ndarray:
        return results[rec.env]["hashes"][rec.rows]

    seen = splits.hash_set(
        np.concatenate([hashes(rec) for name, recs in split_episodes.items() if name != "test" for rec in recs])
    )
    test_keeps, num_removed, num_dropped = splits.dedupe_test_episodes(
        [hashes(rec) for rec in split_episodes.get("test", [])], seen
    )
    stored = {}
    for name, recs in split_episodes.items():
        keeps = test_keeps if name == "test" else [np.ones(len(rec), bool) for rec in recs]
        stored[name] = [(rec, keep) for rec, keep in zip(recs, keeps, strict=True) if keep is not None]
    return stored, num_removed, num_dropped


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


def stage_options(settings, purpose: str, agent_checkpoint: str | None) -> dict:
    """`collect`'s and `validate`'s keyword arguments for the `purpose` dataset under `settings` (the params'
    `collect` section)."""
    dataset = settings.dataset(purpose)
    return dict(
        steps=dataset.steps,
        splits_fractions=dataset.splits,
        purpose=purpose,
        num_envs=settings.num_envs,
        num_workers=settings.num_workers,
        annotation_set=settings.annotations,
        protocol=settings.protocol,
        collect_mode=settings.collect_mode,
        random_actions=settings.random_actions,
        min_episode_length=settings.min_episode_length,
        entropy_threshold=settings.entropy_threshold,
        agent_checkpoint=agent_checkpoint,
        agent_random_prob=settings.agent_random_prob,
    )


def collect_dataset(
    game: str, purpose: str, out_dir: str | os.PathLike, summary_path: str | os.PathLike, policy_dir, settings
) -> None:
    """The collect stage: the `purpose` dataset ("pretrain" or "probe") of `game` under `settings` (the params'
    `collect` section), acted by the policy collect_policy chose (<policy_dir>/policy.json, and model.gz in agent
    mode); `collect` checks every setting (`validate`) before any emulator runs. Writes the dataset at `out_dir`
    and its `summary` as JSON at `summary_path`."""
    policy_file = Path(policy_dir) / "policy.json"
    if not policy_file.is_file():
        raise UserError(f"{policy_file} is missing; run `dvc repro` (collect_policy makes it)")
    policy = json.loads(policy_file.read_text())
    if policy["collect_mode"] != settings.collect_mode:
        raise UserError(
            f"{policy_dir} was made for collect_mode {policy['collect_mode']}, params say "
            f"{settings.collect_mode}; run `dvc repro` (it remakes collect_policy first)"
        )
    agent_checkpoint = str(Path(policy_dir) / "model.gz") if settings.collect_mode == "agent" else None
    options = stage_options(settings, purpose, agent_checkpoint)
    store = collect(game, out_dir, seed=settings.seed, progress=True, **options)
    atomic.write_json(summary_path, summary(store))
