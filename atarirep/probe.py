"""Probing: how well each state variable can be read from an encoder's features (PROTOCOLS.md section 2).

One linear classifier per variable on frozen features, with the majority and supervised baselines,
scored with accuracy and weighted F1 and summarised by category. This module does not learn
encoders (atarirep.methods), read params, or build tables and figures (atarirep.reports).

Layouts used throughout:
  frames    (N, 1, 210, 160) uint8, an array, LazyFrames or tensor
  features  (N, F) float32, one row per frame
  labels    (N, V) integers in 0..255; column j holds variables[j]
  scores    one row per variable: variable, categories, f1, accuracy (+ game, method when known)

The fast path (`encode` once, then `fit_probes`) trains every variable's probe as one batched layer.
`fit_probes_reference` is the slow, obvious AtariARI-style loop, kept as ground truth and baseline.
"""
from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import f1_score
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from atarirep import annotations, devices, encoders, episodes, io
from atarirep.errors import UserError

NUM_CLASSES = 256          # labels are RAM bytes
ADAM_EPS = 1e-5
LR_PATIENCE = 5            # ReduceLROnPlateau on val accuracy: patience 5, factor 0.2, min 1e-5
LR_FACTOR = 0.2
MIN_LR = 1e-5
PLATEAU_THRESHOLD = 1e-4   # torch's ReduceLROnPlateau default (relative), which the reference used
ENCODE_BATCH_SIZE = 256    # frames per encoder pass when features are computed once
PREDICT_BATCH_SIZE = 1024
BASELINES = ("majority", "supervised")   # methods that need no pretrained encoder file
METRICS = ("f1", "accuracy")
GROUP_COLUMNS = ("game", "method")


# -- devices and data ----------------------------------------------------------------------------
def resolve_device(device: str | torch.device) -> torch.device:
    """A torch.device as given, or a `device: auto|cpu|cuda` param resolved by atarirep.devices."""
    return device if isinstance(device, torch.device) else devices.resolve(device)


def _labels_tensor(labels, num_classes: int, what: str) -> torch.Tensor:
    """(N, V) int64 tensor; UserError if a label falls outside 0..num_classes-1."""
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    if y.ndim != 2:
        raise ValueError(f"{what} must be (N, V), got shape {tuple(y.shape)}")
    if y.numel() and (y.min() < 0 or y.max() >= num_classes):
        raise UserError(f"{what} hold values outside 0..{num_classes - 1} (min {int(y.min())}, max "
                        f"{int(y.max())}); labels must be RAM bytes")
    return y


def _batches(rng: np.random.Generator, num_rows: int, batch_size: int) -> Iterator[torch.Tensor]:
    """One epoch of shuffled row indices, every row once, the last batch possibly smaller."""
    # Departs from AtariARI: each epoch visits every train frame once in a seeded shuffle, because the
    # reference draws episodes uniformly with replacement (frames of short episodes count more) from
    # the unseeded global RNG, and measures val and test accuracy on such a resample too.
    order = torch.from_numpy(rng.permutation(num_rows))
    yield from order.split(batch_size)


def encode(encoder: nn.Module, frames, *, batch_size: int = ENCODE_BATCH_SIZE, device: str | torch.device = "cpu",
           feature_size: int | None = None, progress: bool = False, what: str = "frames") -> torch.Tensor:
    """(N, F) float32 CPU features of uint8 frames (N, 1, 210, 160), each frame encoded once, no grad.

    The encoder sees frames / 255 (encoders.preprocess) in eval mode. UserError if it does not take
    full-size frames or does not return (B, feature_size) vectors.
    """
    dev = resolve_device(device)
    num_frames = len(frames)
    was_training = encoder.training
    encoder.eval().to(dev)
    out = None
    try:
        with torch.inference_mode():
            for start in tqdm(range(0, num_frames, batch_size), desc=f"encode {what}", disable=not progress,
                              leave=False):
                x = torch.as_tensor(np.asarray(frames[start:start + batch_size]))
                if x.dtype != torch.uint8 or tuple(x.shape[1:]) != episodes.FRAME_SHAPE:
                    raise UserError(f"{what} must be (N, 1, 210, 160) uint8 frames, got {tuple(x.shape)} "
                                    f"{x.dtype}; pass the frames as collected")
                x = encoders.preprocess(x.to(dev))
                if out is None:
                    z = _first_forward(encoder, x, feature_size)
                    out = torch.empty((num_frames, z.shape[1]), dtype=torch.float32)
                else:
                    z = encoder(x)
                out[start:start + len(z)] = z.float().cpu()
    finally:
        encoder.train(was_training)
    if out is None:
        raise UserError(f"{what} are empty; collect more steps so every split has frames")
    return out


