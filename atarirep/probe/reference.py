"""The reference probing loop: one nn.Linear per variable with its own torch Adam, ReduceLROnPlateau and
early stop, frames re-encoded for every probe at every batch, as AtariARI's ProbeTrainer did.

It is the slow, obvious twin of atarirep.probe.linear (tests) and the `probe.fast: false` path: the same
protocol, batches and model selection one probe at a time, not a run of AtariARI's own code. It does not
score (atarirep.scores).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from atarirep import sampling as sampling_lib
from atarirep import seeds
from atarirep.plumbing import devices
from atarirep.probe.features import ENCODE_BATCH_SIZE, Featurizer
from atarirep.probe.linear import (
    ADAM_EPS,
    LR_FACTOR,
    LR_PATIENCE,
    MIN_LR,
    NUM_CLASSES,
    check_keep,
    epoch_batches,
    init_linear,
    labels_tensor,
    split_bounds,
)


class _Features:
    """Batches as probe inputs: features as given, or uint8 frames through a Featurizer (re-encoded each call)."""

    def __init__(self, encoder: nn.Module | None, device: torch.device):
        self.featurizer = None if encoder is None else Featurizer(encoder, device)

    def __enter__(self):
        if self.featurizer is not None:
            self.featurizer.__enter__()
        return self

    def __exit__(self, *exc):
        if self.featurizer is not None:
            self.featurizer.__exit__(*exc)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return batch.float() if self.featurizer is None else self.featurizer(batch)


def fit_probes_reference(
    train_x,
    train_labels,
    val_x,
    val_labels,
    *,
    encoder: nn.Module | None = None,
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
) -> list[nn.Linear]:
    """The reference loop: V separate nn.Linear probes, each with its own torch Adam, torch
    ReduceLROnPlateau and early stopper, all fed the same batches; returns the V probes.

    With `encoder`, train_x/val_x are uint8 frames encoded again for every probe at every batch (the
    reference's cost); without, they are (N, F) features. Same init, batches (`sampling`), val draws and
    model selection (`keep`) as `fit_probes`: on the same features on CPU the two give bitwise the same probes.
    """
    sampling_lib.check(sampling, "probe sampling")
    check_keep(keep)
    dev = devices.resolve(device)
    x, x_val = torch.as_tensor(np.asarray(train_x)), torch.as_tensor(np.asarray(val_x))
    y = labels_tensor(train_labels, num_classes, "train labels").to(dev)
    y_val = labels_tensor(val_labels, num_classes, "val labels").to(dev)
    train_bounds, val_bounds = split_bounds(train_bounds, len(x)), split_bounds(val_bounds, len(x_val))
    num_variables = y.shape[1]
    with _Features(encoder, dev) as featurize:
        num_features = featurize(x[:1].to(dev)).shape[1]
        generator, order_rng, val_rng = seeds.probe_streams(seed)
        probes = []
        for _ in range(num_variables):
            probe = nn.Linear(num_features, num_classes).to(dev)
            weight, bias = init_linear(generator, num_features, num_classes)
            with torch.no_grad():
                probe.weight.copy_(weight)
                probe.bias.copy_(bias)
            probes.append(probe)
        optimizers = [torch.optim.Adam(p.parameters(), lr=lr, eps=ADAM_EPS) for p in probes]
        schedulers = [
            torch.optim.lr_scheduler.ReduceLROnPlateau(
                o, mode="max", patience=LR_PATIENCE, factor=LR_FACTOR, min_lr=MIN_LR
            )
            for o in optimizers
        ]
        best = [-np.inf] * num_variables
        num_bad = [0] * num_variables
        stopped = [False] * num_variables
        best_states = [copy.deepcopy(p.state_dict()) for p in probes]
        for _ in range(epochs):
            if all(stopped):
                break
            for rows in epoch_batches(order_rng, train_bounds, batch_size, sampling):
                batch = x[rows].to(dev)
                for v, probe in enumerate(probes):
                    if stopped[v]:
                        continue
                    loss = F.cross_entropy(probe(featurize(batch)), y[rows.to(dev), v])
                    optimizers[v].zero_grad()
                    loss.backward()
                    optimizers[v].step()
            val_rows = torch.from_numpy(sampling_lib.evaluation_rows(val_rng, val_bounds, sampling, batch_size))
            for v, probe in enumerate(probes):
                if stopped[v]:
                    continue
                predictions = predict_one(probe, x_val, featurize)
                accuracy = float((predictions[val_rows] == y_val[:, v].cpu()[val_rows]).float().mean())
                if accuracy > best[v]:
                    best[v], num_bad[v] = accuracy, 0
                    best_states[v] = copy.deepcopy(probe.state_dict())
                else:
                    num_bad[v] += 1
                    stopped[v] = num_bad[v] >= patience
                if not stopped[v]:
                    schedulers[v].step(accuracy)
    if keep == "best":
        for probe, state in zip(probes, best_states, strict=True):
            probe.load_state_dict(state)
    return probes


def predict_reference(
    probes: list[nn.Linear], x, *, encoder: nn.Module | None = None, device: str = "cpu"
) -> np.ndarray:
    """(N, V) int64 predictions of `fit_probes_reference`'s probes, re-encoding frames for each probe."""
    x = torch.as_tensor(np.asarray(x))
    with _Features(encoder, devices.resolve(device)) as featurize:
        return np.stack([predict_one(p, x, featurize).numpy() for p in probes], axis=1)


def predict_one(probe: nn.Module, x: torch.Tensor, featurize) -> torch.Tensor:
    """(N,) int64 CPU predictions of one probe on inputs x, featurized ENCODE_BATCH_SIZE rows at a time."""
    device = next(probe.parameters()).device
    with torch.no_grad():
        return torch.cat([probe(featurize(chunk.to(device))).argmax(-1).cpu() for chunk in x.split(ENCODE_BATCH_SIZE)])
