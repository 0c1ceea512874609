"""AtariARI's names: get_episodes' return layout, and ProbeTrainer's keys, values and one-line errors."""

import copy

import numpy as np
import pytest
import torch

from atarirep import episodes, get_episodes, probe, scores
from atarirep.compat import ProbeTrainer
from atarirep.plumbing.errors import UserError


def test_get_episodes_returns_the_reference_layout():
    tr_eps, val_eps, tr_labels, val_labels, test_eps, test_labels = get_episodes(
        env_name="BreakoutNoFrameskip-v4", steps=1600, seed=5, num_processes=4, min_episode_length=16, progress=False
    )
    assert len(tr_eps) == len(tr_labels) and len(val_eps) == len(val_labels) and len(test_eps) == len(test_labels)
    assert min(len(tr_eps), len(val_eps), len(test_eps)) >= 1
    episode, labels = tr_eps[0], tr_labels[0]
    assert episode.dtype == torch.uint8 and episode.shape[1:] == (1, 210, 160)
    assert set(labels) >= {"ball_x", "player_x"} and "block_bit_map_0" not in labels  # entropy-filtered
    assert all(len(v) == len(episode) for v in labels.values())
    total = sum(len(e) for e in tr_eps + val_eps + test_eps)
    assert total <= 1600


def test_train_encoder_mode_returns_two_splits():
    tr_eps, val_eps = get_episodes(
        "Breakout", steps=1600, num_processes=4, min_episode_length=16, train_mode="train_encoder", progress=False
    )
    assert len(tr_eps) >= len(val_eps) >= 1
    assert not any(torch.equal(a, b) for a in tr_eps for b in val_eps)


def test_downsampling_is_refused_because_it_breaks_labels():
    with pytest.raises(UserError, match="full-size grayscale frames only"):
        get_episodes("Pong", steps=100, downsample=True)


