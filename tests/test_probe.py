"""Probing and scores: learnable and unlearnable variables, baselines and scores worked out by hand, the
batched probes bitwise against the reference loop, the stage entry point and its one-line errors.
(AtariARI's ProbeTrainer is tested in test_compat.py.)"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import f1_score
from torch import nn

from atarirep import annotations, encoders, episodes, probe, reports, scores
from atarirep.errors import UserError, run_stage
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


# -- baselines -------------------------------------------------------------------------------------
def test_majority_baseline_breaks_a_tie_for_the_label_seen_first_as_the_reference():
    train = np.array([[1, 7], [2, 5], [2, 5], [3, 7]])  # modes: 2; 7 and 5 tie, 7 seen first
    test = np.array([[2, 5], [2, 7], [1, 7], [4, 7]])
    predictions = probe.majority_predictions(train, len(test))
    assert predictions.tolist() == [[2, 7]] * 4  # not 5, the smaller label
    table = scores.score(predictions, test, ["player_x", "score"])
    # player_x: class 2 has precision 2/4, recall 1 -> F1 2/3, weight 2/4; classes 1 and 4 score 0.
    # score: class 7 has precision 3/4, recall 1 -> F1 6/7, weight 3/4; class 5 scores 0.
    assert table["f1"].tolist() == pytest.approx([1 / 3, 9 / 14], abs=1e-12)
    assert table["accuracy"].tolist() == [0.5, 0.75]
    assert table["categories"].tolist() == [("agent_localization",), ("score_clock_lives_display",)]


def test_supervised_baseline_learns_a_position_end_to_end(tiny_encoder):
    rng = np.random.default_rng(0)
    position = rng.integers(0, 3, size=300)  # where a bright block is drawn
    frames = np.zeros((300, 1, 210, 160), np.uint8)
    for i, p in enumerate(position):
        frames[i, 0, 50:90, 20 + 50 * p : 60 + 50 * p] = 255
    labels = np.stack([10 * position, np.full(300, 7)], axis=1)
    model = probe.fit_supervised(
        tiny_encoder,
        frames[:200],
        labels[:200],
        frames[200:250],
        labels[200:250],
        per_variable=True,
        lr=1e-2,
        epochs=15,
        patience=5,
        seed=0,
    )
    assert len(model.models) == 2  # one encoder per variable
    predictions = probe.predict_supervised(model, frames[250:])
    assert np.array_equal(predictions, labels[250:])


class CountingFrames:
    """Frames that record how many rows each read asks for, and refuse to be read whole (no __array__)."""

    def __init__(self, frames: np.ndarray):
        self.frames, self.reads = frames, []

    def __len__(self):
        return len(self.frames)

    def __getitem__(self, index):
        out = self.frames[index]
        self.reads.append(len(out))
        return out


def test_supervised_baseline_reads_frames_a_batch_at_a_time(breakout_dir, tiny_encoder):
    train = episodes.load_splits(breakout_dir)["train"]  # ~1,100 frames: 300 train, 300 val
    frames = {"train": np.asarray(train.frames[:300]), "val": np.asarray(train.frames[300:600])}
    labels = {"train": train.labels[:300, :2], "val": train.labels[300:600, :2]}
    settings = dict(per_variable=False, lr=1e-3, batch_size=64, epochs=2, patience=5, seed=0, sampling="every_frame")
    counted = {k: CountingFrames(v) for k, v in frames.items()}
    lazily = probe.fit_supervised(
        tiny_encoder, counted["train"], labels["train"], counted["val"], labels["val"], **settings
    )
    assert max(counted["train"].reads) == 64 and max(counted["val"].reads) == 256  # never the whole split
    assert sum(counted["train"].reads) == 1 + 2 * 300  # shape check + 2 epochs
    assert sum(counted["val"].reads) == 2 * 300  # one pass an epoch
    in_memory = probe.fit_supervised(
        tiny_encoder, frames["train"], labels["train"], frames["val"], labels["val"], **settings
    )
    for a, b in zip(lazily.models[0].state_dict().values(), in_memory.models[0].state_dict().values()):
        assert torch.equal(a, b)  # the same batches


# -- scores ----------------------------------------------------------------------------------------
def test_weighted_f1_and_accuracy_are_exact_on_a_hand_example():
    labels = np.array([[0, 9], [0, 9], [1, 9], [2, 8]])
    predictions = np.array([[0, 9], [1, 9], [1, 8], [2, 8]])
    table = scores.score(predictions, labels, ["ball_x", "lives"])
    # ball_x: class 0 P 1 R 1/2 -> 2/3 (weight 2/4); class 1 P 1/2 R 1 -> 2/3 (1/4); class 2 -> 1 (1/4).
    # lives: class 9 P 1 R 2/3 -> 4/5 (weight 3/4); class 8 P 1/2 R 1 -> 2/3 (1/4).
    assert table["f1"].tolist() == pytest.approx([0.75, 0.6 + 1 / 6], abs=1e-12)
    assert table["accuracy"].tolist() == [0.75, 0.75]


def test_category_and_across_category_means_are_exact_on_a_hand_example():
    f1 = {"player_x": 0.9, "ball_x": 0.2, "ball_y": 0.4, "score": 1.0, "clock_count": 0.5, "foo": 0.0}
    table = pd.DataFrame(
        {
            "variable": list(f1),
            "categories": [annotations.categories(v) for v in f1],
            "f1": list(f1.values()),
            "accuracy": [v / 2 for v in f1.values()],
        }
    )
    assert table["categories"].tolist() == [
        ("agent_localization",),
        ("small_object_localization",),
        ("small_object_localization",),
        ("score_clock_lives_display",),
        ("score_clock_lives_display", "misc"),
        (),
    ]
    by_category = scores.aggregate(table, "category").set_index("category")
    assert by_category["f1"].to_dict() == pytest.approx(
        {"agent_localization": 0.9, "small_object_localization": 0.3, "score_clock_lives_display": 0.75, "misc": 0.5}
    )
    assert by_category["num_variables"].tolist() == [1, 2, 2, 1]
    assert scores.aggregate(table, "across_categories")["f1"].item() == pytest.approx((0.9 + 0.3 + 0.75 + 0.5) / 4)
    assert scores.aggregate(table, "overall")["f1"].item() == pytest.approx(3.0 / 6)
    summary = scores.summarize(table)
    assert summary["f1"] == pytest.approx(
        {
            "across_categories": 0.6125,
            "overall": 0.5,
            "agent_localization": 0.9,
            "small_object_localization": 0.3,
            "score_clock_lives_display": 0.75,
            "misc": 0.5,
        }
    )  # other_localization absent, not counted as zero
    assert summary["accuracy"]["across_categories"] == pytest.approx(0.6125 / 2)
    assert summary["num_variables"] == 6

    two = pd.concat([table.assign(game="G", method="m1"), table.assign(game="G", method="m2", f1=0.0)])
    across = scores.aggregate(two, "across_categories").set_index("method")["f1"]
    assert across.to_dict() == pytest.approx({"m1": 0.6125, "m2": 0.0})


def test_reports_read_scores_without_importing_torch_or_sklearn():
    code = "import atarirep.reports, sys; assert 'torch' not in sys.modules and 'sklearn' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


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
    optimizers = [torch.optim.Adam([p], lr=lr, eps=linear.ADAM_EPS) for p, lr in zip(singles, learning_rates)]
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


def test_reference_loop_re_encoding_frames_matches_the_fast_path(breakout_dir, tiny_encoder):
    data = episodes.load_splits(breakout_dir)
    torch.manual_seed(0)
    encoder = tiny_encoder()
    frames = {k: np.asarray(data[k].frames[:256]) for k in ("train", "val", "test")}
    labels = {k: data[k].labels[:256] for k in frames}
    settings = dict(lr=3e-3, batch_size=64, epochs=3, patience=15, seed=0)
    features = {k: probe.encode(encoder, frames[k]) for k in frames}
    fast = probe.fit_probes(features["train"], labels["train"], features["val"], labels["val"], **settings)
    slow = probe.fit_probes_reference(
        frames["train"], labels["train"], frames["val"], labels["val"], encoder=encoder, **settings
    )
    assert np.array_equal(
        probe.predict(fast, features["test"]), probe.predict_reference(slow, frames["test"], encoder=encoder)
    )


# -- the stage's entry point --------------------------------------------------------------------
def run_settings(**overrides):
    return {
        **dict(
            method="majority",
            lr=3e-3,
            batch_size=64,
            epochs=2,
            patience=15,
            seed=0,
            device="cpu",
            sampling="every_frame",
            keep="best",
        ),
        **overrides,
    }


def test_run_writes_scores_and_metrics_for_the_majority_baseline(breakout_dir, tmp_path):
    out = tmp_path / "probes" / "Breakout" / "majority"
    table_returned = probe.run(breakout_dir, None, out, **run_settings())
    table = pd.read_csv(out / "scores.csv", keep_default_na=False)
    metrics = json.loads((out / "metrics.json").read_text())
    data = episodes.load_splits(breakout_dir)
    expected = []
    for j in range(len(data["test"].variables)):
        counts = Counter(data["train"].labels[:, j].tolist())
        majority = max(counts, key=counts.get)  # AtariARI's rule, ties included
        expected.append(
            f1_score(
                data["test"].labels[:, j], np.full(len(data["test"]), majority), average="weighted", zero_division=0
            )
        )
    assert table["f1"].tolist() == pytest.approx(expected)
    assert list(table.columns) == ["game", "method", "variable", "categories", "f1", "accuracy", "num_epochs"]
    assert table["categories"].tolist() == [";".join(c) for c in table_returned["categories"]]
    assert metrics["game"] == "Breakout" and metrics["method"] == "majority"
    assert metrics["f1"]["overall"] == pytest.approx(np.mean(expected))
    assert metrics["f1"]["across_categories"] == pytest.approx(
        scores.aggregate(table_returned, "across_categories")["f1"].item()
    )
    assert metrics["num_test_frames"] == len(data["test"])
    read_back = reports.load_results(tmp_path / "probes", ["Breakout"], ["majority"])  # as the report stage
    pd.testing.assert_frame_equal(read_back, table_returned.drop(columns="num_epochs"))


def test_run_probes_an_encoder_file_on_its_train_val_and_test_splits(breakout_dir, tmp_path):
    torch.manual_seed(0)
    encoder = encoders.build("benchmark", feature_size=32)
    encoders.save(encoder, tmp_path / "enc.pt", game="Breakout")
    table = probe.run(breakout_dir, tmp_path / "enc.pt", tmp_path / "random-cnn", **run_settings(method="random-cnn"))
    data = episodes.load_splits(breakout_dir)
    features = {k: probe.encode(encoder, split.frames) for k, split in data.items()}
    probes = probe.fit_probes(
        features["train"],
        data["train"].labels,
        features["val"],
        data["val"].labels,
        lr=3e-3,
        batch_size=64,
        epochs=2,
        patience=15,
        seed=0,
        sampling="every_frame",
        keep="best",
    )
    expected = scores.score(probe.predict(probes, features["test"]), data["test"].labels, data["test"].variables)
    assert table["f1"].tolist() == expected["f1"].tolist()
    assert table["accuracy"].tolist() == expected["accuracy"].tolist()
    metrics = json.loads((tmp_path / "random-cnn" / "metrics.json").read_text())
    assert metrics["method"] == "random-cnn" and metrics["sampling"] == "every_frame"
    assert metrics["num_test_samples"] == metrics["num_test_frames"] == len(data["test"])


def test_reference_sampling_trains_and_tests_on_draws_of_episodes(breakout_dir, tmp_path):
    """AtariARI's protocol: train batches, val and test drawn by episode with replacement (whole batches), the
    last weights tested."""
    torch.manual_seed(0)
    encoder = encoders.build("benchmark", feature_size=32)
    encoders.save(encoder, tmp_path / "enc.pt", game="Breakout")
    settings = run_settings(method="random-cnn", sampling="reference", keep="last")
    table = probe.run(breakout_dir, tmp_path / "enc.pt", tmp_path / "out", **settings)
    data = episodes.load_splits(breakout_dir)
    features = {k: probe.encode(encoder, split.frames) for k, split in data.items()}
    probes = probe.fit_probes(
        features["train"],
        data["train"].labels,
        features["val"],
        data["val"].labels,
        lr=3e-3,
        batch_size=64,
        epochs=2,
        patience=15,
        seed=0,
        train_bounds=data["train"].episode_bounds(),
        val_bounds=data["val"].episode_bounds(),
    )
    rows = probe.stage.scored_test_rows(data["test"].episode_bounds(), sampling="reference", batch_size=64, seed=0)
    assert len(rows) == len(data["test"]) // 64 * 64 and len(np.unique(rows)) < len(rows)  # a draw, with repeats
    predictions = probe.predict(probes, features["test"])[rows]
    expected = scores.score(predictions, data["test"].labels[rows], data["test"].variables)
    assert table["f1"].tolist() == expected["f1"].tolist()
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["sampling"] == "reference" and metrics["num_test_samples"] == len(rows)
    every_frame = probe.run(breakout_dir, tmp_path / "enc.pt", tmp_path / "out2", **run_settings(method="random-cnn"))
    assert table["f1"].tolist() != every_frame["f1"].tolist()


def test_run_trains_the_supervised_baseline_for_supervised_epochs(breakout_dir, tmp_path):
    table = probe.run(
        breakout_dir,
        None,
        tmp_path / "supervised",
        **run_settings(method="supervised", supervised_per_variable=False, supervised_epochs=1),
    )
    data = episodes.load_splits(breakout_dir)
    model = probe.fit_supervised(
        lambda: encoders.build("benchmark"),
        data["train"].frames,
        data["train"].labels,
        data["val"].frames,
        data["val"].labels,
        per_variable=False,
        lr=3e-3,
        batch_size=64,
        epochs=1,
        patience=15,
        seed=0,
        sampling="every_frame",
        keep="best",
    )
    expected = scores.score(
        probe.predict_supervised(model, data["test"].frames), data["test"].labels, data["test"].variables
    )
    assert table["f1"].tolist() == expected["f1"].tolist()
    assert table["num_epochs"].tolist() == [1] * len(table)  # supervised_epochs, not epochs (2)


# -- errors: one line, exit code 2, nothing written --------------------------------------------
def stage_error(capsys, function) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run_stage(lambda: function(), argv=[])
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_an_encoder_of_another_game_is_refused(breakout_dir, tmp_path, capsys):
    encoders.save(encoders.build("benchmark"), tmp_path / "pong.pt", game="Pong")
    err = stage_error(
        capsys, lambda: probe.run(breakout_dir, tmp_path / "pong.pt", tmp_path / "out", **run_settings(method="stdim"))
    )
    assert err == (
        f"error: encoder {tmp_path / 'pong.pt'} was trained on Pong but episodes {breakout_dir} are "
        "Breakout; probe an encoder of the same game (data/encoders/Breakout/...)\n"
    )
    assert not (tmp_path / "out").exists()


def test_an_encoder_that_does_not_take_full_size_frames_is_refused(breakout_dir, tmp_path, capsys):
    encoders.save(encoders.build("nature"), tmp_path / "nature.pt", game="Breakout")
    err = stage_error(
        capsys, lambda: probe.run(breakout_dir, tmp_path / "nature.pt", tmp_path / "out", **run_settings(method="ppo"))
    )
    assert err == (
        "error: encoder NatureCNN raised RuntimeError: Given groups=1, weight of size [32, 4, 8, 8], "
        "expected input[256, 1, 210, 160] to have 4 channels, but got 1 channels instead on a batch of "
        "(256, 1, 210, 160) torch.float32 frames; the probe needs a module that maps float frames "
        "(B, 1, 210, 160) in [0, 1] to (B, F) features\n"
    )
    assert not (tmp_path / "out").exists()


def test_an_empty_split_is_refused(breakout_dir, tmp_path, capsys):
    folder = tmp_path / "no_val"
    shutil.copytree(breakout_dir, folder)
    steps = pd.read_csv(folder / "steps.csv.gz")
    (folder / "steps.csv.gz").write_bytes(gzip.compress(steps[steps["split"] != "val"].to_csv(index=False).encode()))
    meta = json.loads((folder / "meta.json").read_text())
    meta["counts"]["val"] = {"episodes": 0, "frames": 0}
    (folder / "meta.json").write_text(json.dumps(meta))
    err = stage_error(capsys, lambda: probe.run(folder, None, tmp_path / "out", **run_settings()))
    assert err == (
        f"error: episodes {folder} have an empty 'val' split; collect more steps "
        "(collect.probe.steps) so every split gets episodes\n"
    )
    assert not (tmp_path / "out").exists()


def test_a_baseline_given_an_encoder_file_is_refused_before_reading_data(tmp_path):
    with pytest.raises(UserError) as err:
        probe.run(tmp_path / "absent", tmp_path / "enc.pt", tmp_path / "out", **run_settings(method="supervised"))
    assert str(err.value) == (
        f"method 'supervised' trains its own model and takes no encoder file; drop the "
        f"encoder path {tmp_path / 'enc.pt'}"
    )
