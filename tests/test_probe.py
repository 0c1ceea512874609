"""Probing: learnable and unlearnable variables, baselines, means by hand, fast path against the
reference loop, AtariARI's ProbeTrainer, the stage entry point and its one-line errors."""
from __future__ import annotations

import gzip
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import f1_score
from torch import nn

from atarirep import annotations, collection, encoders, episodes, probe, reports
from atarirep.errors import UserError, run_stage

FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny matrices run far faster on one thread than on two contended ones (the shared CI box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def breakout_dir(tmp_path_factory):
    """About 1,500 real Breakout frames (random agent), split 70/10/20 by episode: ~2 s to collect."""
    out = tmp_path_factory.mktemp("episodes") / "breakout"
    collection.collect("Breakout", out, steps=1600, splits_fractions=FRACTIONS, num_envs=2,
                       min_episode_length=16, seed=0)
    return out


class TinyEncoder(nn.Module):
    """A cheap stand-in for a trained encoder: 10x10 average pooling, then a linear map to 16 features."""

    feature_size = 16

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.AvgPool2d(10), nn.Flatten(), nn.Linear(21 * 16, 16))

    def forward(self, x):
        return self.layers(x)


def synthetic(num_rows: int, seed: int = 0):
    """Features (N, 8) with four variables: linear in the features, pure noise (70/30), constant, linear."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num_rows, 8)).astype(np.float32)
    linear = 40 + 10 * np.digitize(x[:, 0] - x[:, 1], [-0.8, 0.0, 0.8])       # 4 classes: 40, 50, 60, 70
    noise = rng.choice([3, 200], size=num_rows, p=[0.7, 0.3])
    constant = np.full(num_rows, 17)
    two = 100 + (x[:, 2] + 0.5 * x[:, 3] > 0)
    return x, np.stack([linear, noise, constant, two], axis=1)


def split(x, y, n_train, n_val):
    return (x[:n_train], y[:n_train]), (x[n_train:n_train + n_val], y[n_train:n_train + n_val]), \
        (x[n_train + n_val:], y[n_train + n_val:])


# -- learning ------------------------------------------------------------------------------------
def test_probe_reads_a_linear_variable_near_perfectly_and_noise_only_at_the_majority_rate():
    x, y = synthetic(3000)
    (xt, yt), (xv, yv), (xs, ys) = split(x, y, 2000, 400)
    probes = probe.fit_probes(xt, yt, xv, yv, lr=1e-2, epochs=40, patience=8, seed=0)
    scores = probe.score(probe.predict(probes, xs), ys, ["a_x", "noise", "constant", "b_x"])
    assert scores.loc[0, "f1"] > 0.93 and scores.loc[3, "f1"] > 0.95
    assert scores.loc[2, "f1"] == 1.0
    majority_rate = np.mean(ys[:, 1] == 3)
    assert abs(scores.loc[1, "accuracy"] - majority_rate) < 0.03     # no better than always saying 3
    assert probes.num_epochs.min() < probes.num_epochs.max()           # probes stopped each on its own


def test_majority_baseline_is_exact_on_a_hand_example():
    train = np.array([[1, 5], [2, 5], [2, 7], [3, 7]])          # modes: 2; 5 and 7 tie -> 5
    test = np.array([[2, 5], [2, 7], [1, 7], [4, 7]])
    predictions = probe.majority_predictions(train, len(test))
    assert predictions.tolist() == [[2, 5]] * 4
    scores = probe.score(predictions, test, ["player_x", "score"])
    # player_x: class 2 has precision 2/4, recall 1 -> F1 2/3, weight 2/4; classes 1 and 4 score 0.
    # score: class 5 has precision 1/4, recall 1 -> F1 0.4, weight 1/4; class 7 scores 0.
    assert scores["f1"].tolist() == pytest.approx([1 / 3, 0.1], abs=1e-12)
    assert scores["accuracy"].tolist() == [0.5, 0.25]
    assert scores["categories"].tolist() == [("agent_localization",), ("score_clock_lives_display",)]


def test_category_and_across_category_means_are_exact_on_a_hand_example():
    f1 = {"player_x": 0.9, "ball_x": 0.2, "ball_y": 0.4, "score": 1.0, "clock_count": 0.5, "foo": 0.0}
    scores = pd.DataFrame({"variable": list(f1), "categories": [annotations.categories(v) for v in f1],
                           "f1": list(f1.values()), "accuracy": [v / 2 for v in f1.values()]})
    assert scores["categories"].tolist() == [("agent_localization",), ("small_object_localization",),
                                             ("small_object_localization",), ("score_clock_lives_display",),
                                             ("score_clock_lives_display", "misc"), ()]
    by_category = probe.aggregate(scores, "category").set_index("category")
    assert by_category["f1"].to_dict() == pytest.approx({
        "agent_localization": 0.9, "small_object_localization": 0.3, "score_clock_lives_display": 0.75,
        "misc": 0.5})
    assert by_category["num_variables"].tolist() == [1, 2, 2, 1]
    assert probe.aggregate(scores, "across_categories")["f1"].item() == pytest.approx((0.9 + 0.3 + 0.75 + 0.5) / 4)
    assert probe.aggregate(scores, "overall")["f1"].item() == pytest.approx(3.0 / 6)
    summary = probe.summarize(scores)
    assert summary["f1"]["across_categories"] == pytest.approx(0.6125)
    assert summary["accuracy"]["across_categories"] == pytest.approx(0.6125 / 2)
    assert "other_localization" not in summary["f1"]          # absent, not counted as zero

    two = pd.concat([scores.assign(game="G", method="m1"), scores.assign(game="G", method="m2", f1=0.0)])
    across = probe.aggregate(two, "across_categories").set_index("method")["f1"]
    assert across.to_dict() == pytest.approx({"m1": 0.6125, "m2": 0.0})


# -- the fast path against the reference ----------------------------------------------------------
def test_per_variable_schedules_follow_torchs_plateau_and_the_reference_early_stop():
    accuracies = np.array([[0.1, 0.5], [0.2, 0.5], [0.2, 0.4], [0.2, 0.5], [0.2, 0.50001], [0.2, 0.5],
                           [0.2, 0.3], [0.2, 0.5], [0.3, 0.5], [0.3, 0.5], [0.3, 0.5], [0.3, 0.5],
                           [0.3, 0.5], [0.3, 0.5], [0.3, 0.5], [0.3, 0.5], [0.3, 0.5], [0.3, 0.5]])
    schedules = probe._Schedules(2, lr=1e-3, patience=9)
    optimizers = [torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1e-3) for _ in range(2)]
    plateaus = [torch.optim.lr_scheduler.ReduceLROnPlateau(o, mode="max", patience=5, factor=0.2, min_lr=1e-5)
                for o in optimizers]
    best, num_bad, stopped_at = [-np.inf] * 2, [0] * 2, [None] * 2
    for epoch, accuracy in enumerate(accuracies):
        running = schedules.active.copy()
        schedules.update(accuracy)
        for v in range(2):                                    # the reference, one probe at a time
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
    assert stopped_at == [17, 13] and schedules.lr[0] < 1e-3 > schedules.lr[1]   # both plateaued and stopped


def test_fast_path_matches_one_probe_at_a_time_on_the_same_features():
    x, y = synthetic(1000, seed=1)
    (xt, yt), (xv, yv), (xs, ys) = split(x, y, 700, 150)
    settings = dict(lr=1e-2, batch_size=64, epochs=25, patience=8, seed=3)   # > 6: plateaus come first
    fast = probe.fit_probes(xt, yt, xv, yv, **settings)
    slow = probe.fit_probes_reference(xt, yt, xv, yv, **settings)
    names = ["a_x", "noise", "constant", "b_x"]
    f1_fast = probe.score(probe.predict(fast, xs), ys, names)["f1"].to_numpy()
    f1_slow = probe.score(probe.predict_reference(slow, xs), ys, names)["f1"].to_numpy()
    np.testing.assert_allclose(f1_fast, f1_slow, atol=0.02)
    assert fast.num_epochs.min() < fast.num_epochs.max()              # early stops and masking exercised
    assert f1_fast[0] > 0.6                                           # and it learned (chance: 0.25)


def test_reference_loop_re_encoding_frames_matches_the_fast_path(breakout_dir):
    data = episodes.load_splits(breakout_dir)
    torch.manual_seed(0)
    encoder = TinyEncoder()
    frames = {k: np.asarray(data[k].frames[:256]) for k in ("train", "val", "test")}
    labels = {k: data[k].labels[:256] for k in frames}
    settings = dict(lr=3e-3, batch_size=64, epochs=3, patience=15, seed=0)
    features = {k: probe.encode(encoder, frames[k]) for k in frames}
    fast = probe.fit_probes(features["train"], labels["train"], features["val"], labels["val"], **settings)
    slow = probe.fit_probes_reference(frames["train"], labels["train"], frames["val"], labels["val"],
                                      encoder=encoder, **settings)
    agreement = (probe.predict(fast, features["test"])
                 == probe.predict_reference(slow, frames["test"], encoder=encoder)).mean(axis=0)
    assert agreement.min() >= 0.97     # equal here; rounding may flip a rare prediction elsewhere


def test_supervised_baseline_learns_a_position_end_to_end():
    rng = np.random.default_rng(0)
    position = rng.integers(0, 3, size=300)                          # where a bright block is drawn
    frames = np.zeros((300, 1, 210, 160), np.uint8)
    for i, p in enumerate(position):
        frames[i, 0, 50:90, 20 + 50 * p:60 + 50 * p] = 255
    labels = np.stack([10 * position, np.full(300, 7)], axis=1)
    model = probe.fit_supervised(TinyEncoder, frames[:200], labels[:200], frames[200:250], labels[200:250],
                                 per_variable=True, lr=1e-2, epochs=15, patience=5, seed=0)
    assert len(model.models) == 2                                      # one encoder per variable
    scores = probe.score(probe.predict_supervised(model, frames[250:]), labels[250:], ["player_x", "lives"])
    assert scores["f1"].tolist() == pytest.approx([1.0, 1.0], abs=0.05)


# -- AtariARI's ProbeTrainer --------------------------------------------------------------------
def atariari_episodes(split: episodes.Episodes):
    """The reference get_episodes layout: per-episode frame tensors and per-episode lists of label dicts."""
    bounds = split.episode_bounds()
    frames = torch.from_numpy(np.asarray(split.frames))
    label_dicts = split.label_dicts()
    return ([frames[a:b] for a, b in zip(bounds[:-1], bounds[1:])],
            [label_dicts[a:b] for a, b in zip(bounds[:-1], bounds[1:])])


def test_probe_trainer_round_trip_with_atariari_episodes(breakout_dir):
    data = episodes.load_splits(breakout_dir)
    (tr_eps, tr_labels), (val_eps, val_labels), (test_eps, test_labels) = (
        atariari_episodes(data[k]) for k in ("train", "val", "test"))
    torch.manual_seed(0)
    encoder = TinyEncoder()
    trainer = probe.ProbeTrainer(encoder, representation_len=encoder.feature_size, epochs=2, lr=3e-3,
                                 device="cpu")
    trainer.train(tr_eps, val_eps, tr_labels, val_labels)
    acc, f1 = trainer.test(test_eps, test_labels)
    variables = data["train"].variables
    assert [k for k in f1 if k[:-3] in variables] == [f"{v}_f1" for v in variables]
    assert {"overall_avg_f1", "across_categories_avg_f1", "overall_avg_acc", "across_categories_avg_acc",
            "small_object_localization_avg_f1", "agent_localization_avg_f1"} <= set(f1) | set(acc)
    assert f1["overall_avg_f1"] == pytest.approx(np.mean([f1[f"{v}_f1"] for v in variables]))
    assert all(0 <= value <= 1 for value in [*acc.values(), *f1.values()])
    # the same episodes as labelled by atarirep.compat.get_episodes ({variable: (T,) tensor} per episode)
    as_columns = [{v: torch.tensor([step[v] for step in ep]) for v in variables} for ep in test_labels]
    assert trainer.test(test_eps, as_columns) == (acc, f1)


def test_probe_trainer_fully_supervised_trains_copies_and_leaves_the_encoder_alone(breakout_dir):
    data = episodes.load_splits(breakout_dir)
    (tr_eps, tr_labels), (val_eps, val_labels) = atariari_episodes(data["train"]), atariari_episodes(data["val"])
    torch.manual_seed(0)
    encoder = TinyEncoder()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    trainer = probe.ProbeTrainer(encoder, representation_len=16, fully_supervised=True, epochs=1, device="cpu")
    trainer.train(tr_eps, val_eps, tr_labels, val_labels)
    acc, f1 = trainer.test(val_eps, val_labels)
    assert len(trainer._probes.models) == len(data["train"].variables)    # one end-to-end model per variable
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())
    assert 0 <= f1["across_categories_avg_f1"] <= 1


# -- the stage's entry point --------------------------------------------------------------------
def run_settings(**overrides):
    return {**dict(method="majority", lr=3e-3, batch_size=64, epochs=2, patience=15, seed=0, device="cpu"),
            **overrides}


def test_run_writes_scores_and_metrics_for_the_majority_baseline(breakout_dir, tmp_path):
    out = tmp_path / "probes" / "Breakout" / "majority"
    scores = probe.run(breakout_dir, None, out, **run_settings())
    table = pd.read_csv(out / "scores.csv", keep_default_na=False)
    metrics = json.loads((out / "metrics.json").read_text())
    data = episodes.load_splits(breakout_dir)
    expected = [f1_score(data["test"].labels[:, j],
                         np.full(len(data["test"]), np.bincount(data["train"].labels[:, j]).argmax()),
                         average="weighted", zero_division=0) for j in range(len(data["test"].variables))]
    assert table["f1"].tolist() == pytest.approx(expected)
    assert list(table.columns) == ["game", "method", "variable", "categories", "f1", "accuracy", "num_epochs"]
    assert table["categories"].tolist() == [";".join(c) for c in scores["categories"]]
    assert metrics["game"] == "Breakout" and metrics["method"] == "majority"
    assert metrics["f1"]["overall"] == pytest.approx(np.mean(expected))
    assert metrics["f1"]["across_categories"] == pytest.approx(
        probe.aggregate(scores, "across_categories")["f1"].item())
    assert metrics["num_test_frames"] == len(data["test"])
    read_back = reports.load_results(tmp_path / "probes")               # what the report stage reads
    pd.testing.assert_frame_equal(read_back, scores.drop(columns="num_epochs"))


def test_run_probes_an_encoder_file_and_the_supervised_baseline(breakout_dir, tmp_path):
    torch.manual_seed(0)
    encoders.save(encoders.build("benchmark", feature_size=32), tmp_path / "enc.pt", game="Breakout")
    scores = probe.run(breakout_dir, tmp_path / "enc.pt", tmp_path / "random-cnn",
                       **run_settings(method="random-cnn"))
    assert scores["num_epochs"].tolist() == [2] * len(scores)
    assert json.loads((tmp_path / "random-cnn" / "metrics.json").read_text())["method"] == "random-cnn"
    scores = probe.run(breakout_dir, None, tmp_path / "supervised", **run_settings(
        method="supervised", supervised_per_variable=False, supervised_epochs=1))
    assert scores["num_epochs"].tolist() == [1] * len(scores)
    assert scores["f1"].between(0, 1).all()


# -- errors: one line, exit code 2, nothing written --------------------------------------------
def stage_error(capsys, function) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run_stage(lambda: function(), argv=[])
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_an_encoder_of_another_game_is_refused(breakout_dir, tmp_path, capsys):
    encoders.save(encoders.build("benchmark"), tmp_path / "pong.pt", game="Pong")
    err = stage_error(capsys, lambda: probe.run(breakout_dir, tmp_path / "pong.pt", tmp_path / "out",
                                                **run_settings(method="stdim")))
    assert err == (f"error: encoder {tmp_path / 'pong.pt'} was trained on Pong but episodes {breakout_dir} are "
                   "Breakout; probe an encoder of the same game (data/encoders/Breakout/...)\n")
    assert not (tmp_path / "out").exists()


def test_an_encoder_that_does_not_take_full_size_frames_is_refused(breakout_dir, tmp_path, capsys):
    encoders.save(encoders.build("nature"), tmp_path / "nature.pt", game="Breakout")
    err = stage_error(capsys, lambda: probe.run(breakout_dir, tmp_path / "nature.pt", tmp_path / "out",
                                                **run_settings(method="ppo")))
    assert err == ("error: encoder NatureCNN does not take (B, 1, 210, 160) frames; probe an encoder built for "
                   "full-size frames (architecture benchmark)\n")
    assert not (tmp_path / "out").exists()


def test_an_encoder_whose_feature_size_differs_from_representation_len_is_refused(breakout_dir):
    (tr_eps, tr_labels) = atariari_episodes(episodes.load_splits(breakout_dir)["train"])
    trainer = probe.ProbeTrainer(TinyEncoder(), representation_len=256, device="cpu")
    with pytest.raises(UserError) as err:
        trainer.train(tr_eps, tr_eps, tr_labels, tr_labels)
    assert str(err.value) == ("encoder TinyEncoder returns (256, 16) for a batch of 256 frames, expected (256, 256); "
                              "probe an encoder whose output is one feature vector per frame (or fix "
                              "representation_len/feature_size)")


def test_a_variable_missing_from_the_test_labels_is_refused(breakout_dir):
    data = episodes.load_splits(breakout_dir)
    (tr_eps, tr_labels), (val_eps, val_labels) = atariari_episodes(data["train"]), atariari_episodes(data["val"])
    trainer = probe.ProbeTrainer(TinyEncoder(), representation_len=16, epochs=1, device="cpu")
    trainer.train(tr_eps, val_eps, tr_labels, val_labels)
    test_labels = [[{k: v for k, v in step.items() if k != "player_x"} for step in ep] for ep in val_labels]
    with pytest.raises(UserError) as err:
        trainer.test(val_eps, test_labels)
    assert str(err.value) == ("test labels lack variable 'player_x' that the probes were trained on; pass labels "
                              "of the same game and annotation set as the train labels")


def test_an_empty_split_is_refused(breakout_dir, tmp_path, capsys):
    folder = tmp_path / "no_val"
    shutil.copytree(breakout_dir, folder)
    steps = pd.read_csv(folder / "steps.csv.gz")
    (folder / "steps.csv.gz").write_bytes(gzip.compress(
        steps[steps["split"] != "val"].to_csv(index=False).encode()))
    meta = json.loads((folder / "meta.json").read_text())
    meta["counts"]["val"] = {"episodes": 0, "frames": 0}
    (folder / "meta.json").write_text(json.dumps(meta))
    err = stage_error(capsys, lambda: probe.run(folder, None, tmp_path / "out", **run_settings()))
    assert err == (f"error: episodes {folder} have an empty 'val' split; collect more steps "
                   "(collect.probe.steps) so every split gets episodes\n")
    assert not (tmp_path / "out").exists()


def test_a_baseline_given_an_encoder_file_is_refused_before_reading_data(tmp_path):
    with pytest.raises(UserError) as err:
        probe.run(tmp_path / "absent", tmp_path / "enc.pt", tmp_path / "out", **run_settings(method="supervised"))
    assert str(err.value) == (f"method 'supervised' trains its own model and takes no encoder file; drop the "
                              f"encoder path {tmp_path / 'enc.pt'}")
