"""ST-DIM pretraining throughput and memory: atarirep's loop vs a straightforward AtariARI-style loop, same run.

Prints one JSON object. Every loop trains the same architecture with the same loss, batch size and
optimizer on the same freshly collected Breakout frames; samples/s counts (x_t, x_{t+1}) pairs.

  reference          AtariARI's InfoNCESpatioTemporalTrainer done plainly: per-sample Python batch
                     building from per-episode arrays, float conversion of each batch, two encoder
                     passes, the two InfoNCE terms as loops over the 11x8 positions, nn.Conv2d, NCHW.
  atarirep_resident  atarirep.pretraining.fit with `stdim`, frames decompressed up front (loader="resident"):
                     one encoder pass over both frames, batched InfoNCE, channels-last convs.
  atarirep_streamed  the same with the frames held compressed and decompressed per batch by a
                     background thread (loader="streamed", the default for stored episodes on CPU).
  encoder_only       forward + backward of the encoder alone on the 2B frames of a batch, laid out as
                     atarirep lays them out (no loss, data or optimizer): the limit any loop can approach.
Each is measured at 1 and 2 torch threads (torch.set_num_threads; 2 is what a user gets by default on a
2-core machine), round-robin, best of the rounds. "speedup" = atarirep_streamed / reference per thread count.

With CUDA present the same variants run there too (bf16 autocast, frames resident on the GPU, plus the
streamed loader), under "cuda"; otherwise "cuda" says it was not available.

Peak memory (--rss, on by default): the peak RSS of a fresh process that runs `pretraining.fit` for one ST-DIM
epoch on a 100k-step store, streamed and resident. The store is made synthetically in the store's own
format: the collected Breakout episodes repeated (chunk bytes copied, episodes renumbered) to 100k frames,
80/20 train/val, so frames compress as real frames do. To keep the run short the train epoch is cut to
--rss-steps steps (the streamed working set is a few batches, so a longer epoch does not grow it; the
validation pass runs over its full fixed plan); "rss_epoch_steps" says how many of the epoch's steps ran.

Usage: python bench/bench_pretrain.py [--steps 6] [--batch-size 64] [--rounds 2] [--no-rss] [--json out.json]
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from report import finish
from torch.nn import functional as F

from atarirep import encoders, episodes, pretraining
from atarirep.collection import collect
from atarirep.plumbing import devices

THREADS = (1, 2)


# -- the reference loop ------------------------------------------------------------------------------
def reference_step(encoder, classifier1, classifier2, optimizer, episode_list, batch_size, rng, device) -> None:
    """One step of AtariARI's ST-DIM loop, written as the reference writes it (without its wrap-around)."""
    x_t, x_prev = [], []
    for e in rng.integers(0, len(episode_list), batch_size):
        episode = episode_list[e]
        t = int(rng.integers(1, len(episode)))
        x_t.append(torch.from_numpy(episode[t]))
        x_prev.append(torch.from_numpy(episode[t - 1]))
    x_t = torch.stack(x_t).to(device).float() / 255.0
    x_prev = torch.stack(x_prev).to(device).float() / 255.0
    f_t, f_t_local = encoder.forward_with_local(x_t)
    _, f_prev_local = encoder.forward_with_local(x_prev)
    f_t_local, f_prev_local = f_t_local.permute(0, 2, 3, 1), f_prev_local.permute(0, 2, 3, 1)
    sy, sx, n = f_prev_local.size(1), f_prev_local.size(2), f_t.size(0)
    loss1 = 0.0
    for y in range(sy):
        for x in range(sx):
            predictions = classifier1(f_t)
            logits = torch.matmul(predictions, f_prev_local[:, y, x, :].t())
            loss1 = loss1 + F.cross_entropy(logits, torch.arange(n, device=device))
    loss2 = 0.0
    for y in range(sy):
        for x in range(sx):
            predictions = classifier2(f_t_local[:, y, x, :])
            logits = torch.matmul(predictions, f_prev_local[:, y, x, :].t())
            loss2 = loss2 + F.cross_entropy(logits, torch.arange(n, device=device))
    loss = loss1 / (sx * sy) + loss2 / (sx * sy)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_reference(train, steps: int, batch_size: int, device: torch.device) -> float:
    """Samples/s of `steps` reference steps after one warm-up step (plain first conv, NCHW, float32)."""
    frames = np.asarray(train.frames)
    bounds = train.episode_bounds()
    episode_list = [frames[s:e] for s, e in zip(bounds[:-1], bounds[1:], strict=True) if e - s >= 2]
    method = pretraining.build_method("stdim", seed=0).to(device)
    method.encoder.local_layers[0].use_space_to_depth = False
    optimizer = torch.optim.Adam(method.parameters(), lr=3e-4, eps=1e-5)
    rng = np.random.default_rng(0)
    args = (method.encoder, method.global_local, method.local_local, optimizer, episode_list, batch_size, rng, device)
    reference_step(*args)
    _synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        reference_step(*args)
    _synchronize(device)
    return steps * batch_size / (time.perf_counter() - started)