def _first_forward(encoder: nn.Module, x: torch.Tensor, feature_size: int | None) -> torch.Tensor:
    name = type(encoder).__name__
    try:
        z = encoder(x)
    except RuntimeError:
        raise UserError(f"encoder {name} does not take (B, 1, 210, 160) frames; probe an encoder built for "
                        "full-size frames (architecture benchmark)") from None
    expected = feature_size if feature_size is not None else getattr(encoder, "feature_size", None)
    if not isinstance(z, torch.Tensor) or z.ndim != 2 or (expected is not None and z.shape[1] != expected):
        shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
        raise UserError(f"encoder {name} returns {shape} for a batch of {len(x)} frames, expected "
                        f"({len(x)}, {expected if expected is not None else 'F'}); probe an encoder whose "
                        "output is one feature vector per frame (or fix representation_len/feature_size)")
    return z


# -- per-variable early stopping and learning-rate plateaus, as a vector ---------------------------
class _Schedules:
    """V independent copies of the reference's EarlyStopping and ReduceLROnPlateau(mode="max").

    Early stopping: a val accuracy not above the best so far is a bad epoch; `patience` of them in
    a row stop the probe. The plateau schedule is stepped only for probes still running, as the
    reference does, with torch's relative threshold, and multiplies the lr by 0.2 (at least 1e-5).
    """

    def __init__(self, num_variables: int, lr: float, patience: int):
        self.patience = patience
        self.lr = np.full(num_variables, float(lr))
        self.active = np.ones(num_variables, bool)
        self.best = np.full(num_variables, -np.inf)
        self.num_bad = np.zeros(num_variables, int)
        self.plateau_best = np.full(num_variables, -np.inf)
        self.plateau_bad = np.zeros(num_variables, int)

    def update(self, val_accuracy: np.ndarray) -> np.ndarray:
        """Take one epoch's (V,) val accuracies; returns (V,) bool: which probes improved their best."""
        running = self.active.copy()
        improved = running & (val_accuracy > self.best)
        self.best[improved] = val_accuracy[improved]
        self.num_bad[improved] = 0
        self.num_bad[running & ~improved] += 1
        stopped = running & (self.num_bad >= self.patience)
        stepped = running & ~stopped
        better = stepped & (val_accuracy > self.plateau_best * (1 + PLATEAU_THRESHOLD))
        self.plateau_best[better] = val_accuracy[better]
        self.plateau_bad[better] = 0
        self.plateau_bad[stepped & ~better] += 1
        reduce = stepped & (self.plateau_bad > LR_PATIENCE)
        new_lr = np.maximum(self.lr * LR_FACTOR, MIN_LR)
        self.lr = np.where(reduce & (self.lr - new_lr > 1e-8), new_lr, self.lr)
        self.plateau_bad[reduce] = 0
        self.active = running & ~stopped
        return improved


def _init_linear(generator: torch.Generator, in_features: int, out_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    """nn.Linear's default initialisation drawn from `generator`: weight (out, in), bias (out,)."""
    bound = 1 / math.sqrt(in_features)
    weight = torch.empty(out_features, in_features).uniform_(-bound, bound, generator=generator)
    bias = torch.empty(out_features).uniform_(-bound, bound, generator=generator)
    return weight, bias


# -- the fast path: every probe as one batched layer ------------------------------------------------
@dataclass
class LinearProbes:
    """V linear probes held as one layer: logits[n, v] = features[n] @ weight[:, v] + bias[v].

    weight (F, V, C), bias (V, C) float32; num_epochs (V,) epochs each probe trained;
    val_accuracy (V,) its best val accuracy, whose weights these are.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    num_epochs: np.ndarray
    val_accuracy: np.ndarray

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(B, F) -> (B, V, C)."""
        num_features, num_variables, num_classes = self.weight.shape
        out = features @ self.weight.reshape(num_features, num_variables * num_classes)
        return out.view(-1, num_variables, num_classes) + self.bias


def predict(probes: LinearProbes, features) -> np.ndarray:
    """(N, V) int64 predicted class of each variable for (N, F) features."""
    device = probes.weight.device
    features = torch.as_tensor(features, dtype=torch.float32)
    out = []
    with torch.no_grad():
        for chunk in features.split(PREDICT_BATCH_SIZE):
            out.append(probes.logits(chunk.to(device)).argmax(-1).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, probes.bias.shape[0]), np.int64)


class _BatchedAdam:
    """Adam (torch's update, eps 1e-5) with one learning rate per variable along axis `variable_dim`.

    Adam is elementwise, so it equals one torch.optim.Adam per probe while all probes step together;
    a finished probe gets lr 0 and stays frozen, as it would with its own optimizer left idle.
    """

    def __init__(self, params: Sequence[torch.Tensor], variable_dims: Sequence[int],
                 betas=(0.9, 0.999), eps: float = ADAM_EPS):
        self.params, self.variable_dims = list(params), list(variable_dims)
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.step_count = 0
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self, grads: Sequence[torch.Tensor], lr: torch.Tensor) -> None:
        self.step_count += 1
        bias_correction1 = 1 - self.beta1 ** self.step_count
        bias_correction2_sqrt = math.sqrt(1 - self.beta2 ** self.step_count)
        for p, g, m, v, dim in zip(self.params, grads, self.exp_avg, self.exp_avg_sq, self.variable_dims):
            m.lerp_(g, 1 - self.beta1)
            v.mul_(self.beta2).addcmul_(g, g, value=1 - self.beta2)
            denom = (v.sqrt() / bias_correction2_sqrt).add_(self.eps)
            shape = [1] * p.ndim
            shape[dim] = -1
            p.sub_((lr / bias_correction1).view(shape) * m / denom)


