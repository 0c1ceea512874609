"""Linear probes: one linear classifier per state variable on frozen features, all trained as one layer.

The reference protocol (docs/protocols.md 2) for each of V probes at once: Linear(F -> 256), cross-entropy,
Adam, a plateau learning-rate schedule and early stopping, each per variable. This module does not
compute features (atarirep.probe.features) or scores (atarirep.scores).

Layouts: features (N, F) float32, one row per frame; labels (N, V) integers in 0..255, column j
holding variable j.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from atarirep import sampling as sampling_lib
from atarirep import seeds
from atarirep.plumbing import devices
from atarirep.plumbing.errors import UserError

NUM_CLASSES = 256  # labels are RAM bytes
ADAM_BETAS = (0.9, 0.999)  # torch's defaults, which the reference used
ADAM_EPS = 1e-5
LR_PATIENCE = 5  # ReduceLROnPlateau on val accuracy: patience 5, factor 0.2, min 1e-5
LR_FACTOR = 0.2
MIN_LR = 1e-5
LR_EPS = 1e-8  # torch's ReduceLROnPlateau eps: smaller lr changes are skipped
PLATEAU_THRESHOLD = 1e-4  # torch's ReduceLROnPlateau default (relative), which the reference used
PREDICT_BATCH_SIZE = 1024
KEEP = ("last", "best")  # weights a probe is tested with: its last epoch's (AtariARI) or its best val epoch's


def labels_tensor(labels, num_classes: int, what: str) -> torch.Tensor:
    """(N, V) int64 tensor; UserError if a label falls outside 0..num_classes-1."""
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    if y.ndim != 2:
        raise ValueError(f"{what} must be (N, V), got shape {tuple(y.shape)}")
    if y.numel() and (y.min() < 0 or y.max() >= num_classes):
        raise UserError(
            f"{what} hold values outside 0..{num_classes - 1} (min {int(y.min())}, max "
            f"{int(y.max())}); labels must be RAM bytes"
        )
    return y


def epoch_batches(
    rng: np.random.Generator, bounds: np.ndarray, batch_size: int, sampling: str = "reference"
) -> Iterator[torch.Tensor]:
    """One epoch of train row indices (int64 tensors), `batch_size` at a time (atarirep.sampling): AtariARI's draw
    of one row per frame, episodes with replacement, the last partial batch dropped (reference), or every row
    once in a seeded shuffle, the last batch possibly smaller (every_frame). bounds: the split's episode bounds."""
    order = torch.from_numpy(sampling_lib.epoch_order(rng, bounds, sampling))
    batches = order.split(batch_size)
    if sampling == "reference" and len(batches) > 1 and len(batches[-1]) < batch_size:
        batches = batches[:-1]
    yield from batches


def split_bounds(bounds, num_rows: int) -> np.ndarray:
    """A split's episode bounds as int64, or, for rows given without episodes (None), one episode of them all."""
    return np.array([0, num_rows], np.int64) if bounds is None else np.asarray(bounds, np.int64)


