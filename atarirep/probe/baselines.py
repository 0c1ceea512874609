"""Baselines of the probing benchmark: the majority class, and a supervised encoder trained end to end.

They bound what a probe on a pretrained encoder can be compared with; this module does not score
(atarirep.scores).

Layouts: frames (N, 1, 210, 160) uint8 (an array, LazyFrames or tensor); labels (N, V) integers
in 0..255, column j holding variable j.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from atarirep import encoders, seeds
from atarirep import sampling as sampling_lib
from atarirep.plumbing import devices
from atarirep.plumbing.errors import UserError
from atarirep.probe.features import (
    ENCODE_BATCH_SIZE,
    channels_last_twin,
    checked_forward,
    eval_mode,
    input_dtype,
    is_ours,
)
from atarirep.probe.linear import (
    ADAM_EPS,
    NUM_CLASSES,
    PREDICT_BATCH_SIZE,
    Schedules,
    check_keep,
    epoch_batches,
    init_linear,
    labels_tensor,
    split_bounds,
)

BASELINES = ("majority", "supervised")  # methods that need no pretrained encoder file


def majority_predictions(train_labels, num_frames: int) -> np.ndarray:
    """(num_frames, V) int64: every frame gets each variable's most frequent train label.

    On a tie the label seen first in `train_labels` wins, as in AtariARI's majority baseline
    (`max` over a dict of counts filled in frame order).
    """
    train_labels = np.asarray(train_labels, dtype=np.int64)
    if len(train_labels) == 0:
        raise UserError("train labels are empty; collect more steps so the train split has frames")
    modes = []
    for column in train_labels.T:
        values, first_seen, counts = np.unique(column, return_index=True, return_counts=True)
        tied = counts == counts.max()
        modes.append(values[tied][np.argmin(first_seen[tied])])
    return np.tile(np.asarray(modes, np.int64), (num_frames, 1))


@dataclass
class SupervisedProbes:
    """End-to-end models for the supervised baseline: models[i] predicts the variables columns[i]."""

    models: list[_EncoderWithHeads]
    columns: list[list[int]]
    num_epochs: np.ndarray  # (V,)
    val_accuracy: np.ndarray  # (V,)


class _EncoderWithHeads(nn.Module):
    def __init__(
        self,
        encoder: nn.Module,
        num_features: int,
        num_heads: int,
        num_classes: int,
        generator: torch.Generator,
        layout: torch.memory_format,
    ):
        super().__init__()
        self.encoder = encoder
        self.num_heads, self.num_classes = num_heads, num_classes
        self.layout = layout  # the input layout the encoder was found to agree in (`_layout`)
        self.heads = nn.Linear(num_features, num_heads * num_classes)
        inits = [init_linear(generator, num_features, num_classes) for _ in range(num_heads)]
        with torch.no_grad():
            self.heads.weight.copy_(torch.cat([w for w, _ in inits]))
            self.heads.bias.copy_(torch.cat([b for _, b in inits]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, 210, 160) in [0, 1]
        return self.heads(self.encoder(x)).view(-1, self.num_heads, self.num_classes)  # (B, H, C)

    def inputs(self, frames) -> torch.Tensor:
        """uint8 frames (B, 1, 210, 160) as this model's input on its device: [0, 1], in its dtype and layout."""
        device = self.heads.weight.device
        x = encoders.preprocess(
            torch.as_tensor(np.asarray(frames)).to(device, non_blocking=True), input_dtype(self.encoder)
        )
        return x.contiguous(memory_format=self.layout)


def _frames_source(frames, device: torch.device):
    """Where batches are gathered from: the frames as given on CPU (a LazyFrames batch decompresses only
    its own chunks), a host array on CUDA (decompressing each batch would leave the GPU waiting).

    Never the device: only one batch at a time is moved there.
    """
    if device.type == "cpu" or isinstance(frames, (np.ndarray, torch.Tensor)):
        return frames
    return np.asarray(frames)


