"""The probe stage's entry point: probe one (game, method) of a stored dataset and write its scores.

`run` checks its settings before reading data, then probes an encoder file (features once, batched
probes; or the reference loop) or trains a baseline, and writes scores.csv and metrics.json
atomically. `probe_features`, `method_scores` and `write_scores` are its fast path's steps for features
computed elsewhere (atarirep.agents.probing). It does not read params (stages/probe.py) or build tables
(atarirep.reports.probes).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from atarirep import encoders, episodes, seeds
from atarirep import sampling as sampling_lib
from atarirep.games import game_key
from atarirep.plumbing import atomic, devices
from atarirep.plumbing.errors import UserError
from atarirep.probe.baselines import BASELINES, fit_supervised, majority_predictions, predict_supervised
from atarirep.probe.features import encode, is_ours
from atarirep.probe.linear import check_keep, fit_probes, predict
from atarirep.probe.reference import fit_probes_reference, predict_reference
from atarirep.scores import score, summarize


def check_settings(
    *,
    method: str | None,
    encoder_path=None,
    lr: float,
    batch_size: int,
    epochs: int,
    patience: int,
    sampling: str,
    keep: str,
    supervised_epochs: int | None = None,
) -> None:
    """UserError (one line) for settings that cannot work, before any data is read: the one check of the probe
    section's ranges (check_params runs it with `method=None`, for every method at once)."""
    sampling_lib.check(sampling, "params.yaml probe.sampling")
    check_keep(keep)
    if method in BASELINES and encoder_path is not None:
        raise UserError(
            f"method {method!r} trains its own model and takes no encoder file; drop the encoder path {encoder_path}"
        )
    if method is not None and method not in BASELINES and encoder_path is None:
        raise UserError(f"method {method!r} needs an encoder file to probe (or use one of {', '.join(BASELINES)})")
    counts = {"batch_size": batch_size, "epochs": epochs, "patience": patience, "supervised_epochs": supervised_epochs}
    for name, value in counts.items():
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise UserError(f"params.yaml probe.{name}={value!r} must be at least 1")
    if not lr > 0:
        raise UserError(f"params.yaml probe.lr={lr!r} must be positive, for example 0.0003")


def load_probe_data(episodes_dir: str | os.PathLike) -> tuple[str, dict[str, episodes.Episodes]]:
    """(game, {"train", "val", "test": Episodes}) of a stored dataset; UserError if a split is missing or empty."""
    store = episodes.load(episodes_dir)
    splits = {name: store.split(name) for name in ("train", "val", "test")}
    for name, split in splits.items():
        if len(split) == 0:
            raise UserError(
                f"episodes {episodes_dir} have an empty {name!r} split; collect more steps "
                "(collect.probe.steps) so every split gets episodes"
            )
    return store.game, splits


def check_same_game(encoder: nn.Module, encoder_path, game: str, episodes_dir) -> None:
    """UserError if the encoder file says it was trained on another game than the episodes'."""
    encoder_game = getattr(encoder, "meta", {}).get("game")
    if encoder_game is not None and game_key(encoder_game) != game_key(game):
        raise UserError(
            f"encoder {encoder_path} was trained on {encoder_game} but episodes {episodes_dir} are "
            f"{game}; probe an encoder of the same game (data/encoders/{game}/...)"
        )