def fit_probes(train_features, train_labels, val_features, val_labels, *, lr: float = 3e-4,
               batch_size: int = 64, epochs: int = 100, patience: int = 15, seed: int = 0,
               device: str | torch.device = "cpu", num_classes: int = NUM_CLASSES,
               progress: bool = False) -> LinearProbes:
    """Train one linear probe per variable on (N, F) features and (N, V) labels, all V at once.

    The reference protocol (PROTOCOLS.md 2) per probe: Linear(F -> 256), cross-entropy, Adam (lr, eps
    1e-5), batch 64, ReduceLROnPlateau on val accuracy (patience 5, factor 0.2, min 1e-5), early stop
    after `patience` epochs without val improvement, at most `epochs`. The V probes form one (F, V, C)
    layer; each variable's loss is its own mean cross-entropy, so gradients do not mix, and each has
    its own lr, plateau and early stop (a stopped probe is masked out). Same seed -> same probes.
    """
    # Departs from AtariARI: features are computed once (`encode`) and all probes train as one layer,
    # because the reference re-encodes every batch for every probe: the same numbers at V x epochs the cost.
    dev = resolve_device(device)
    x = torch.as_tensor(train_features, dtype=torch.float32).to(dev)
    x_val = torch.as_tensor(val_features, dtype=torch.float32).to(dev)
    y = _labels_tensor(train_labels, num_classes, "train labels").to(dev)
    y_val = _labels_tensor(val_labels, num_classes, "val labels").to(dev)
    num_rows, num_features = x.shape
    num_variables = y.shape[1]
    generator = torch.Generator().manual_seed(seed)
    inits = [_init_linear(generator, num_features, num_classes) for _ in range(num_variables)]
    weight = torch.stack([w.T for w, _ in inits], dim=1).to(dev).requires_grad_()   # (F, V, C)
    bias = torch.stack([b for _, b in inits]).to(dev).requires_grad_()              # (V, C)
    probes = LinearProbes(weight.detach().clone(), bias.detach().clone(),
                          np.zeros(num_variables, int), np.zeros(num_variables))
    adam = _BatchedAdam([weight, bias], variable_dims=[1, 0])
    schedules = _Schedules(num_variables, lr, patience)
    order_rng = np.random.default_rng(seed)
    current = LinearProbes(weight, bias, probes.num_epochs, probes.val_accuracy)
    for _ in tqdm(range(epochs), desc="probe epochs", disable=not progress, leave=False):
        if not schedules.active.any():
            break
        active = torch.as_tensor(schedules.active, dtype=torch.float32, device=dev)        # (V,)
        lr_now = torch.as_tensor(schedules.lr, dtype=torch.float32, device=dev) * active    # (V,)
        for rows in _batches(order_rng, num_rows, batch_size):
            rows = rows.to(dev)
            logits = current.logits(x[rows])                                                # (B, V, C)
            loss = F.cross_entropy(logits.transpose(1, 2), y[rows], reduction="none").mean(0)  # (V,)
            grads = torch.autograd.grad((loss * active).sum(), [weight, bias])
            adam.step(grads, lr_now)
        probes.num_epochs[schedules.active] += 1
        with torch.no_grad():
            val_accuracy = (torch.as_tensor(predict(current, x_val), device=dev) == y_val).float().mean(0)
        improved = schedules.update(val_accuracy.cpu().numpy())
        # Departs from AtariARI: each probe is tested with the weights of its best val epoch, because
        # the reference's EarlyStopping saved them only with checkpoint=True (off) and tested the last.
        keep = torch.as_tensor(improved, device=dev)
        with torch.no_grad():
            probes.weight[:, keep] = weight[:, keep]
            probes.bias[keep] = bias[keep]
        probes.val_accuracy[improved] = schedules.best[improved]
    return probes