def _rows_of(frames, rows: torch.Tensor):
    """frames[rows] for rows (B,) int64 CPU indices."""
    return frames[rows] if isinstance(frames, torch.Tensor) else frames[rows.numpy()]


def _layout(encoder: nn.Module, first: torch.Tensor) -> torch.memory_format:
    """channels-last for atarirep's own encoders, or a user's encoder that computes the same in it on the first
    batch (NCHW `first`); else the plain layout."""
    layout = devices.memory_format(first.device)
    if layout == torch.channels_last and (is_ours(encoder) or channels_last_twin(encoder, first) is not None):
        return layout
    return torch.contiguous_format


def fit_supervised(
    make_encoder: Callable[[], nn.Module],
    train_frames,
    train_labels,
    val_frames,
    val_labels,
    *,
    per_variable: bool = True,
    lr: float = 3e-4,
    batch_size: int = 64,
    epochs: int = 100,
    patience: int = 15,
    seed: int = 0,
    device: str = "cpu",
    num_classes: int = NUM_CLASSES,
    sampling: str = "reference",
    keep: str = "last",
    train_bounds=None,
    val_bounds=None,
    progress: bool = False,
) -> SupervisedProbes:
    """The supervised baseline: fresh encoders with linear heads, trained end to end on the labels.

    per_variable=True is the reference: one fresh encoder + head per variable, each with the probe
    protocol (Adam, plateau lr, early stop on its val accuracy). per_variable=False trains ONE fresh
    encoder with all V heads (loss = sum of the V mean cross-entropies), one plateau schedule and
    early stop on the mean val accuracy: V times cheaper. Their equivalence is not established; use
    it where the reference is unaffordable and say so. `make_encoder` is called under `seed` and must
    return a module of its own (it is trained and moved). `sampling`, `keep` and the episode bounds as
    in atarirep.probe.linear.fit_probes. Frames stay where they are (LazyFrames are read a batch at a
    time); each batch moves to `device`.
    """
    sampling_lib.check(sampling, "probe sampling")
    check_keep(keep)
    dev = devices.resolve(device)
    frames, frames_val = _frames_source(train_frames, dev), _frames_source(val_frames, dev)
    y = labels_tensor(train_labels, num_classes, "train labels").to(dev)
    y_val = labels_tensor(val_labels, num_classes, "val labels")
    if len(frames) != len(y) or len(frames_val) != len(y_val):
        raise ValueError(
            f"frames and labels differ in length: train {len(frames)} vs {len(y)}, "
            f"val {len(frames_val)} vs {len(y_val)}"
        )
    bounds = {"train": split_bounds(train_bounds, len(y)), "val": split_bounds(val_bounds, len(y_val))}
    num_variables = y.shape[1]
    # Departs from AtariARI (per_variable=False only): one shared encoder for all heads, because one
    # encoder per variable costs V end-to-end trainings, out of reach on a CPU.
    columns = [[v] for v in range(num_variables)] if per_variable else [list(range(num_variables))]
    result = SupervisedProbes([], columns, np.zeros(num_variables, int), np.zeros(num_variables))
    first_frames = _rows_of(frames, torch.arange(1))
    for i, cols in enumerate(tqdm(columns, desc="supervised", disable=not progress or len(columns) == 1)):
        encoder_seed, generator, order_rng, val_rng = seeds.supervised_streams(seed, i)
        with torch.random.fork_rng(devices=[]):
            seeds.torch_weights(encoder_seed)
            encoder = make_encoder().to(dev)
        first = encoders.preprocess(torch.as_tensor(np.asarray(first_frames)).to(dev), input_dtype(encoder))
        with torch.no_grad(), eval_mode(encoder):  # the check must not move BatchNorm statistics
            num_features = checked_forward(encoder, first, None).shape[1]
            layout = _layout(encoder, first)
        model = _EncoderWithHeads(encoder, num_features, len(cols), num_classes, generator, layout)
        devices.place(model, dev, layout)
        num_epochs, val_accuracy = _fit_end_to_end(
            model,
            frames,
            y[:, cols],
            frames_val,
            y_val[:, cols],
            bounds,
            lr=lr,
            batch_size=batch_size,
            epochs=epochs,
            patience=patience,
            rng=order_rng,
            val_rng=val_rng,
            sampling=sampling,
            keep=keep,
            progress=progress and len(columns) == 1,
        )
        result.models.append(model.eval())
        result.num_epochs[cols] = num_epochs
        result.val_accuracy[cols] = val_accuracy
    return result