def init_linear(generator: torch.Generator, in_features: int, out_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    """nn.Linear's default initialisation drawn from `generator`: weight (out, in), bias (out,)."""
    bound = 1 / math.sqrt(in_features)
    weight = torch.empty(out_features, in_features).uniform_(-bound, bound, generator=generator)
    bias = torch.empty(out_features).uniform_(-bound, bound, generator=generator)
    return weight, bias


class Schedules:
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
        val_accuracy = np.asarray(val_accuracy, dtype=np.float64)
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
        self.lr = np.where(reduce & (self.lr - new_lr > LR_EPS), new_lr, self.lr)
        self.plateau_bad[reduce] = 0
        self.active = running & ~stopped
        return improved


@dataclass
class LinearProbes:
    """V linear probes held as one layer: logits[n, v] = features[n] @ weight[v].T + bias[v].

    weight (V, C, F) (each row block nn.Linear's (out, in) weight), bias (V, C) float32;
    num_epochs (V,) epochs each probe trained; val_accuracy (V,) the val accuracy of the weights held (the best
    epoch's for keep="best", the last epoch's for keep="last").
    """

    weight: torch.Tensor
    bias: torch.Tensor
    num_epochs: np.ndarray
    val_accuracy: np.ndarray

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(B, F) -> (B, V, C)."""
        num_variables, num_classes, num_features = self.weight.shape
        out = torch.addmm(self.bias.reshape(-1), features, self.weight.reshape(-1, num_features).T)
        return out.view(-1, num_variables, num_classes)


def predict(probes: LinearProbes, features) -> np.ndarray:
    """(N, V) int64 predicted class of each variable for (N, F) features."""
    device = probes.weight.device
    features = torch.as_tensor(features, dtype=torch.float32)
    out = []
    with torch.no_grad():
        for chunk in features.split(PREDICT_BATCH_SIZE):
            out.append(probes.logits(chunk.to(device)).argmax(-1).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, probes.bias.shape[0]), np.int64)


class BatchedAdam:
    """Adam with one learning rate per variable along axis 0 of every parameter.

    The update is torch.optim.Adam's single-tensor one, operation for operation (lerp, addcmul,
    sqrt / bias correction + eps, step * m / denom), so each variable's slice moves as it would under
    its own torch Adam. A probe given lr 0 stays frozen, as it would with its own optimizer left idle.
    """

    def __init__(self, params: Sequence[torch.Tensor], betas=ADAM_BETAS, eps: float = ADAM_EPS):
        self.params = list(params)
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.step_count = 0
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self, grads: Sequence[torch.Tensor], lr: torch.Tensor) -> None:
        """One step with (V,) float64 learning rates on the parameters' device (torch keeps an lr in float64)."""
        self.step_count += 1
        bias_correction1 = 1 - self.beta1**self.step_count
        bias_correction2_sqrt = (1 - self.beta2**self.step_count) ** 0.5
        # torch's addcdiv_(m, denom, value=-lr / bias_correction1) rounds the step size to float32 once
        neg_step_size = (-lr / bias_correction1).float()
        for p, g, m, v in zip(self.params, grads, self.exp_avg, self.exp_avg_sq, strict=True):
            m.lerp_(g, 1 - self.beta1)
            v.mul_(self.beta2).addcmul_(g, g, value=1 - self.beta2)
            denom = (v.sqrt() / bias_correction2_sqrt).add_(self.eps)
            p.add_(neg_step_size.view(-1, *[1] * (p.ndim - 1)) * m / denom)


