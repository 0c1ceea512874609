"""The reference probing loop: one nn.Linear per variable with its own torch Adam, ReduceLROnPlateau and
early stop, frames re-encoded for every probe at every batch, as AtariARI's ProbeTrainer did.

It is the slow, obvious ground truth of atarirep.probe.linear (tests) and the `probe.fast: false`
path; it does not score (atarirep.scores).
"""
from __future__ import annotations

import copy
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from atarirep import devices, encoders
from atarirep.probe.features import ENCODE_BATCH_SIZE
from atarirep.probe.linear import (ADAM_EPS, LR_FACTOR, LR_PATIENCE, MIN_LR, NUM_CLASSES, epoch_batches,
                                   init_linear, labels_tensor)


def fit_probes_reference(train_x, train_labels, val_x, val_labels, *, encoder: nn.Module | None = None,
                         lr: float = 3e-4, batch_size: int = 64, epochs: int = 100, patience: int = 15,
                         seed: int = 0, device: str = "cpu", num_classes: int = NUM_CLASSES) -> list[nn.Linear]:
    """The reference loop: V separate nn.Linear probes, each with its own torch Adam, torch
    ReduceLROnPlateau and early stopper, all fed the same batches; returns the V probes.

    With `encoder`, train_x/val_x are uint8 frames encoded again for every probe at every batch (the
    reference's cost); without, they are (N, F) features. Same init, batch order and model selection
    as `fit_probes`: on the same features on CPU the two give bitwise the same probes.
    """
    dev = devices.resolve(device)
    featurize = _featurizer(encoder, dev)
    x, x_val = torch.as_tensor(np.asarray(train_x)), torch.as_tensor(np.asarray(val_x))
    y = labels_tensor(train_labels, num_classes, "train labels").to(dev)
    y_val = labels_tensor(val_labels, num_classes, "val labels").to(dev)
    num_variables = y.shape[1]
    num_features = featurize(x[:1].to(dev)).shape[1]
    generator = torch.Generator().manual_seed(seed)
    probes = []
    for _ in range(num_variables):
        probe = nn.Linear(num_features, num_classes).to(dev)
        weight, bias = init_linear(generator, num_features, num_classes)
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
        for rows in epoch_batches(order_rng, len(x), batch_size):
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
            accuracy = float((predict_one(probe, x_val, featurize) == y_val[:, v].cpu()).float().mean())
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
                      device: str = "cpu") -> np.ndarray:
    """(N, V) int64 predictions of `fit_probes_reference`'s probes, re-encoding frames for each probe."""
    featurize = _featurizer(encoder, devices.resolve(device))
    x = torch.as_tensor(np.asarray(x))
    return np.stack([predict_one(p, x, featurize).numpy() for p in probes], axis=1)


def _featurizer(encoder: nn.Module | None, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    if encoder is None:
        return lambda batch: batch.float()
    layout = devices.memory_format(device)   # the fast path's layout: the same features, bit for bit
    encoder.eval().to(device, memory_format=layout)

    def featurize(batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return encoder(encoders.preprocess(batch).contiguous(memory_format=layout))
    return featurize


def predict_one(probe: nn.Module, x: torch.Tensor, featurize) -> torch.Tensor:
    """(N,) int64 CPU predictions of one probe on inputs x, featurized ENCODE_BATCH_SIZE rows at a time."""
    device = next(probe.parameters()).device
    with torch.no_grad():
        return torch.cat([probe(featurize(chunk.to(device))).argmax(-1).cpu()
                          for chunk in x.split(ENCODE_BATCH_SIZE)])