def _fit_end_to_end(
    model: _EncoderWithHeads,
    frames,
    labels: torch.Tensor,
    frames_val,
    labels_val: torch.Tensor,
    bounds: dict[str, np.ndarray],
    *,
    lr: float,
    batch_size: int,
    epochs: int,
    patience: int,
    rng: np.random.Generator,
    val_rng: np.random.Generator,
    sampling: str,
    keep: str,
    progress: bool,
) -> tuple[int, np.ndarray]:
    """Train `model` (frames -> (B, H, C)); early stop and plateau on the mean of its H val accuracies.

    labels (N, H) on the model's device, labels_val (N_val, H) on CPU. keep "best" restores the best
    epoch's weights, "last" keeps the last; returns (epochs trained, (H,) val accuracies of the kept weights).
    """
    device = labels.device
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, eps=ADAM_EPS)
    schedule = Schedules(1, lr, patience)
    best_state = copy.deepcopy(model.state_dict())
    best_accuracy = accuracy = np.zeros(labels.shape[1])
    num_epochs = 0
    for _ in tqdm(range(epochs), desc="supervised epochs", disable=not progress, leave=False):
        if not schedule.active[0]:
            break
        for group in optimizer.param_groups:
            group["lr"] = float(schedule.lr[0])
        model.train()
        for rows in epoch_batches(rng, bounds["train"], batch_size, sampling):
            logits = model(model.inputs(_rows_of(frames, rows)))  # (B, H, C)
            loss = F.cross_entropy(logits.transpose(1, 2), labels[rows.to(device)], reduction="none").mean(0).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        num_epochs += 1
        val_rows = torch.from_numpy(sampling_lib.evaluation_rows(val_rng, bounds["val"], sampling, batch_size))
        predictions = _predict_model(model, frames_val)
        accuracy = (predictions[val_rows] == labels_val[val_rows]).float().mean(0).numpy()  # (H,)
        if schedule.update(np.array([accuracy.mean()]))[0]:
            best_state, best_accuracy = copy.deepcopy(model.state_dict()), accuracy
    if keep == "last":
        return num_epochs, accuracy
    model.load_state_dict(best_state)
    return num_epochs, best_accuracy


def _predict_model(model: _EncoderWithHeads, frames) -> torch.Tensor:
    """(N, H) int64 CPU predictions of an end-to-end model on uint8 frames, ENCODE_BATCH_SIZE at a time."""
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(frames), ENCODE_BATCH_SIZE):
            out.append(model(model.inputs(frames[start : start + ENCODE_BATCH_SIZE])).argmax(-1).cpu())
    return torch.cat(out)


def predict_supervised(probes: SupervisedProbes, frames) -> np.ndarray:
    """(N, V) int64 predictions of the supervised baseline on uint8 frames (N, 1, 210, 160)."""
    out = np.zeros((len(frames), int(sum(len(c) for c in probes.columns))), np.int64)
    for start in range(0, len(frames), PREDICT_BATCH_SIZE):
        chunk = np.asarray(frames[start : start + PREDICT_BATCH_SIZE])
        for model, cols in zip(probes.models, probes.columns, strict=True):
            out[start : start + len(chunk), cols] = _predict_model(model, chunk).numpy()
    return out