# -- the slow path: one probe at a time, frames re-encoded for every probe, as AtariARI --------------
def fit_probes_reference(train_x, train_labels, val_x, val_labels, *, encoder: nn.Module | None = None,
                         lr: float = 3e-4, batch_size: int = 64, epochs: int = 100, patience: int = 15,
                         seed: int = 0, device: str | torch.device = "cpu",
                         num_classes: int = NUM_CLASSES) -> list[nn.Linear]:
    """The reference loop: V separate nn.Linear probes, each with its own torch Adam, torch
    ReduceLROnPlateau and early stopper, all fed the same batches; returns the V probes.

    With `encoder`, train_x/val_x are uint8 frames encoded again for every probe at every batch (the
    reference's cost); without, they are features. Same init, batch order and model selection as
    `fit_probes`, so the two agree up to floating-point rounding; kept as its ground truth.
    """
    dev = resolve_device(device)
    featurize = _featurizer(encoder, dev)
    x, x_val = torch.as_tensor(np.asarray(train_x)), torch.as_tensor(np.asarray(val_x))
    y = _labels_tensor(train_labels, num_classes, "train labels").to(dev)
    y_val = _labels_tensor(val_labels, num_classes, "val labels").to(dev)
    num_variables = y.shape[1]
    num_features = featurize(x[:1].to(dev)).shape[1]
    generator = torch.Generator().manual_seed(seed)
    probes = []
    for _ in range(num_variables):
        probe = nn.Linear(num_features, num_classes).to(dev)
        weight, bias = _init_linear(generator, num_features, num_classes)
        with torch.no_grad():
            probe.weight.copy_(weight)
            probe.bias.copy_(bias)
        probes.append(probe)
    optimizers = [torch.optim.Adam(p.parameters(), lr=lr, eps=ADAM_EPS) for p in probes]
    schedulers = [torch.optim.lr_scheduler.ReduceLROnPlateau(o, mode="max", patience=LR_PATIENCE, factor=LR_FACTOR,
                                                             min_lr=MIN_LR) for o in optimizers]
    best = [-np.inf] * num_variables
    num_bad = [0] * num_variables
    stopped = [False] * num_variables
    best_states = [copy.deepcopy(p.state_dict()) for p in probes]
    order_rng = np.random.default_rng(seed)
    for _ in range(epochs):
        if all(stopped):
            break
        for rows in _batches(order_rng, len(x), batch_size):
            batch = x[rows].to(dev)
            for v, probe in enumerate(probes):
                if stopped[v]:
                    continue
                loss = F.cross_entropy(probe(featurize(batch)), y[rows.to(dev), v])
                optimizers[v].zero_grad()
                loss.backward()
                optimizers[v].step()
        for v, probe in enumerate(probes):
            if stopped[v]:
                continue
            accuracy = float((_predict_one(probe, x_val, featurize) == y_val[:, v].cpu()).float().mean())
            if accuracy > best[v]:
                best[v], num_bad[v] = accuracy, 0
                best_states[v] = copy.deepcopy(probe.state_dict())
            else:
                num_bad[v] += 1
                stopped[v] = num_bad[v] >= patience
            if not stopped[v]:
                schedulers[v].step(accuracy)
    for probe, state in zip(probes, best_states):
        probe.load_state_dict(state)
    return probes


def predict_reference(probes: list[nn.Linear], x, *, encoder: nn.Module | None = None,
                      device: str | torch.device = "cpu") -> np.ndarray:
    """(N, V) int64 predictions of `fit_probes_reference`'s probes, re-encoding frames for each probe."""
    featurize = _featurizer(encoder, resolve_device(device))
    x = torch.as_tensor(np.asarray(x))
    return np.stack([_predict_one(p, x, featurize).numpy() for p in probes], axis=1)