def fit_probes(
    train_features,
    train_labels,
    val_features,
    val_labels,
    *,
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
) -> LinearProbes:
    """Train one linear probe per variable on (N, F) features and (N, V) labels, all V at once.

    The reference protocol (docs/protocols.md 2) per probe: Linear(F -> 256), cross-entropy, Adam (lr, eps
    1e-5), batch 64, ReduceLROnPlateau on val accuracy (patience 5, factor 0.2, min 1e-5), early stop
    after `patience` epochs without val improvement, at most `epochs`. The V probes form one (V, C, F)
    layer; each variable's loss is its own mean cross-entropy, so gradients do not mix, and each has
    its own lr, plateau and early stop (a stopped probe gets lr 0). Same seed -> same probes.
    `sampling` (atarirep.sampling): reference draws train batches and each epoch's val sample as AtariARI
    does, from the splits' episode bounds `train_bounds` / `val_bounds` (None: the rows as one episode);
    every_frame visits each train row once an epoch and scores every val row. `keep`: "last" returns each
    probe's weights when it stopped (AtariARI), "best" those of its best val epoch.
    `device`: auto, cpu or cuda (atarirep.plumbing.devices).
    """
    # Departs from AtariARI: features are computed once (`encode`) and all probes train as one layer,
    # because the reference re-encodes every batch for every probe: the same numbers at V x epochs the cost.
    sampling_lib.check(sampling, "probe sampling")
    check_keep(keep)
    dev = devices.resolve(device)
    x = torch.as_tensor(train_features, dtype=torch.float32).to(dev)
    x_val = torch.as_tensor(val_features, dtype=torch.float32).to(dev)
    y = labels_tensor(train_labels, num_classes, "train labels").to(dev)
    y_val = labels_tensor(val_labels, num_classes, "val labels").to(dev)
    num_rows, num_features = x.shape
    train_bounds, val_bounds = split_bounds(train_bounds, num_rows), split_bounds(val_bounds, len(x_val))
    num_variables = y.shape[1]
    generator, order_rng, val_rng = seeds.probe_streams(seed)
    inits = [init_linear(generator, num_features, num_classes) for _ in range(num_variables)]
    weight = torch.stack([w for w, _ in inits]).to(dev).requires_grad_()  # (V, C, F)
    bias = torch.stack([b for _, b in inits]).to(dev).requires_grad_()  # (V, C)
    best = LinearProbes(
        weight.detach().clone(), bias.detach().clone(), np.zeros(num_variables, int), np.zeros(num_variables)
    )
    current = LinearProbes(weight, bias, best.num_epochs, best.val_accuracy)
    last_val_accuracy = np.zeros(num_variables)
    adam = BatchedAdam([weight, bias])
    schedules = Schedules(num_variables, lr, patience)
    for _ in tqdm(range(epochs), desc="probe epochs", disable=not progress, leave=False):
        if not schedules.active.any():
            break
        lr_now = torch.as_tensor(np.where(schedules.active, schedules.lr, 0.0), device=dev)  # (V,) float64
        for rows in epoch_batches(order_rng, train_bounds, batch_size, sampling):
            rows = rows.to(dev)
            logits = current.logits(x[rows])  # (B, V, C)
            # The sum of V mean cross-entropies: variable v's gradient is its own loss's gradient. Rows of
            # (B * V, C) logits are each reduced as nn.Linear's (B, C) rows are, so every probe's gradient
            # is bitwise the reference loop's (on CPU; see tests/probe/test_reference.py).
            per_row = F.cross_entropy(logits.reshape(-1, num_classes), y[rows].reshape(-1), reduction="none")
            loss = per_row.view(len(rows), num_variables).mean(0).sum()
            adam.step(torch.autograd.grad(loss, [weight, bias]), lr_now)
        running = schedules.active.copy()
        best.num_epochs[running] += 1
        val_rows = torch.from_numpy(sampling_lib.evaluation_rows(val_rng, val_bounds, sampling, batch_size)).to(dev)
        with torch.no_grad():
            val_predictions = torch.as_tensor(predict(current, x_val), device=dev)
            val_accuracy = (val_predictions[val_rows] == y_val[val_rows]).float().mean(0).cpu().numpy()
        last_val_accuracy[running] = val_accuracy[running]
        improved = schedules.update(val_accuracy)
        keep_rows = torch.as_tensor(improved, device=dev)
        with torch.no_grad():
            best.weight[keep_rows] = weight[keep_rows]
            best.bias[keep_rows] = bias[keep_rows]
        best.val_accuracy[improved] = schedules.best[improved]
    if keep == "last":  # a stopped probe's lr was 0 since: its weights are those of the epoch it stopped at
        return LinearProbes(weight.detach(), bias.detach(), best.num_epochs, last_val_accuracy)
    return best


def check_keep(keep: str) -> None:
    """UserError unless `keep` is one of KEEP."""
    if keep not in KEEP:
        raise UserError(
            f"probe keep={keep!r} is not offered; use one of {', '.join(KEEP)} "
            "(last: each probe's last weights, as AtariARI; best: its best validation epoch's)"
        )