def test_the_reference_names_import_from_the_package():
    import subprocess
    import sys

    code = (
        "import sys, atarirep; assert 'torch' not in sys.modules; "
        "from atarirep import AtariARIWrapper, get_episodes, ProbeTrainer; print(ProbeTrainer.__module__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "atarirep.compat"


# -- ProbeTrainer ----------------------------------------------------------------------------------


def atariari_episodes(split: episodes.Episodes):
    """The reference get_episodes layout: per-episode frame tensors and per-episode lists of label dicts."""
    bounds = split.episode_bounds()
    frames = torch.from_numpy(np.asarray(split.frames))
    label_dicts = split.label_dicts()
    return (
        [frames[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)],
        [label_dicts[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)],
    )


# variable -> whether its test labels can be learned (else they are a value train never shows: accuracy 0)
LEARNABLE = {
    "player_x": True,
    "ball_y": False,
    "ball_x": True,
    "enemy_x": True,
    "score": False,
    "clock_count": True,
    "level": False,
    "foo": True,
}


def feature_episodes(num_frames: int, seed: int, learnable_only: bool):
    """Two episodes of (T, 3) features around one of three cluster centres, and per-frame label dicts."""
    rng = np.random.default_rng(seed)
    cluster = rng.integers(0, 3, size=num_frames)
    x = torch.as_tensor(4 * np.eye(3)[cluster] + rng.normal(0, 0.3, (num_frames, 3)), dtype=torch.float32)
    labels = [
        {v: int(10 * c + j) if learnable_only or learn else 99 for j, (v, learn) in enumerate(LEARNABLE.items())}
        for c in cluster
    ]
    half = num_frames // 2
    return [x[:half], x[half:]], [labels[:half], labels[half:]]


def test_probe_trainer_test_returns_atariari_keys_in_its_order_with_hand_computed_means():
    tr_eps, tr_labels = feature_episodes(300, seed=0, learnable_only=True)
    val_eps, val_labels = feature_episodes(100, seed=1, learnable_only=True)
    test_eps, test_labels = feature_episodes(100, seed=2, learnable_only=False)
    trainer = ProbeTrainer(None, representation_len=3, lr=1e-2, epochs=30, device=torch.device("cpu"))
    trainer.train(tr_eps, val_eps, tr_labels, val_labels)
    acc, f1 = trainer.test(test_eps, test_labels)
    for metrics, suffix in ((acc, "_acc"), (f1, "_f1")):
        assert list(metrics) == [f"{v}{suffix}" for v in LEARNABLE] + [
            f"{key}_avg{suffix}"
            for key in (
                "small_object_localization",
                "agent_localization",
                "other_localization",
                "score_clock_lives_display",
                "misc_keys",
                "overall",
                "across_categories",
            )
        ]
        assert [metrics[f"{v}{suffix}"] for v in LEARNABLE] == [float(learn) for learn in LEARNABLE.values()]
        # small objects: ball_y 0, ball_x 1; score/clock: score 0, clock_count 1; misc: clock_count 1, level 0
        assert metrics[f"small_object_localization_avg{suffix}"] == 0.5
        assert metrics[f"agent_localization_avg{suffix}"] == 1.0
        assert metrics[f"other_localization_avg{suffix}"] == 1.0
        assert metrics[f"score_clock_lives_display_avg{suffix}"] == 0.5
        assert metrics[f"misc_keys_avg{suffix}"] == 0.5
        assert metrics[f"overall_avg{suffix}"] == 5 / 8  # foo (no category) counts here only
        assert metrics[f"across_categories_avg{suffix}"] == pytest.approx((0.5 + 1 + 1 + 0.5 + 0.5) / 5)


def test_probe_trainer_round_trip_with_atariari_episodes_equals_the_probes_it_wraps(breakout_dir, tiny_encoder):
    data = episodes.load_splits(breakout_dir)
    (tr_eps, tr_labels), (val_eps, val_labels), (test_eps, test_labels) = (
        atariari_episodes(data[k]) for k in ("train", "val", "test")
    )
    torch.manual_seed(0)
    encoder = tiny_encoder()
    trainer = ProbeTrainer(encoder, representation_len=encoder.feature_size, epochs=2, lr=3e-3, device="cpu")
    trainer.train(tr_eps, val_eps, tr_labels, val_labels)
    acc, f1 = trainer.test(test_eps, test_labels)
    variables = data["train"].variables
    features = {k: probe.encode(encoder, data[k].frames) for k in ("train", "val", "test")}
    probes = probe.fit_probes(
        features["train"],
        data["train"].labels,
        features["val"],
        data["val"].labels,
        lr=3e-3,
        epochs=2,
        train_bounds=data["train"].episode_bounds(),
        val_bounds=data["val"].episode_bounds(),
    )  # the reference's sampling and keep
    rows = probe.stage.scored_test_rows(data["test"].episode_bounds(), sampling="reference", batch_size=64, seed=0)
    expected = scores.score(probe.predict(probes, features["test"])[rows], data["test"].labels[rows], variables)
    assert [f1[f"{v}_f1"] for v in variables] == expected["f1"].tolist()
    assert [acc[f"{v}_acc"] for v in variables] == expected["accuracy"].tolist()
    assert f1["overall_avg_f1"] == pytest.approx(expected["f1"].mean())
    # the same episodes as labelled by atarirep.compat.get_episodes ({variable: (T,) tensor} per episode)
    as_columns = [{v: torch.tensor([step[v] for step in ep]) for v in variables} for ep in test_labels]
    assert trainer.test(test_eps, as_columns) == (acc, f1)


def test_probe_trainer_fully_supervised_trains_copies_and_leaves_the_encoder_alone(breakout_dir, tiny_encoder):
    data = episodes.load_splits(breakout_dir)
    (tr_eps, tr_labels), (val_eps, val_labels) = atariari_episodes(data["train"]), atariari_episodes(data["val"])
    torch.manual_seed(0)
    encoder = tiny_encoder()
    before = copy.deepcopy(encoder.state_dict())
    trainer = ProbeTrainer(encoder, representation_len=16, fully_supervised=True, epochs=1, device="cpu")
    trainer.train(tr_eps, val_eps, tr_labels, val_labels)
    acc, f1 = trainer.test(val_eps, val_labels)
    assert len(trainer._probes.models) == len(data["train"].variables)  # one end-to-end model per variable
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())
    model = probe.fit_supervised(
        lambda: copy.deepcopy(encoder),
        np.asarray(data["train"].frames),
        data["train"].labels,
        np.asarray(data["val"].frames),
        data["val"].labels,
        lr=5e-4,
        epochs=1,
        train_bounds=data["train"].episode_bounds(),
        val_bounds=data["val"].episode_bounds(),
    )
    rows = probe.stage.scored_test_rows(data["val"].episode_bounds(), sampling="reference", batch_size=64, seed=0)
    expected = scores.score(
        probe.predict_supervised(model, data["val"].frames)[rows], data["val"].labels[rows], data["val"].variables
    )
    assert [f1[f"{v}_f1"] for v in data["val"].variables] == expected["f1"].tolist()


def test_an_encoder_whose_feature_size_differs_from_representation_len_is_refused(breakout_dir, tiny_encoder):
    (tr_eps, tr_labels) = atariari_episodes(episodes.load_splits(breakout_dir)["train"])
    trainer = ProbeTrainer(tiny_encoder(), representation_len=256, device="cpu")
    with pytest.raises(UserError) as err:
        trainer.train(tr_eps, tr_eps, tr_labels, tr_labels)
    assert str(err.value) == (
        "encoder TinyEncoder returned shape (256, 16) for a batch of (256, 1, 210, 160) frames, "
        "expected (256, 256); flatten to one feature vector per frame (or fix "
        "representation_len/feature_size)"
    )


def test_a_variable_missing_from_the_test_labels_is_refused(breakout_dir, tiny_encoder):
    data = episodes.load_splits(breakout_dir)
    (tr_eps, tr_labels), (val_eps, val_labels) = atariari_episodes(data["train"]), atariari_episodes(data["val"])
    trainer = ProbeTrainer(tiny_encoder(), representation_len=16, epochs=1, device="cpu")
    trainer.train(tr_eps, val_eps, tr_labels, val_labels)
    test_labels = [[{k: v for k, v in step.items() if k != "player_x"} for step in ep] for ep in val_labels]
    with pytest.raises(UserError) as err:
        trainer.test(val_eps, test_labels)
    assert str(err.value) == (
        "test labels lack variable 'player_x' that the probes were trained on; pass labels "
        "of the same game and annotation set as the train labels"
    )
