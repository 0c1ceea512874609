"""The batched linear probes (atarirep.probe.linear): learnable and unlearnable variables, schedules and Adam
steps bitwise against one torch probe per variable. (AtariARI's ProbeTrainer is tested in tests/test_compat.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from atarirep import probe, scores
from atarirep.probe import linear

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def synthetic(num_rows: int, seed: int = 0):
    """Features (N, 8) with four variables: linear in the features, pure noise (70/30), constant, linear."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num_rows, 8)).astype(np.float32)
    linear = 40 + 10 * np.digitize(x[:, 0] - x[:, 1], [-0.8, 0.0, 0.8])  # 4 classes: 40, 50, 60, 70
    noise = rng.choice([3, 200], size=num_rows, p=[0.7, 0.3])
    constant = np.full(num_rows, 17)
    two = 100 + (x[:, 2] + 0.5 * x[:, 3] > 0)
    return x, np.stack([linear, noise, constant, two], axis=1)


def split(x, y, n_train, n_val):
    return (
        (x[:n_train], y[:n_train]),
        (x[n_train : n_train + n_val], y[n_train : n_train + n_val]),
        (x[n_train + n_val :], y[n_train + n_val :]),
    )


# -- learning ------------------------------------------------------------------------------------
def test_probe_reads_a_linear_variable_near_perfectly_and_noise_only_at_the_majority_rate():
    x, y = synthetic(3000)
    (xt, yt), (xv, yv), (xs, ys) = split(x, y, 2000, 400)
    probes = probe.fit_probes(xt, yt, xv, yv, lr=1e-2, epochs=40, patience=8, seed=0)
    table = scores.score(probe.predict(probes, xs), ys, ["a_x", "noise", "constant", "b_x"])
    assert table.loc[0, "f1"] > 0.93 and table.loc[3, "f1"] > 0.95
    assert table.loc[2, "f1"] == 1.0
    majority_rate = np.mean(ys[:, 1] == 3)
    assert abs(table.loc[1, "accuracy"] - majority_rate) < 0.03  # no better than always saying 3
    assert probes.num_epochs.min() < probes.num_epochs.max()  # probes stopped each on its own


def test_probe_on_linearly_separable_features_is_exact():
    """Three well-separated clusters per variable, two variables with different class values: every
    test frame right, so a probe that mixes up variables, classes or columns scores below 1."""
    rng = np.random.default_rng(0)
    centres = np.array([[4, 0, 0], [0, 4, 0], [0, 0, 4]], np.float32)
    first, second = rng.integers(0, 3, size=600), rng.integers(0, 3, size=600)
    x = np.concatenate([centres[first], centres[second]], axis=1) + rng.normal(0, 0.3, (600, 6)).astype(np.float32)
    y = np.stack([np.array([5, 120, 255])[first], np.array([0, 1, 2])[second]], axis=1)
    (xt, yt), (xv, yv), (xs, ys) = split(x, y, 400, 100)
    probes = probe.fit_probes(xt, yt, xv, yv, lr=1e-2, epochs=30, patience=30, seed=0)
    assert probes.val_accuracy.tolist() == [1.0, 1.0]
    assert np.array_equal(probe.predict(probes, xs), ys)
    assert scores.score(probe.predict(probes, xs), ys, ["a_x", "b_x"])["f1"].tolist() == [1.0, 1.0]


def test_a_probe_stops_after_patience_epochs_without_val_improvement():
    """Val labels of a class the train labels never show: val accuracy is 0 from epoch 1 on, epoch 1
    is the best, and the probe stops after 1 + patience epochs (an off-by-one stops at 4 or 6)."""
    x, _ = synthetic(400)
    train_labels, val_labels = np.full((300, 1), 17), np.full((100, 1), 200)
    probes = probe.fit_probes(x[:300], train_labels, x[300:], val_labels, lr=1e-2, epochs=20, patience=4, seed=0)
    assert probes.num_epochs.tolist() == [5] and probes.val_accuracy.tolist() == [0.0]


