"""Benchmark: probing one game's variables with the fast path against a reference-style loop.

Same collected frames, same encoder, same settings, same process. The fast path encodes every frame
once and trains all probes as one batched layer (atarirep.probe.linear); the reference loop
(atarirep.probe.reference, AtariARI's structure) trains one probe per variable and re-encodes each
batch for every probe. Prints one JSON object: wall times, speedup, mean test F1 of each.

    python bench/bench_probe.py [--game Breakout] [--steps 1200] [--epochs 10] [--threads 1]
                                [--sampling reference|every_frame] [--keep last|best] [--json out.json]

"encode_frames_per_s" times `probe.encode` alone on every frame, for the benchmark encoder (atarirep's own:
channels-last) and for the same weights in a user's module that flattens with `.view` (channels-last
fails on its first batch, so it runs NCHW): the cost of the plain-layout fall-back.

The encoder is a freshly initialised benchmark encoder (the random-CNN baseline): the cost does not
depend on its weights. The speedup grows with epochs and variables, roughly
V * (epochs * (N_train + N_val) + N_test) / N_all; the defaults keep the reference loop near a
minute on two CPU cores.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from report import finish

from atarirep import collection, encoders, episodes, probe, scores
from atarirep.plumbing import devices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--game", default="Breakout")
    parser.add_argument("--steps", type=int, default=1200, help="agent steps collected (split 70/10/20)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--patience", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadiest on a shared box)")
    parser.add_argument("--sampling", default="reference", choices=["reference", "every_frame"])
    parser.add_argument("--keep", default="last", choices=["last", "best"])
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the JSON here (bench/results/NAME.json)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = devices.resolve(args.device)  # checked once; the library takes the param's spelling
    settings = dict(
        lr=args.lr,
        batch_size=args.batch_size,
        epochs=args.epochs,
        patience=args.patience,
        seed=args.seed,
        device=args.device,
        sampling=args.sampling,
        keep=args.keep,
    )

    with tempfile.TemporaryDirectory(prefix="bench-probe-") as tmp:
        folder = Path(tmp) / "episodes"
        collection.collect(
            args.game,
            folder,
            steps=args.steps,
            num_envs=2,
            min_episode_length=16,
            seed=args.seed,
            splits_fractions={"train": 0.7, "val": 0.1, "test": 0.2},
        )
        data = episodes.load_splits(folder)
        frames = {name: np.asarray(split.frames) for name, split in data.items()}  # both paths start in memory
    labels = {name: split.labels for name, split in data.items()}
    variables = data["test"].variables
    torch.manual_seed(args.seed)
    encoder = encoders.build("benchmark")
    encoded = [0]  # frames through the encoder: the cost the fast path saves, independent of machine load
    encoder.register_forward_hook(lambda module, inputs, output: encoded.__setitem__(0, encoded[0] + len(output)))

    bounds = {f"{name}_bounds": data[name].episode_bounds() for name in ("train", "val")}

    def fast_path() -> np.ndarray:
        features = {name: probe.encode(encoder, x, device=args.device) for name, x in frames.items()}
        probes = probe.fit_probes(
            features["train"], labels["train"], features["val"], labels["val"], **settings, **bounds
        )
        return probe.predict(probes, features["test"])

    def reference_loop() -> np.ndarray:
        probes = probe.fit_probes_reference(
            frames["train"], labels["train"], frames["val"], labels["val"], encoder=encoder, **settings, **bounds
        )
        return probe.predict_reference(probes, frames["test"], encoder=encoder, device=args.device)

    # The fast path is timed before and twice after the reference loop and its median kept, so that a
    # burst of load from other jobs on a shared machine does not decide the ratio.
    fast_runs = []
    start = time.perf_counter()
    fast_predictions = fast_path()
    fast_runs.append(time.perf_counter() - start)
    fast_encoded, encoded[0] = encoded[0], 0
    start = time.perf_counter()
    reference_predictions = reference_loop()
    reference_seconds = time.perf_counter() - start
    reference_encoded = encoded[0]
    for _ in range(2):
        start = time.perf_counter()
        assert np.array_equal(fast_path(), fast_predictions)  # same seed, same probes
        fast_runs.append(time.perf_counter() - start)
    fast_seconds = float(np.median(fast_runs))

    encode_rates = encode_frames_per_s(encoder, np.concatenate(list(frames.values())), args.device)
    fast_f1 = scores.score(fast_predictions, labels["test"], variables)["f1"].to_numpy()
    reference_f1 = scores.score(reference_predictions, labels["test"], variables)["f1"].to_numpy()
    result = {
        "game": args.game,
        "num_variables": len(variables),
        "num_frames": {name: len(x) for name, x in frames.items()},
        "epochs": args.epochs,
        "settings": {
            "lr": args.lr,
            "batch_size": args.batch_size,
            "patience": args.patience,
            "seed": args.seed,
        },
        "device": str(device),
        "threads": args.threads,
        "fast_seconds": round(fast_seconds, 2),
        "fast_seconds_runs": [round(t, 2) for t in fast_runs],
        "reference_seconds": round(reference_seconds, 2),
        "speedup": round(reference_seconds / fast_seconds, 1),
        "frames_encoded_fast": fast_encoded,
        "frames_encoded_reference": reference_encoded,
        "mean_f1_fast": round(float(fast_f1.mean()), 4),
        "mean_f1_reference": round(float(reference_f1.mean()), 4),
        "max_abs_f1_difference": round(float(np.abs(fast_f1 - reference_f1).max()), 4),
        "prediction_agreement": round(float((fast_predictions == reference_predictions).mean()), 4),
        "sampling": args.sampling,
        "keep": args.keep,
        "encode_frames_per_s": encode_rates,
    }
    finish(result, args.json)


class ViewFlattened(torch.nn.Module):
    """The benchmark encoder's layers as a user writes them: `.view` to flatten (fails on channels-last)."""

    def __init__(self, encoder: torch.nn.Module):
        super().__init__()
        self.convs = torch.nn.Sequential(*encoder.local_layers, *encoder.global_layers[:2])
        self.linear = encoder.global_layers[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.convs(x)
        return self.linear(x.view(x.size(0), -1))


def encode_frames_per_s(encoder: torch.nn.Module, frames: np.ndarray, device: str, rounds: int = 3) -> dict:
    """Frames/s of probe.encode for `encoder` and its ViewFlattened twin (same weights), best of `rounds`,
    alternating; the twin's features are checked equal to the encoder's (float rounding aside)."""
    user = ViewFlattened(copy.deepcopy(encoder))
    torch.testing.assert_close(
        probe.encode(user, frames[:64], device=device),
        probe.encode(encoder, frames[:64], device=device),
        rtol=1e-4,
        atol=1e-4,
    )
    best = {"atarirep_encoder": 0.0, "user_view_encoder": 0.0}
    for _ in range(rounds):
        for name, module in (("atarirep_encoder", encoder), ("user_view_encoder", user)):
            start = time.perf_counter()
            probe.encode(module, frames, device=device)
            best[name] = max(best[name], len(frames) / (time.perf_counter() - start))
    return {name: round(rate, 1) for name, rate in best.items()}


if __name__ == "__main__":
    main()
