"""AtariARI's public names as thin adapters over atarirep, so existing user code keeps running.

`get_episodes` collects with atarirep.collection into a temporary folder and returns the reference's
in-memory layout. Departs from AtariARI: frames are uint8 tensors (the reference held float32 copies
of 0..255 values, 4x the memory); scale them by 1/255 when batching for a network.
`ProbeTrainer` takes that layout (per-episode lists) and probes with atarirep.probe.
(`AtariARIWrapper` lives with the environments, atarirep.envs.)
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from atarirep import collection
from atarirep import sampling as sampling_lib
from atarirep.episodes import Episodes
from atarirep.plumbing.errors import UserError
from atarirep.probe import (
    NUM_CLASSES,
    LinearProbes,
    SupervisedProbes,
    encode,
    fit_probes,
    fit_supervised,
    predict,
    predict_supervised,
)
from atarirep.probe.linear import check_keep
from atarirep.probe.stage import scored_test_rows
from atarirep.scores import score

TRAIN_MODES = ("train_encoder", "probe", "dry_run")
# AtariARI's summary_key_dict (benchmark/categorization.py): its key for each of our categories, in its order
ATARIARI_CATEGORY_KEYS = {
    "small_object_localization": "small_object_localization",
    "agent_localization": "agent_localization",
    "other_localization": "other_localization",
    "score_clock_lives_display": "score_clock_lives_display",
    "misc": "misc_keys",
}


def _per_episode(episodes: Episodes) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    frames = torch.from_numpy(np.asarray(episodes.frames))
    bounds = episodes.episode_bounds()
    frame_list = [frames[a:b] for a, b in pairwise(bounds)]
    labels = torch.from_numpy(episodes.labels.astype("int64"))
    label_list = [{name: labels[a:b, j] for j, name in enumerate(episodes.variables)} for a, b in pairwise(bounds)]
    return frame_list, label_list


def get_episodes(
    env_name: str,
    steps: int,
    seed: int = 42,
    num_processes: int = 1,
    num_frame_stack: int = 1,
    downsample: bool = False,
    color: bool = False,
    entropy_threshold: float = 0.6,
    collect_mode: str = "random_agent",
    train_mode: str = "probe",
    checkpoint_index: int = -1,
    min_episode_length: int = 64,
    *,
    num_workers: int = 1,
    annotation_set: str = "latest",
    random_actions: str = "nonzero",
    progress: bool = True,
):
    """AtariARI's get_episodes on today's gymnasium/ale-py.

    `steps` counts agent steps over all `num_processes` environments. Returns, as the reference does:
    train_mode="probe": tr_episodes, val_episodes, tr_labels, val_labels, test_episodes, test_labels
      (lists of per-episode (T, 1, 210, 160) uint8 tensors; per-episode {variable: (T,) int64 tensor});
    train_mode="train_encoder": tr_episodes, val_episodes (80/20);
    train_mode="dry_run": all episodes and their labels, unsplit.
    `num_workers` > 1 steps the environments in that many processes (same output); a script using it
    needs the `if __name__ == "__main__":` guard that multiprocessing's spawn requires.
    """
    if downsample or color or num_frame_stack != 1:
        raise UserError(
            "get_episodes supports the benchmark's full-size grayscale frames only "
            "(downsample=False, color=False, num_frame_stack=1): downsampling breaks the labels' meaning"
        )
    if train_mode not in TRAIN_MODES:
        raise UserError(f"train_mode {train_mode!r} is unknown; use one of {', '.join(TRAIN_MODES)}")
    if checkpoint_index != -1:
        raise UserError("checkpoint_index needs a trained agent; collect_mode='pretrained_ppo' is not available yet")
    fractions = {
        "train_encoder": {"train": 0.8, "val": 0.2},
        "probe": {"train": 0.7, "val": 0.1, "test": 0.2},
        "dry_run": {"train": 1.0},
    }[train_mode]
    with tempfile.TemporaryDirectory(prefix="atarirep-episodes-") as tmp:
        store = collection.collect(
            env_name,
            Path(tmp) / "episodes",
            steps=steps,
            splits_fractions=fractions,
            seed=seed,
            purpose="pretrain" if train_mode == "train_encoder" else "probe",
            num_envs=num_processes,
            num_workers=num_workers,
            annotation_set=annotation_set,
            collect_mode=collect_mode,
            random_actions=random_actions,
            min_episode_length=min_episode_length,
            entropy_threshold=entropy_threshold,
            progress=progress,
        )
        splits = {name: _per_episode(store.split(name)) for name in fractions}
    if train_mode == "train_encoder":
        return splits["train"][0], splits["val"][0]
    if train_mode == "dry_run":
        return splits["train"]
    (tr_eps, tr_labels), (val_eps, val_labels), (test_eps, test_labels) = (
        splits["train"],
        splits["val"],
        splits["test"],
    )
    return tr_eps, val_eps, tr_labels, val_labels, test_eps, test_labels


def _episode_bounds(episode_list) -> np.ndarray:
    """(E + 1,) int64 first row of each non-empty episode once stacked (`_stack_episodes`), then the total."""
    return np.r_[0, np.cumsum([len(e) for e in episode_list if len(e)])].astype(np.int64)


def _stack_episodes(episode_list, what: str) -> torch.Tensor:
    """Per-episode frames (each a (T, ...) tensor or a list of frame tensors) -> (N, ...) tensor."""
    parts = [
        torch.stack([torch.as_tensor(f) for f in e]) if isinstance(e, (list, tuple)) else torch.as_tensor(e)
        for e in episode_list
        if len(e)
    ]
    if not parts:
        raise UserError(f"{what} have no frames; collect more steps so every split has episodes")
    x = torch.cat(parts)
    if x.is_floating_point() and x.ndim == 4:  # AtariARI kept frames as float copies of 0..255
        if x.numel() and not (x.min() >= 0 and x.max() <= 255 and torch.equal(x, x.round())):
            raise UserError(
                f"{what} hold float frames that are not whole values in 0..255; pass the uint8 "
                "frames as collected (they are scaled by 1/255 once, when batched)"
            )
        x = x.to(torch.uint8)
    return x


def _episode_columns(episode, what: str) -> dict[str, np.ndarray]:
    """One episode's labels as {variable: (T,) int64}."""
    if isinstance(episode, dict):
        return {name: np.asarray(values, dtype=np.int64).reshape(-1) for name, values in episode.items()}
    names = tuple(episode[0]) if len(episode) else ()
    try:
        return {name: np.fromiter((int(step[name]) for step in episode), np.int64, len(episode)) for name in names}
    except KeyError as err:
        raise UserError(
            f"{what} name variable {err.args[0]!r} on some frames but not on others; pass one "
            "{variable: value} dict with the same variables for every frame"
        ) from None