# -- the batched probes against the reference loop ----------------------------------------------------
def test_per_variable_schedules_follow_torchs_plateau_and_the_reference_early_stop():
    accuracies = np.array(
        [
            [0.1, 0.5],
            [0.2, 0.5],
            [0.2, 0.4],
            [0.2, 0.5],
            [0.2, 0.50001],
            [0.2, 0.5],
            [0.2, 0.3],
            [0.2, 0.5],
            [0.3, 0.5],
            [0.3, 0.5],
            [0.3, 0.5],
            [0.3, 0.5],
            [0.3, 0.5],
            [0.3, 0.5],
            [0.3, 0.5],
            [0.3, 0.5],
            [0.3, 0.5],
            [0.3, 0.5],
        ]
    )
    schedules = linear.Schedules(2, lr=1e-3, patience=9)
    optimizers = [torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1e-3) for _ in range(2)]
    plateaus = [
        torch.optim.lr_scheduler.ReduceLROnPlateau(o, mode="max", patience=5, factor=0.2, min_lr=1e-5)
        for o in optimizers
    ]
    best, num_bad, stopped_at = [-np.inf] * 2, [0] * 2, [None] * 2
    for epoch, accuracy in enumerate(accuracies):
        running = schedules.active.copy()
        schedules.update(accuracy)
        for v in range(2):  # the reference, one probe at a time
            if stopped_at[v] is not None:
                continue
            if accuracy[v] > best[v]:
                best[v], num_bad[v] = accuracy[v], 0
            else:
                num_bad[v] += 1
            if num_bad[v] >= 9:
                stopped_at[v] = epoch
                continue
            plateaus[v].step(accuracy[v])
        assert schedules.lr.tolist() == pytest.approx([o.param_groups[0]["lr"] for o in optimizers], rel=1e-12)
        assert (running & ~schedules.active).tolist() == [stopped_at[v] == epoch for v in range(2)]
    assert stopped_at == [17, 13] and schedules.lr[0] < 1e-3 > schedules.lr[1]  # both plateaued and stopped


def test_batched_adam_steps_each_variable_exactly_as_its_own_torch_adam():
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(3, 5, 4, generator=generator)
    learning_rates = [1e-2, 3e-4, 0.0]  # lr 0: a stopped probe stays frozen
    singles = [start[v].clone().requires_grad_() for v in range(3)]
    optimizers = [
        torch.optim.Adam([p], lr=lr, eps=linear.ADAM_EPS) for p, lr in zip(singles, learning_rates, strict=True)
    ]
    batched = start.clone()
    adam = linear.BatchedAdam([batched])
    for _ in range(30):
        grads = torch.randn(3, 5, 4, generator=generator)
        for v in range(3):
            singles[v].grad = grads[v].clone()
            optimizers[v].step()
        adam.step([grads], torch.tensor(learning_rates, dtype=torch.float64))
    assert all(torch.equal(batched[v], singles[v].detach()) for v in range(3))
    assert torch.equal(batched[2], start[2]) and not torch.equal(batched[0], start[0])


@pytest.mark.parametrize("sampling, keep", [("every_frame", "best"), ("reference", "last"), ("reference", "best")])
def test_fast_path_equals_one_probe_at_a_time_on_the_same_features(sampling, keep):
    """Same init, batches, val draws and schedules, and the same float operations per probe: bitwise the
    same probes, so the same val accuracies, epochs trained and test predictions. The settings make probes
    stop at different epochs (masking), cut their lr on plateaus (patience 8 > 5) and end each epoch
    with a short batch (700 = 10 x 64 + 60; every_frame) or draw by episode (reference)."""
    x, y = synthetic(1000, seed=1)
    (xt, yt), (xv, yv), (xs, ys) = split(x, y, 700, 150)
    bounds = dict(train_bounds=np.array([0, 50, 300, 310, 700]), val_bounds=np.array([0, 100, 150]))
    settings = dict(lr=1e-2, batch_size=64, epochs=25, patience=8, seed=3, sampling=sampling, keep=keep, **bounds)
    fast = probe.fit_probes(xt, yt, xv, yv, **settings)
    slow = probe.fit_probes_reference(xt, yt, xv, yv, **settings)
    for v, reference in enumerate(slow):
        assert torch.equal(fast.weight[v], reference.weight.detach())
        assert torch.equal(fast.bias[v], reference.bias.detach())
    assert np.array_equal(probe.predict(fast, xs), probe.predict_reference(slow, xs))
    if sampling == "every_frame":  # the kept weights' val accuracy, on every val row
        slow_val_accuracy = (probe.predict_reference(slow, xv) == yv).mean(axis=0)
        np.testing.assert_allclose(fast.val_accuracy, slow_val_accuracy, rtol=0, atol=1e-6)
    assert fast.num_epochs.min() < fast.num_epochs.max()  # early stops and masking exercised
    f1 = scores.score(probe.predict(fast, xs), ys, ["a_x", "noise", "constant", "b_x"])["f1"]
    assert f1[0] > 0.6  # and it learned (chance: 0.25)