# -- atarirep ----------------------------------------------------------------------------------------
def run_atarirep(train, val, batch_size: int, loader: str, device: str, epochs: int = 1) -> float:
    """Samples/s of the last epoch of atarirep.pretraining.fit (train phase, as its log reports it)."""
    method = pretraining.build_method("stdim", seed=0)
    precision = "bf16" if device == "cuda" else "fp32"  # the CUDA section measures bf16 autocast
    config = pretraining.TrainConfig(epochs=epochs, batch_size=batch_size, seed=0, device=device, precision=precision)
    result = pretraining.fit(method, train, val, config, loader=loader)
    return result.history[-1]["samples_per_s"]


def run_encoder_only(steps: int, batch_size: int, device: torch.device) -> float:
    """Samples/s (pairs) of forward + backward of the encoder alone on 2B frames, as atarirep runs it."""
    memory_format = devices.memory_format(device)
    encoder = encoders.BenchmarkEncoder().to(device, memory_format=memory_format)
    frames = torch.rand(2 * batch_size, 1, 210, 160, device=device).contiguous(memory_format=memory_format)

    def step():
        with devices.autocast(device, "bf16"):  # bf16 on CUDA only; a no-op on CPU
            global_features, local_features = encoder.forward_with_local(frames)
            (global_features.float().sum() + local_features.float().sum()).backward()

    step()
    _synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    _synchronize(device)
    return steps * batch_size / (time.perf_counter() - started)


def measure(variants: dict, rounds: int, budget_s: float) -> dict[str, list[float]]:
    """Round-robin over the variants, `rounds` times (no new round after budget_s): on a shared machine
    another process's load hits whichever variant runs at that moment, and the best round is the least disturbed."""
    found: dict[str, list[float]] = {name: [] for name in variants}
    started = time.perf_counter()
    for round_index in range(rounds):
        if round_index and time.perf_counter() - started > budget_s:
            break
        for name, run in variants.items():
            found[name].append(round(run(), 1))
    return found


# -- data ----------------------------------------------------------------------------------------------
def subset(split: episodes.Episodes, num_frames: int) -> episodes.Episodes:
    """The whole episodes of `split` that fit in its first `num_frames` frames (frames loaded in memory)."""
    bounds = split.episode_bounds()
    end = int(bounds[bounds <= num_frames][-1])
    return episodes.Episodes(
        np.asarray(split.frames[:end]), split.labels[:end], split.variables, split.episode_index[:end]
    )