def run(
    episodes_dir: str | os.PathLike,
    encoder_path: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    *,
    method: str,
    lr: float = 3e-4,
    batch_size: int = 64,
    epochs: int = 100,
    patience: int = 15,
    seed: int = 0,
    device: str = "auto",
    fast: bool = True,
    supervised_per_variable: bool = True,
    supervised_epochs: int | None = None,
    sampling: str = "reference",
    keep: str = "last",
    progress: bool = False,
) -> pd.DataFrame:
    """Probe one (game, method) and write out_dir/scores.csv then out_dir/metrics.json, atomically.

    method "majority" and "supervised" need no encoder (encoder_path None); any other method name
    probes the encoder file at `encoder_path` (an atarirep encoder or a torch.export program,
    `encoders.load_any`). `fast` uses the batched path; fast=False the one-probe-at-a-time loop (same
    results, far slower). The supervised baseline trains for at most `supervised_epochs` (default
    `epochs`), one encoder per variable if `supervised_per_variable`. `sampling` (atarirep.sampling) draws
    train, val and test samples; `keep` which weights are tested (atarirep.probe.linear.fit_probes).
    Returns the scores (one row per variable).
    scores.csv: game, method, variable, categories (";"-joined), f1, accuracy, num_epochs.
    metrics.json: game, method, `summarize`'s f1 and accuracy figures, num_variables, num_test_frames,
    num_test_samples (the rows scored: every test frame, or the reference's draw), sampling.
    """
    check_settings(
        method=method,
        encoder_path=encoder_path,
        lr=lr,
        batch_size=batch_size,
        patience=patience,
        epochs=supervised_epochs if method == "supervised" and supervised_epochs is not None else epochs,
        sampling=sampling,
        keep=keep,
    )
    devices.resolve(device)  # a bad device is refused before any data is read
    encoder = None
    if encoder_path is not None:  # check_settings: every method but the baselines has one
        encoder = encoders.load_any(encoder_path)
        if not is_ours(encoder):  # errors name the file, not a generic GraphModule
            # torch's stubs type a Module's attributes as its submodules and tensors; any value may be set
            encoder.meta = {**getattr(encoder, "meta", {}), "name": Path(encoder_path).name}  # type: ignore[assignment]
    game, data = load_probe_data(episodes_dir)
    train, val, test = data["train"], data["val"], data["test"]
    settings: dict[str, Any] = dict(
        lr=lr,
        batch_size=batch_size,
        epochs=epochs,
        patience=patience,
        seed=seed,
        device=device,
        sampling=sampling,
        keep=keep,
    )
    bounds: dict[str, Any] = dict(train_bounds=train.episode_bounds(), val_bounds=val.episode_bounds())
    if method == "majority":
        predictions = majority_predictions(train.labels, len(test))
        num_epochs = np.zeros(len(train.variables), int)
    elif method == "supervised":
        settings["epochs"] = epochs if supervised_epochs is None else supervised_epochs
        model = fit_supervised(
            lambda: encoders.build("benchmark"),
            train.frames,
            train.labels,
            val.frames,
            val.labels,
            per_variable=supervised_per_variable,
            progress=progress,
            **settings,
            **bounds,
        )
        predictions, num_epochs = predict_supervised(model, test.frames), model.num_epochs
    else:
        assert encoder is not None  # check_settings: a method not in BASELINES has an encoder
        check_same_game(encoder, encoder_path, game, episodes_dir)
        if fast:
            features = {
                name: encode(encoder, split.frames, device=device, progress=progress, what=f"{name} frames")
                for name, split in data.items()
            }
            predictions, num_epochs = probe_features(features, data, progress=progress, **settings)
        else:
            encode(encoder, test.frames[:1], device=device)  # the same checks as the fast path, on one frame
            probes = fit_probes_reference(
                train.frames, train.labels, val.frames, val.labels, encoder=encoder, **settings, **bounds
            )
            predictions = predict_reference(probes, test.frames, encoder=encoder, device=device)
            num_epochs = np.full(len(train.variables), -1)  # not tracked by the reference loop
    rows = scored_test_rows(test.episode_bounds(), sampling=sampling, batch_size=batch_size, seed=seed)
    scores = method_scores(predictions, test, num_epochs, game=game, method=method, rows=rows)
    write_scores(out_dir, scores, num_test_frames=len(test), num_test_samples=len(rows), sampling=sampling)
    return scores


def scored_test_rows(test_bounds: np.ndarray, *, sampling: str, batch_size: int, seed: int) -> np.ndarray:
    """The test rows scored, given the test split's episode bounds: every frame once (every_frame), or AtariARI's
    draw of one sample per test frame, episodes with replacement, whole batches (reference), from a seed stream
    of its own."""
    return sampling_lib.evaluation_rows(seeds.test_rows(seed), test_bounds, sampling, batch_size)


def probe_features(
    features: dict,
    data: dict[str, episodes.Episodes],
    *,
    lr: float,
    batch_size: int,
    epochs: int,
    patience: int,
    seed: int,
    device: str,
    sampling: str = "reference",
    keep: str = "last",
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """The fast path on features computed beforehand (any encoder): batched linear probes trained on
    features["train"] with early stop on features["val"] (each (N, F) for that split of `data`, whose episodes
    give the samples); returns their (N_test, V) predictions on every row of features["test"] and the (V,)
    epochs each probe trained."""
    probes = fit_probes(
        features["train"],
        data["train"].labels,
        features["val"],
        data["val"].labels,
        lr=lr,
        batch_size=batch_size,
        epochs=epochs,
        patience=patience,
        seed=seed,
        device=device,
        sampling=sampling,
        keep=keep,
        train_bounds=data["train"].episode_bounds(),
        val_bounds=data["val"].episode_bounds(),
        progress=progress,
    )
    return predict(probes, features["test"]), probes.num_epochs


def method_scores(
    predictions, test: episodes.Episodes, num_epochs, *, game: str, method: str, rows: np.ndarray | None = None
) -> pd.DataFrame:
    """The rows of scores.csv (categories as tuples): game, method, variable, categories, f1, accuracy, num_epochs.

    predictions (N_test, V) of every test frame; `rows` the test rows scored (`scored_test_rows`; None: all)."""
    labels = test.labels if rows is None else test.labels[rows]
    scores = score(np.asarray(predictions) if rows is None else np.asarray(predictions)[rows], labels, test.variables)
    scores.insert(0, "method", method)
    scores.insert(0, "game", game)
    scores["num_epochs"] = np.asarray(num_epochs, int)
    return scores


def write_scores(
    out_dir: str | os.PathLike,
    scores: pd.DataFrame,
    *,
    num_test_frames: int,
    num_test_samples: int | None = None,
    sampling: str | None = None,
) -> None:
    """Write `method_scores` as out_dir/scores.csv, then out_dir/metrics.json (game, method, `summarize`,
    num_test_frames, num_test_samples and sampling when given), each atomically: the probe stage's output for
    one (game, method)."""
    game, method = scores["game"].iloc[0], scores["method"].iloc[0]
    metrics = {"game": game, "method": method, **summarize(scores), "num_test_frames": int(num_test_frames)}
    if num_test_samples is not None:
        metrics["num_test_samples"] = int(num_test_samples)
    if sampling is not None:
        metrics["sampling"] = sampling
    out_dir = Path(out_dir)
    table = scores.assign(categories=scores["categories"].map(";".join))
    atomic.write_bytes(out_dir / "scores.csv", table.to_csv(index=False, lineterminator="\n").encode())
    atomic.write_json(out_dir / "metrics.json", metrics)  # last: a folder with metrics.json is complete