def _featurizer(encoder: nn.Module | None, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    if encoder is None:
        return lambda batch: batch.float()
    encoder.eval().to(device)

    def featurize(batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return encoder(encoders.preprocess(batch))
    return featurize


def _predict_one(probe: nn.Module, x: torch.Tensor, featurize) -> torch.Tensor:
    device = next(probe.parameters()).device
    with torch.no_grad():
        return torch.cat([probe(featurize(chunk.to(device))).argmax(-1).cpu()
                          for chunk in x.split(ENCODE_BATCH_SIZE)])


# -- baselines -----------------------------------------------------------------------------------
def majority_predictions(train_labels, num_frames: int) -> np.ndarray:
    """(num_frames, V) int64: every frame gets each variable's most frequent train label.

    On a tie the smallest label wins.
    """
    train_labels = np.asarray(train_labels, dtype=np.int64)
    if len(train_labels) == 0:
        raise UserError("train labels are empty; collect more steps so the train split has frames")
    modes = [np.bincount(column).argmax() for column in train_labels.T]
    return np.tile(np.asarray(modes, np.int64), (num_frames, 1))


@dataclass
class SupervisedProbes:
    """End-to-end models for the supervised baseline: models[i] predicts the variables columns[i]."""

    models: list[nn.Module]
    columns: list[list[int]]
    num_epochs: np.ndarray      # (V,)
    val_accuracy: np.ndarray    # (V,)


class _EncoderWithHeads(nn.Module):
    def __init__(self, encoder: nn.Module, num_features: int, num_heads: int, num_classes: int,
                 generator: torch.Generator):
        super().__init__()
        self.encoder = encoder
        self.num_heads, self.num_classes = num_heads, num_classes
        self.heads = nn.Linear(num_features, num_heads * num_classes)
        inits = [_init_linear(generator, num_features, num_classes) for _ in range(num_heads)]
        with torch.no_grad():
            self.heads.weight.copy_(torch.cat([w for w, _ in inits]))
            self.heads.bias.copy_(torch.cat([b for _, b in inits]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:          # (B, 1, 210, 160) in [0, 1]
        return self.heads(self.encoder(x)).view(-1, self.num_heads, self.num_classes)   # (B, H, C)


def fit_supervised(make_encoder: Callable[[], nn.Module], train_frames, train_labels, val_frames, val_labels,
                   *, per_variable: bool = True, lr: float = 3e-4, batch_size: int = 64, epochs: int = 100,
                   patience: int = 15, seed: int = 0, device: str | torch.device = "cpu",
                   num_classes: int = NUM_CLASSES, progress: bool = False) -> SupervisedProbes:
    """The supervised baseline: fresh encoders with linear heads, trained end to end on the labels.

    per_variable=True is the reference: one fresh encoder + head per variable, each with the probe
    protocol (Adam, plateau lr, early stop on its val accuracy). per_variable=False trains ONE fresh
    encoder with all V heads (loss = sum of the V mean cross-entropies), one plateau schedule and
    early stop on the mean val accuracy: V times cheaper. Their equivalence is not established; use
    it where the reference is unaffordable and say so. `make_encoder` is called under `seed`.
    """
    dev = resolve_device(device)
    frames = torch.as_tensor(np.asarray(train_frames)).to(dev)   # uint8; scaled per batch
    frames_val = torch.as_tensor(np.asarray(val_frames)).to(dev)
    y = _labels_tensor(train_labels, num_classes, "train labels").to(dev)
    y_val = _labels_tensor(val_labels, num_classes, "val labels").to(dev)
    num_variables = y.shape[1]
    # Departs from AtariARI (per_variable=False only): one shared encoder for all heads, because one
    # encoder per variable costs V end-to-end trainings, out of reach on a CPU.
    columns = [[v] for v in range(num_variables)] if per_variable else [list(range(num_variables))]
    result = SupervisedProbes([], columns, np.zeros(num_variables, int), np.zeros(num_variables))
    for i, cols in enumerate(tqdm(columns, desc="supervised", disable=not progress or len(columns) == 1)):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + i)
            encoder = make_encoder()
        generator = torch.Generator().manual_seed(seed + i)
        with torch.no_grad():
            num_features = _first_forward(encoder.to(dev), encoders.preprocess(frames[:1]), None).shape[1]
        model = _EncoderWithHeads(encoder, num_features, len(cols), num_classes, generator).to(dev)
        num_epochs, val_accuracy = _fit_end_to_end(
            model, frames, y[:, cols], frames_val, y_val[:, cols], lr=lr, batch_size=batch_size, epochs=epochs,
            patience=patience, rng=np.random.default_rng([seed, i]), progress=progress and len(columns) == 1)
        result.models.append(model.eval())
        result.num_epochs[cols] = num_epochs
        result.val_accuracy[cols] = val_accuracy
    return result


def _fit_end_to_end(model: nn.Module, frames: torch.Tensor, labels: torch.Tensor, frames_val: torch.Tensor,
                    labels_val: torch.Tensor, *, lr: float, batch_size: int, epochs: int, patience: int,
                    rng: np.random.Generator, progress: bool) -> tuple[int, np.ndarray]:
    """Train `model` (frames -> (B, H, C)); early stop and plateau on the mean of its H val accuracies.

    Restores the best epoch's weights; returns (epochs trained, (H,) val accuracies at that epoch).
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, eps=ADAM_EPS)
    schedule = _Schedules(1, lr, patience)
    best_state = copy.deepcopy(model.state_dict())
    best_accuracy = np.zeros(labels.shape[1])
    num_epochs = 0
    for _ in tqdm(range(epochs), desc="supervised epochs", disable=not progress, leave=False):
        if not schedule.active[0]:
            break
        for group in optimizer.param_groups:
            group["lr"] = float(schedule.lr[0])
        model.train()
        for rows in _batches(rng, len(frames), batch_size):
            rows = rows.to(frames.device)
            logits = model(encoders.preprocess(frames[rows]))                          # (B, H, C)
            loss = F.cross_entropy(logits.transpose(1, 2), labels[rows], reduction="none").mean(0).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        num_epochs += 1
        accuracy = (_predict_model(model, frames_val) == labels_val.cpu()).float().mean(0).numpy()   # (H,)
        if schedule.update(np.array([accuracy.mean()]))[0]:
            best_state, best_accuracy = copy.deepcopy(model.state_dict()), accuracy
    model.load_state_dict(best_state)
    return num_epochs, best_accuracy


def _predict_model(model: nn.Module, frames: torch.Tensor) -> torch.Tensor:
    """(N, H) int64 CPU predictions of an end-to-end model on uint8 frames."""
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        return torch.cat([model(encoders.preprocess(chunk.to(device))).argmax(-1).cpu()
                          for chunk in frames.split(ENCODE_BATCH_SIZE)])


def predict_supervised(probes: SupervisedProbes, frames) -> np.ndarray:
    """(N, V) int64 predictions of the supervised baseline on uint8 frames (N, 1, 210, 160)."""
    out = np.zeros((len(frames), int(sum(len(c) for c in probes.columns))), np.int64)
    for start in range(0, len(frames), PREDICT_BATCH_SIZE):
        chunk = torch.as_tensor(np.asarray(frames[start:start + PREDICT_BATCH_SIZE]))
        for model, cols in zip(probes.models, probes.columns):
            out[start:start + len(chunk), cols] = _predict_model(model, chunk).numpy()
    return out


# -- scores ----------------------------------------------------------------------------------------
def score(predictions, labels, variables: Sequence[str]) -> pd.DataFrame:
    """One row per variable: variable (str), categories (tuple of str, PROTOCOLS.md 2; may be empty),
    f1 (sklearn, average="weighted"), accuracy.

    predictions, labels: (N, V) integers, column j holding variables[j].
    """
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.shape != labels.shape or labels.ndim != 2 or labels.shape[1] != len(variables):
        raise ValueError(f"predictions {predictions.shape} and labels {labels.shape} must both be "
                         f"(N, {len(variables)})")
    if len(labels) == 0:
        raise UserError("test labels are empty; collect more steps so the test split has frames")
    rows = [{"variable": v, "categories": annotations.categories(v),
             "f1": float(f1_score(labels[:, j], predictions[:, j], average="weighted", zero_division=0)),
             "accuracy": float(np.mean(labels[:, j] == predictions[:, j]))}
            for j, v in enumerate(variables)]
    return pd.DataFrame(rows, columns=["variable", "categories", "f1", "accuracy"])


def aggregate(scores: pd.DataFrame, by: str = "category") -> pd.DataFrame:
    """Mean f1 and accuracy of per-variable `scores`, grouped by `game` and `method` when present.

    scores: one row per (game, method, variable), columns variable, categories (tuple), f1, accuracy.
    by="category": one row per (game, method, category) present, the mean over that category's
      variables (a variable in two categories counts in both, one in none in no category);
      columns [game, method,] category, f1, accuracy, num_variables; categories in CATEGORIES order.
    by="across_categories": one row per (game, method): the mean of its category means (a category
      with no variable is absent, not zero), the benchmark's per-game figure.
    by="overall": one row per (game, method): the plain mean over all its variables.
    """
    keys = [c for c in GROUP_COLUMNS if c in scores.columns]
    metrics = list(METRICS)
    if by == "category":
        per_category = scores.explode("categories").dropna(subset=["categories"])
        per_category = per_category.rename(columns={"categories": "category"})
        per_category["category"] = pd.Categorical(per_category["category"], categories=annotations.CATEGORIES)
        out = per_category.groupby([*keys, "category"], sort=True, observed=True).agg(
            f1=("f1", "mean"), accuracy=("accuracy", "mean"), num_variables=("variable", "size")).reset_index()
        out["category"] = out["category"].astype(str)
        return out
    if by == "across_categories":
        per_category = aggregate(scores, "category")
        if not keys:
            return per_category[metrics].mean().to_frame().T
        return per_category.groupby(keys, sort=False)[metrics].mean().reset_index()
    if by == "overall":
        if not keys:
            return scores[metrics].mean().to_frame().T
        return scores.groupby(keys, sort=False)[metrics].mean().reset_index()
    raise ValueError(f"by must be 'category', 'across_categories' or 'overall', got {by!r}")


def summarize(scores: pd.DataFrame) -> dict:
    """One game's scores as metrics: {"f1": {"across_categories", "overall", <category>...}, "accuracy": {...},
    "num_variables"}; plain floats, for a metrics JSON."""
    per_category = aggregate(scores, "category")
    across = aggregate(scores, "across_categories")
    overall = aggregate(scores, "overall")
    out = {}
    for metric in METRICS:
        out[metric] = {"across_categories": float(across[metric].iloc[0]),
                       "overall": float(overall[metric].iloc[0]),
                       **{c: float(v) for c, v in zip(per_category["category"], per_category[metric])}}
    out["num_variables"] = int(len(scores))
    return out


# -- the probe stage's entry point ------------------------------------------------------------------
def check_settings(*, method: str, encoder_path, lr: float, batch_size: int, epochs: int, patience: int) -> None:
    """UserError (one line) for settings that cannot work, before any data is read."""
    if method in BASELINES and encoder_path is not None:
        raise UserError(f"method {method!r} trains its own model and takes no encoder file; "
                        f"drop the encoder path {encoder_path}")
    if method not in BASELINES and encoder_path is None:
        raise UserError(f"method {method!r} needs an encoder file to probe (or use one of {', '.join(BASELINES)})")
    for name, value in (("batch_size", batch_size), ("epochs", epochs), ("patience", patience)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserError(f"probe.{name} must be a positive integer, got {value!r}; fix it in params.yaml")
    if not lr > 0:
        raise UserError(f"probe.lr must be positive, got {lr!r}; for example lr: 0.0003")


def load_probe_data(episodes_dir: str | os.PathLike) -> tuple[str, dict[str, episodes.Episodes]]:
    """(game, {"train", "val", "test": Episodes}) of a stored dataset; UserError if a split is missing or empty."""
    store = episodes.load(episodes_dir)
    splits = {name: store.split(name) for name in ("train", "val", "test")}
    for name, split in splits.items():
        if len(split) == 0:
            raise UserError(f"episodes {episodes_dir} have an empty {name!r} split; collect more steps "
                            "(collect.probe.steps) so every split gets episodes")
    return store.game, splits


def check_same_game(encoder: nn.Module, encoder_path, game: str, episodes_dir) -> None:
    """UserError if the encoder file says it was trained on another game than the episodes'."""
    encoder_game = getattr(encoder, "meta", {}).get("game")
    if encoder_game is not None and annotations.game_key(encoder_game) != annotations.game_key(game):
        raise UserError(f"encoder {encoder_path} was trained on {encoder_game} but episodes {episodes_dir} are "
                        f"{game}; probe an encoder of the same game (data/encoders/{game}/...)")


def run(episodes_dir: str | os.PathLike, encoder_path: str | os.PathLike | None, out_dir: str | os.PathLike, *,
        method: str, lr: float = 3e-4, batch_size: int = 64, epochs: int = 100, patience: int = 15,
        seed: int = 0, device: str = "auto", fast: bool = True, supervised_per_variable: bool = True,
        supervised_epochs: int | None = None, progress: bool = False) -> pd.DataFrame:
    """Probe one (game, method) and write out_dir/scores.csv then out_dir/metrics.json, atomically.

    method "majority" and "supervised" need no encoder (encoder_path None); any other method name
    probes the encoder file at `encoder_path`. `fast` uses the batched path; fast=False the
    reference loop (same results, far slower). The supervised baseline trains for at most
    `supervised_epochs` (default `epochs`), one encoder per variable if `supervised_per_variable`.
    Returns the scores (one row per variable).
    scores.csv: game, method, variable, categories (";"-joined), f1, accuracy, num_epochs.
    metrics.json: game, method, `summarize`'s f1 and accuracy figures, num_variables, num_test_frames.
    """
    check_settings(method=method, encoder_path=encoder_path, lr=lr, batch_size=batch_size, patience=patience,
                   epochs=supervised_epochs if method == "supervised" and supervised_epochs is not None else epochs)
    dev = resolve_device(device)
    game, data = load_probe_data(episodes_dir)
    train, val, test = data["train"], data["val"], data["test"]
    settings = dict(lr=lr, batch_size=batch_size, epochs=epochs, patience=patience, seed=seed, device=dev)
    if method == "majority":
        predictions = majority_predictions(train.labels, len(test))
        num_epochs = np.zeros(len(train.variables), int)
    elif method == "supervised":
        settings["epochs"] = epochs if supervised_epochs is None else supervised_epochs
        model = fit_supervised(lambda: encoders.build("benchmark"), train.frames, train.labels, val.frames,
                               val.labels, per_variable=supervised_per_variable, progress=progress, **settings)
        predictions, num_epochs = predict_supervised(model, test.frames), model.num_epochs
    else:
        encoder = encoders.load(encoder_path)
        check_same_game(encoder, encoder_path, game, episodes_dir)
        if fast:
            features = {name: encode(encoder, split.frames, device=dev, progress=progress, what=f"{name} frames")
                        for name, split in data.items()}
            probes = fit_probes(features["train"], train.labels, features["val"], val.labels, progress=progress,
                                **settings)
            predictions, num_epochs = predict(probes, features["test"]), probes.num_epochs
        else:
            encode(encoder, test.frames[:1], device=dev)   # the same shape checks as the fast path
            probes = fit_probes_reference(train.frames, train.labels, val.frames, val.labels, encoder=encoder,
                                          **settings)
            predictions = predict_reference(probes, test.frames, encoder=encoder, device=dev)
            num_epochs = np.full(len(train.variables), -1)   # not tracked by the reference loop
    scores = score(predictions, test.labels, test.variables)
    scores.insert(0, "method", method)
    scores.insert(0, "game", game)
    scores["num_epochs"] = np.asarray(num_epochs, int)
    metrics = {"game": game, "method": method, **summarize(scores), "num_test_frames": len(test)}
    out_dir = Path(out_dir)
    table = scores.assign(categories=scores["categories"].map(";".join))
    io.write_bytes(out_dir / "scores.csv", table.to_csv(index=False, lineterminator="\n").encode())
    io.write_json(out_dir / "metrics.json", metrics)   # last: a folder with metrics.json is complete
    return scores


# -- AtariARI's ProbeTrainer -----------------------------------------------------------------------
def _stack_episodes(episode_list, what: str) -> torch.Tensor:
    """Per-episode frames (each a (T, ...) tensor or a list of frame tensors) -> (N, ...) tensor."""
    parts = [torch.stack([torch.as_tensor(f) for f in e]) if isinstance(e, (list, tuple)) else torch.as_tensor(e)
             for e in episode_list if len(e)]
    if not parts:
        raise UserError(f"{what} have no frames; collect more steps so every split has episodes")
    x = torch.cat(parts)
    if x.is_floating_point() and x.ndim == 4:   # AtariARI kept frames as float copies of 0..255
        if x.numel() and not (x.min() >= 0 and x.max() <= 255 and torch.equal(x, x.round())):
            raise UserError(f"{what} hold float frames that are not whole values in 0..255; pass the uint8 "
                            "frames as collected (they are scaled by 1/255 once, when batched)")
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
        raise UserError(f"{what} name variable {err.args[0]!r} on some frames but not on others; pass one "
                        "{variable: value} dict with the same variables for every frame") from None


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
            raise UserError(f"{what} lack variable {missing[0]!r} that the probes were trained on; pass labels "
                            "of the same game and annotation set as the train labels")
        if len({len(columns[v]) for v in variables}) > 1:
            raise UserError(f"{what} give different numbers of frames for different variables; "
                            "pass one label per frame for every variable")
    return np.concatenate([np.stack([c[v] for v in variables], axis=1) for c in episodes_columns]), variables


class ProbeTrainer:
    """AtariARI's ProbeTrainer (atariari/benchmark/probe.py), on the batched probes of this module.

        trainer = ProbeTrainer(encoder, representation_len=encoder.feature_size)
        trainer.train(tr_episodes, val_episodes, tr_labels, val_labels)
        acc, f1 = trainer.test(test_episodes, test_labels)

    Episodes are lists of per-episode uint8 frame tensors (T, 1, 210, 160); labels are per-episode
    lists of {variable: value} dicts (or per-episode {variable: (T,) tensor} dicts). With
    encoder=None the episodes hold (T, representation_len) feature vectors instead. `test` returns
    (accuracy, f1) dicts with AtariARI's keys: "<variable>_acc", "<category>_avg_acc",
    "overall_avg_acc", "across_categories_avg_acc", and the same with "_f1".
    `wandb` and `save_dir` are accepted for compatibility and unused.
    """

    def __init__(self, encoder: nn.Module | None = None, method_name: str = "my_method", wandb=None,
                 patience: int = 15, num_classes: int = NUM_CLASSES, fully_supervised: bool = False,
                 save_dir: str = ".models", device: str | torch.device = "auto", lr: float = 5e-4,
                 epochs: int = 100, batch_size: int = 64, representation_len: int = 256, seed: int = 0):
        if fully_supervised and encoder is None:
            raise UserError("fully_supervised=True needs an encoder to copy and train; pass encoder=...")
        self.encoder = encoder
        self.method = method_name
        self.patience, self.num_classes, self.fully_supervised = patience, num_classes, fully_supervised
        self.device = resolve_device(device)
        self.lr, self.epochs, self.batch_size = lr, epochs, batch_size   # lr default as the reference class
        self.feature_size = representation_len
        self.seed = seed   # Departs from AtariARI: runs repeat, because the reference never seeded
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
                raise UserError(f"{what} hold {tuple(x.shape[1:])} vectors but representation_len="
                                f"{self.feature_size}; pass (T, representation_len) features or an encoder")
            return x.float()
        return encode(self.encoder, x, device=self.device, feature_size=self.feature_size, what=what)

    def train(self, tr_eps, val_eps, tr_labels, val_labels) -> None:
        y, self.variables = _labels_from_episodes(tr_labels, None, "train labels")
        y_val, _ = _labels_from_episodes(val_labels, self.variables, "val labels")
        x, x_val = self._inputs(tr_eps, "train episodes"), self._inputs(val_eps, "val episodes")
        for name, inputs, labels in (("train", x, y), ("val", x_val, y_val)):
            if len(inputs) != len(labels):
                raise UserError(f"{name} episodes have {len(inputs)} frames but {name} labels {len(labels)}; "
                                "pass the labels that came with the episodes")
        settings = dict(lr=self.lr, batch_size=self.batch_size, epochs=self.epochs, patience=self.patience,
                        seed=self.seed, device=self.device, num_classes=self.num_classes)
        if self.fully_supervised:
            self._probes = fit_supervised(lambda: copy.deepcopy(self.encoder), x, y, x_val, y_val,
                                          per_variable=True, **settings)
        else:
            self._probes = fit_probes(x, y, x_val, y_val, **settings)

    def test(self, test_episodes, test_label_dicts, epoch=None) -> tuple[dict[str, float], dict[str, float]]:
        if self._probes is None:
            raise UserError("ProbeTrainer.test called before train; call train(...) first")
        y, _ = _labels_from_episodes(test_label_dicts, self.variables, "test labels")
        x = self._inputs(test_episodes, "test episodes")
        if len(x) != len(y):
            raise UserError(f"test episodes have {len(x)} frames but test labels {len(y)}; "
                            "pass the labels that came with the episodes")
        if isinstance(self._probes, SupervisedProbes):
            predictions = predict_supervised(self._probes, x)
        else:
            predictions = predict(self._probes, x)
        scores = score(predictions, y, self.variables)
        summary = summarize(scores)
        dicts = []
        for metric, suffix in (("accuracy", "_acc"), ("f1", "_f1")):
            d = {f"{v}{suffix}": float(s) for v, s in zip(scores["variable"], scores[metric])}
            d.update({f"{name}_avg{suffix}": value for name, value in summary[metric].items()})
            dicts.append(d)
        return dicts[0], dicts[1]