def repeat_store(source: Path, target: Path, num_frames: int) -> None:
    """A store in atarirep's format holding `source`'s episodes repeated until it has >= num_frames frames.

    frames.bin is `source`'s bytes repeated (chunks never span episodes, so each copy is whole chunks);
    each copy's episodes get new numbers and keep their split.
    """
    meta = json.loads((source / "meta.json").read_text())
    steps = pd.read_csv(source / "steps.csv.gz")
    copies = -(-num_frames // len(steps))
    num_episodes, num_stored = int(steps["episode"].max()) + 1, sum(meta["chunks"]["num_frames"])
    parts = []
    for k in range(copies):
        part = steps.copy()
        part["episode"] += k * num_episodes
        part["frame"] += k * num_stored
        parts.append(part)
    steps = pd.concat(parts, ignore_index=True)  # each split's episodes stay contiguous, copy after copy
    target.mkdir(parents=True)
    raw = (source / "frames.bin").read_bytes()
    with open(target / "frames.bin", "wb") as f:
        for _ in range(copies):
            f.write(raw)
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, filename="") as gz:
        gz.write(steps.to_csv(index=False, lineterminator="\n").encode())
    (target / "steps.csv.gz").write_bytes(buffer.getvalue())
    meta["counts"] = {
        name: {"episodes": int(group["episode"].nunique()), "frames": len(group)}
        for name, group in steps.groupby("split")
    }
    meta["chunks"] = {key: values * copies for key, values in meta["chunks"].items()}
    (target / "meta.json").write_text(json.dumps(meta))


def peak_rss_child(folder: str, loader: str, max_steps: int, batch_size: int) -> None:
    """In a fresh process: one ST-DIM fit epoch on `folder`'s train/val, the train epoch cut to max_steps; prints
    {"peak_rss_mb", "epoch_steps", "samples_per_s"}."""
    cut = {}
    plan_of = pretraining.epoch_plan

    def cut_plan(windows_, rng, *args, **kwargs):
        plan = plan_of(windows_, rng, *args, **kwargs)
        if len(windows_) == cut["train_windows"]:
            cut["epoch_steps"] = len(plan)
            return plan[:max_steps]
        return plan

    pretraining.epoch_plan = cut_plan
    store = episodes.load(folder)
    train, val = store.split("train"), store.split("val")
    cut["train_windows"] = len(pretraining.windows(train, 2))
    method = pretraining.build_method("stdim", seed=0)
    config = pretraining.TrainConfig(epochs=1, batch_size=batch_size, seed=0, device="cpu")
    result = pretraining.fit(method, train, val, config, loader=loader)
    print(
        json.dumps(
            {
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                "epoch_steps": cut["epoch_steps"],
                "train_frames": len(train),
                "val_frames": len(val),
                "samples_per_s": round(result.history[-1]["samples_per_s"], 1),
            }
        )
    )


def measure_peak_rss(source: Path, tmp: Path, args) -> dict:
    folder = tmp / "store_100k"
    repeat_store(source, folder, 100_000)
    found = {
        "rss_store_frames": sum(c["frames"] for c in json.loads((folder / "meta.json").read_text())["counts"].values())
    }
    for loader in ("streamed", "resident"):
        child = subprocess.run(
            [sys.executable, __file__, "--rss-child", str(folder), loader, str(args.rss_steps), str(args.batch_size)],
            capture_output=True,
            text=True,
            check=True,
        )
        found[f"rss_{loader}"] = json.loads(child.stdout.strip().splitlines()[-1])
    found["rss_epoch_steps"] = f"{args.rss_steps} of {found['rss_streamed']['epoch_steps']}"
    found["peak_rss_mb"] = {loader: found.pop(f"rss_{loader}")["peak_rss_mb"] for loader in ("streamed", "resident")}
    found["peak_rss_goal_mb"] = 1536
    return found


