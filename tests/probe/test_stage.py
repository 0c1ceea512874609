"""The probe stage's entry point (atarirep.probe.stage.run): its outputs and its one-line errors."""

from __future__ import annotations

import gzip
import json
import shutil
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import f1_score

from atarirep import encoders, episodes, probe, reports, scores
from atarirep.plumbing.errors import UserError, run_stage
from tests.conftest import PROBE_SETTINGS

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- the stage's entry point --------------------------------------------------------------------
def run_settings(**overrides):
    return {"method": "majority", **PROBE_SETTINGS, **overrides}


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