def _labels_from_episodes(label_list, variables: Sequence[str] | None, what: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Per-episode labels -> ((N, V) int64, variables); `variables` None takes the first episode's.

    Each episode is a list of {variable: value} dicts, one per frame (AtariARI's get_episodes), or
    one {variable: (T,) sequence} dict (atarirep.compat.get_episodes).
    """
    episodes_columns = [_episode_columns(episode, what) for episode in label_list if len(episode)]
    if not episodes_columns:
        raise UserError(f"{what} are empty; collect more steps so every split has episodes")
    variables = tuple(episodes_columns[0]) if variables is None else tuple(variables)
    for columns in episodes_columns:
        missing = [v for v in variables if v not in columns]
        if missing:
            raise UserError(
                f"{what} lack variable {missing[0]!r} that the probes were trained on; pass labels "
                "of the same game and annotation set as the train labels"
            )
        if len({len(columns[v]) for v in variables}) > 1:
            raise UserError(
                f"{what} give different numbers of frames for different variables; "
                "pass one label per frame for every variable"
            )
    return np.concatenate([np.stack([c[v] for v in variables], axis=1) for c in episodes_columns]), variables


class ProbeTrainer:
    """AtariARI's ProbeTrainer (atariari/benchmark/probe.py), on atarirep.probe's batched probes.

        trainer = ProbeTrainer(encoder, representation_len=encoder.feature_size)
        trainer.train(tr_episodes, val_episodes, tr_labels, val_labels)
        acc, f1 = trainer.test(test_episodes, test_labels)

    Episodes are lists of per-episode uint8 frame tensors (T, 1, 210, 160); labels are per-episode
    lists of {variable: value} dicts (or per-episode {variable: (T,) tensor} dicts). With
    encoder=None the episodes hold (T, representation_len) feature vectors instead. `test` returns
    (accuracy, f1) dicts with AtariARI's keys in its order (probe.py postprocess_raw_metrics):
    "<variable>_acc" for each variable, "<key>_avg_acc" for each category that has a variable, keys
    small_object_localization, agent_localization, other_localization, score_clock_lives_display,
    misc_keys; then "overall_avg_acc", "across_categories_avg_acc"; the same with "_f1".
    `device`: "auto", "cpu", "cuda" or a torch.device (its type is used). `wandb` and `save_dir` are
    accepted for compatibility and unused. `sampling` and `keep` default to the reference's: batches, val
    and test drawn by episode with replacement, probes tested with their last weights
    (atarirep.probe.linear.fit_probes); the encoder is never altered (atarirep.probe.features).
    """

    def __init__(
        self,
        encoder: nn.Module | None = None,
        method_name: str = "my_method",
        wandb=None,
        patience: int = 15,
        num_classes: int = NUM_CLASSES,
        fully_supervised: bool = False,
        save_dir: str = ".models",
        device: str | torch.device = "auto",
        lr: float = 5e-4,
        epochs: int = 100,
        batch_size: int = 64,
        representation_len: int = 256,
        seed: int = 0,
        sampling: str = "reference",
        keep: str = "last",
    ):
        if fully_supervised and encoder is None:
            raise UserError("fully_supervised=True needs an encoder to copy and train; pass encoder=...")
        self.encoder = encoder
        self.method = method_name
        self.patience, self.num_classes, self.fully_supervised = patience, num_classes, fully_supervised
        self.device = device.type if isinstance(device, torch.device) else device  # atarirep.plumbing.devices' names
        self.lr, self.epochs, self.batch_size = lr, epochs, batch_size  # lr default as the reference class
        self.feature_size = representation_len
        self.seed = seed  # Departs from AtariARI: runs repeat, because the reference never seeded
        sampling_lib.check(sampling, "ProbeTrainer sampling")
        check_keep(keep)
        self.sampling, self.keep = sampling, keep
        self.variables: tuple[str, ...] = ()
        self._probes: LinearProbes | SupervisedProbes | None = None

    def _inputs(self, episode_list, what: str) -> torch.Tensor:
        x = _stack_episodes(episode_list, what)
        if self.fully_supervised:
            return x
        if self.encoder is None:
            # Departs from AtariARI: feature vectors are probed as given, because the reference
            # divided them by 255 as if they were pixels.
            if x.ndim != 2 or x.shape[1] != self.feature_size:
                raise UserError(
                    f"{what} hold {tuple(x.shape[1:])} vectors but representation_len="
                    f"{self.feature_size}; pass (T, representation_len) features or an encoder"
                )
            return x.float()
        return encode(self.encoder, x, device=self.device, feature_size=self.feature_size, what=what)

    def train(self, tr_eps, val_eps, tr_labels, val_labels) -> None:
        y, self.variables = _labels_from_episodes(tr_labels, None, "train labels")
        y_val, _ = _labels_from_episodes(val_labels, self.variables, "val labels")
        x, x_val = self._inputs(tr_eps, "train episodes"), self._inputs(val_eps, "val episodes")
        for name, inputs, labels in (("train", x, y), ("val", x_val, y_val)):
            if len(inputs) != len(labels):
                raise UserError(
                    f"{name} episodes have {len(inputs)} frames but {name} labels {len(labels)}; "
                    "pass the labels that came with the episodes"
                )
        settings: dict[str, Any] = dict(
            lr=self.lr,
            batch_size=self.batch_size,
            epochs=self.epochs,
            patience=self.patience,
            seed=self.seed,
            device=self.device,
            num_classes=self.num_classes,
            sampling=self.sampling,
            keep=self.keep,
            train_bounds=_episode_bounds(tr_eps),
            val_bounds=_episode_bounds(val_eps),
        )
        if self.fully_supervised:
            encoder = self.encoder
            assert encoder is not None  # __init__ refuses fully_supervised without an encoder
            self._probes = fit_supervised(
                lambda: copy.deepcopy(encoder), x, y, x_val, y_val, per_variable=True, **settings
            )
        else:
            self._probes = fit_probes(x, y, x_val, y_val, **settings)

    def test(self, test_episodes, test_label_dicts, epoch=None) -> tuple[dict[str, float], dict[str, float]]:
        if self._probes is None:
            raise UserError("ProbeTrainer.test called before train; call train(...) first")
        y, _ = _labels_from_episodes(test_label_dicts, self.variables, "test labels")
        x = self._inputs(test_episodes, "test episodes")
        if len(x) != len(y):
            raise UserError(
                f"test episodes have {len(x)} frames but test labels {len(y)}; "
                "pass the labels that came with the episodes"
            )
        if isinstance(self._probes, SupervisedProbes):
            predictions = predict_supervised(self._probes, x)
        else:
            predictions = predict(self._probes, x)
        rows = scored_test_rows(
            _episode_bounds(test_episodes), sampling=self.sampling, batch_size=self.batch_size, seed=self.seed
        )
        scores = score(predictions[rows], y[rows], self.variables)
        return _atariari_metrics(scores, "accuracy", "_acc"), _atariari_metrics(scores, "f1", "_f1")


def _atariari_metrics(scores, metric: str, suffix: str) -> dict[str, float]:
    """AtariARI's postprocess_raw_metrics of one metric of `scores` (atarirep.scores layout): same keys, same order."""
    per_variable = {v: float(value) for v, value in zip(scores["variable"], scores[metric], strict=True)}
    category_means = {}
    for category, key in ATARIARI_CATEGORY_KEYS.items():
        members = [
            per_variable[v]
            for v, categories in zip(scores["variable"], scores["categories"], strict=True)
            if category in categories
        ]
        if members:
            category_means[f"{key}_avg{suffix}"] = float(np.mean(members))
    return {
        **{f"{v}{suffix}": value for v, value in per_variable.items()},
        **category_means,
        f"overall_avg{suffix}": float(np.mean(list(per_variable.values()))),
        f"across_categories_avg{suffix}": float(np.mean(list(category_means.values())))
        if category_means
        else float("nan"),
    }