# -- main ----------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="training steps per measurement")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="round-robin rounds; the best of them is reported")
    parser.add_argument("--budget-s", type=float, default=240.0, help="start no new round after this many seconds")
    parser.add_argument("--no-rss", dest="rss", action="store_false", help="skip the 100k-step peak-RSS runs")
    parser.add_argument("--rss-steps", type=int, default=20, help="train steps of the cut 100k-step epoch")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the JSON here (bench/results/NAME.json)")
    parser.add_argument("--rss-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        folder, loader, max_steps, batch_size = args.rss_child
        return peak_rss_child(folder, loader, int(max_steps), int(batch_size))

    default_threads = torch.get_num_threads()
    report: dict = {
        "benchmark": "stdim_pretrain",
        "batch_size": args.batch_size,
        "reference_steps": args.steps,
        "default_torch_threads": default_threads,
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "breakout"
        collect(
            "Breakout",
            folder,
            steps=2 * args.steps * args.batch_size + 400,
            splits_fractions={"train": 0.8, "val": 0.2},
            num_envs=4,
            min_episode_length=8,
            seed=0,
        )
        splits = episodes.load_splits(folder)
        # train: enough pairs for `steps` steps per epoch; val: one batch or two
        train = subset(splits["train"], (args.steps + 1) * args.batch_size + 60)
        val = subset(splits["val"], 2 * args.batch_size)
        report["atarirep_steps_per_epoch"] = len(pretraining.windows(train, 2)) // args.batch_size
        cpu = torch.device("cpu")
        streamed_train, streamed_val = (episodes.CompressedFrames(s.frames) for s in (train, val))
        as_stored = {
            name: episodes.Episodes(f, s.labels, s.variables, s.episode_index)
            for name, f, s in (("train", streamed_train, train), ("val", streamed_val, val))
        }

        for threads in THREADS:
            torch.set_num_threads(threads)
            rounds = measure(
                {
                    "reference": lambda: run_reference(train, args.steps, args.batch_size, cpu),
                    "atarirep_resident": lambda: run_atarirep(train, val, args.batch_size, "resident", "cpu"),
                    "atarirep_streamed": lambda: run_atarirep(
                        as_stored["train"], as_stored["val"], args.batch_size, "streamed", "cpu"
                    ),
                    "encoder_only": lambda: run_encoder_only(args.steps, args.batch_size, cpu),
                },
                args.rounds,
                args.budget_s,
            )
            best = {name: max(values) for name, values in rounds.items()}
            report[f"cpu_threads_{threads}"] = {
                "samples_per_s_best": best,
                "samples_per_s_rounds": rounds,
                "speedup": round(best["atarirep_streamed"] / best["reference"], 2),
                "speedup_resident": round(best["atarirep_resident"] / best["reference"], 2),
                "streamed_over_resident": round(best["atarirep_streamed"] / best["atarirep_resident"], 2),
                "atarirep_share_of_encoder_only": round(best["atarirep_streamed"] / best["encoder_only"], 2),
            }
        torch.set_num_threads(default_threads)
        report["speedup_goal"] = 1.3

        if torch.cuda.is_available():
            cuda = torch.device("cuda")
            big_train = subset(splits["train"], len(splits["train"].frames))
            report["cuda"] = {
                "samples_per_s": {
                    "reference_fp32": round(run_reference(big_train, 5 * args.steps, args.batch_size, cuda), 1),
                    "atarirep_resident_bf16": round(
                        run_atarirep(big_train, val, args.batch_size, "auto", "cuda", epochs=2), 1
                    ),
                    "atarirep_streamed_bf16": round(
                        run_atarirep(big_train, val, args.batch_size, "streamed", "cuda", epochs=2), 1
                    ),
                    "encoder_only_bf16": round(run_encoder_only(5 * args.steps, args.batch_size, cuda), 1),
                },
                "note": "epoch 2 of fit (epoch 1 holds the warm-up)",
            }
        else:
            report["cuda"] = "not available (torch.cuda.is_available() is False); CPU figures only"

        if args.rss:
            report.update(measure_peak_rss(folder, Path(tmp), args))
    report["seconds"] = round(time.perf_counter() - started, 1)
    finish(report, args.json)


if __name__ == "__main__":
    main()
