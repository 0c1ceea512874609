"""The pretraining loop on a tiny real Breakout collection: samples, resume, DDP, outputs and bad input."""

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from atarirep import encoders, episodes, methods, pretraining
from atarirep.collection import collect
from atarirep.methods import Batch
from atarirep.plumbing import devices
from atarirep.plumbing.errors import UserError

FAST = dict(batch_size=16, seed=0, device="cpu", progress=False)  # static_dim: one frame per sample


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """240 random-agent Breakout steps, 80/20 by episode (about 156 train and 84 val frames)."""
    out = tmp_path_factory.mktemp("episodes") / "tiny"
    collect(
        "Breakout",
        out,
        steps=240,
        splits_fractions={"train": 0.8, "val": 0.2},
        num_envs=4,
        min_episode_length=8,
        seed=0,
    )
    return out


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return episodes.load_splits(tiny_dir)


@pytest.mark.parametrize("window", [2, 5])
def test_windows_never_cross_or_wrap_an_episode_boundary(tiny, window):
    split = tiny["train"]
    found = pretraining.windows(split, window)
    rows = found.rows(np.arange(len(found)))  # (S, W)
    assert (split.episode_index[rows] == split.episode_index[rows[:, :1]]).all()
    bounds = split.episode_bounds()
    lengths = np.diff(bounds)
    assert len(found) == np.maximum(lengths - window + 1, 0).sum()
    last_frames = bounds[1:] - 1
    assert not np.isin(found.starts, last_frames - window + 2).any()  # no wrap to a next/first frame
    assert np.isin(bounds[:-1][lengths >= window], found.starts).all()  # every episode's first step is used


def test_loop_batches_hold_consecutive_frames_and_same_episode_negatives(tiny):
    split = tiny["train"]
    stored = np.asarray(split.frames)
    found = pretraining.windows(split, 2)
    plan = pretraining.epoch_plan(found, np.random.default_rng(0), 8, True, devices.Distributed())
    source = pretraining._FrameSource(stored, torch.device("cpu"), is_streamed=False)
    assert len(plan) == len(found) // 8
    for (rows, negatives), batch in zip(plan, source.batches(plan, torch.Generator()), strict=True):
        assert (rows[:, 1] == rows[:, 0] + 1).all()
        assert (split.episode_index[rows[:, 1]] == split.episode_index[rows[:, 0]]).all()
        assert (split.episode_index[negatives] == split.episode_index[rows[:, 0]]).all()
        expected = encoders.preprocess(torch.from_numpy(stored[rows.reshape(-1)])).view(8, 2, 1, 210, 160)
        torch.testing.assert_close(batch.frames, expected, rtol=0, atol=0)


def test_reference_epochs_draw_a_window_per_frame_from_episodes_chosen_with_replacement(tiny):
    """AtariARI's epoch: len(split) samples (total_steps), each an episode uniformly with replacement then a
    window inside it; CPC draws sequence_length per episode long enough (len(episodes) x sequence_length)."""
    split = tiny["train"]
    found = pretraining.windows(split, 2)
    plan = pretraining.epoch_plan(found, np.random.default_rng(0), 8, True, devices.Distributed(), sampling="reference")
    assert len(plan) == len(split) // 8 and len(split) > len(found)  # a sample per frame, not per window
    rows = np.concatenate([r for r, _ in plan])
    assert (rows[:, 1] == rows[:, 0] + 1).all()  # never across an episode's end
    assert (split.episode_index[rows[:, 1]] == split.episode_index[rows[:, 0]]).all()
    assert len(np.unique(rows[:, 0])) < len(rows)  # with replacement
    again = pretraining.epoch_plan(
        found, np.random.default_rng(0), 8, True, devices.Distributed(), sampling="reference"
    )
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(plan, again, strict=True))
    lengths = np.diff(split.episode_bounds())
    sequences = pretraining.windows(split, 10)
    assert pretraining.epoch_size(sequences, "reference", 10, 10) == 10 * int((lengths >= 10).sum())
    assert pretraining.epoch_size(sequences, "every_frame", 10, 10) == len(sequences) // 10


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different


def test_streamed_batches_equal_resident_batches_frame_for_frame(tiny):
    split = tiny["train"]
    plan = pretraining.epoch_plan(
        pretraining.windows(split, 2), np.random.default_rng(0), 8, True, devices.Distributed()
    )
    resident = pretraining._FrameSource(np.asarray(split.frames), torch.device("cpu"), is_streamed=False)
    streamed = pretraining._FrameSource(split.frames, torch.device("cpu"), is_streamed=True)
    pairs = list(zip(resident.batches(plan, torch.Generator()), streamed.batches(plan, torch.Generator()), strict=True))
    assert len(pairs) == len(plan) > 1
    for a, b in pairs:
        assert torch.equal(a.frames, b.frames) and torch.equal(a.negatives, b.negatives)


def test_auto_loader_streams_stored_frames_and_keeps_arrays_resident(tiny):
    cpu = torch.device("cpu")
    assert pretraining._is_streamed("auto", {"train": tiny["train"].frames}, cpu)
    assert not pretraining._is_streamed("auto", {"train": np.asarray(tiny["train"].frames)}, cpu)
    with pytest.raises(UserError, match="pretrain loader='disk' is invalid; it must be one of auto, resident"):
        pretraining._is_streamed("disk", {}, cpu)


def test_streamed_loader_trains_to_the_same_weights_as_resident_frames(tiny):
    results = []
    for loader in ("resident", "streamed"):
        method = pretraining.build_method("static_dim", seed=0)
        config = pretraining.TrainConfig(epochs=1, batch_size=16, seed=0, device="cpu")
        results.append(pretraining.fit(method, tiny["train"], tiny["val"], config, loader=loader))
    _assert_same_weights(_state(results[0].method), _state(results[1].method))
    assert results[0].history[0]["val_loss"] == results[1].history[0]["val_loss"]


def test_early_stopping_and_keep_best(tiny):
    method = pretraining.build_method("static_dim", seed=0)
    config = pretraining.TrainConfig(epochs=5, batch_size=16, lr=1e-12, patience=1, keep="best", seed=0, device="cpu")
    result = pretraining.fit(method, tiny["train"], tiny["val"], config)
    assert [row["epoch"] for row in result.history] == [1, 2]  # epoch 2 did not lower val loss
    assert result.stopped_early and result.kept_epoch == 1


class _DriftingMethod(nn.Module):
    """A method whose one encoder weight w rises by ~lr per Adam step (loss -w); its val loss falls every epoch
    while its "accuracy" exp(-(w - peak)^2) peaks when w reaches `peak`."""

    window = 1
    uses_negatives = False
    is_trainable = True

    def __init__(self, peak: float):
        super().__init__()
        self.encoder = nn.Linear(1, 1, bias=False)
        nn.init.zeros_(self.encoder.weight)
        self.peak = peak

    def loss(self, batch):
        w = self.encoder.weight.sum() + 0 * batch.frames.mean()
        return -w, {"accuracy": torch.exp(-((w - self.peak) ** 2)).detach()}


class _DriftingAccuracyMethod(_DriftingMethod):
    early_stop_metric = "accuracy"


@pytest.mark.parametrize("method_class", [_DriftingMethod, _DriftingAccuracyMethod])
def test_early_stop_metric_accuracy_keeps_the_highest_val_accuracy_epoch(tiny, method_class):
    lr, steps_per_epoch = 0.1, len(pretraining.windows(tiny["train"], 1)) // 16
    method = method_class(peak=2 * steps_per_epoch * lr)  # accuracy peaks after epoch 2
    config = pretraining.TrainConfig(epochs=5, batch_size=16, lr=lr, patience=2, keep="best", seed=0, device="cpu")
    result = pretraining.fit(method, tiny["train"], tiny["val"], config)
    epochs = [row["epoch"] for row in result.history]
    if method_class is _DriftingAccuracyMethod:  # accuracy: up, up, down, down
        assert epochs == [1, 2, 3, 4] and result.stopped_early and result.kept_epoch == 2
        accuracies = [row["val_accuracy"] for row in result.history]
        assert max(accuracies) == accuracies[1] == result.best_val_metric
        assert result.early_stop_metric == "accuracy"
        assert result.method.encoder.weight.item() == pytest.approx(2 * steps_per_epoch * lr, rel=1e-3)
    else:  # val loss falls every epoch
        assert epochs == [1, 2, 3, 4, 5] and not result.stopped_early and result.kept_epoch == 5
        assert "val_accuracy" not in result.history[0] and result.early_stop_metric == "loss"
    assert result.best_val_loss == min(row["val_loss"] for row in result.history)


def test_info_nce_is_float32_for_bf16_inputs_and_under_bf16_autocast():
    queries, keys = torch.randn(3, 8, 16), torch.randn(3, 8, 16)
    loss = methods.info_nce(queries.bfloat16(), keys.bfloat16())
    assert loss.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = methods.info_nce(queries, keys)
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, methods.info_nce(queries, keys), rtol=0, atol=0)


def _live(out_dir, name):
    """One dvclive metric of a pretrain out dir (or a write_live folder's parent) as a frame: step, <name>."""
    return pd.read_csv(out_dir / pretraining.LIVE_DIR / "plots" / "metrics" / f"{name}.tsv", sep="\t")


def test_a_short_run_logs_a_step_curve_with_more_points_than_epochs(tiny_dir, tiny, tmp_path):
    out, epochs, log_every = tmp_path / "out", 2, 2
    pretraining.pretrain("static_dim", tiny_dir, out, epochs=epochs, log_every=log_every, **FAST)
    n = len(pretraining.windows(tiny["train"], 1)) // 16  # optimizer steps per epoch
    assert n % log_every == 1  # the epoch ends between points
    expected = sorted({s for s in range(1, epochs * n + 1) if s % log_every == 0} | {n, 2 * n})
    loss, speed = _live(out, "train/loss"), _live(out, "train/samples_per_s")
    assert list(loss["step"]) == list(speed["step"]) == expected and len(expected) > 2 * epochs
    assert np.isfinite(loss["loss"]).all() and (speed["samples_per_s"] > 0).all()
    epoch_log = _live(out, "epoch/epoch")
    assert list(epoch_log["step"]) == [n, 2 * n] and list(epoch_log["epoch"]) == [1, 2]
    assert list(_live(out, "val/loss")["step"]) == [n, 2 * n]
    # Each point is the mean of the steps since the previous one: weighted by them, the epoch's mean.
    loss["steps"] = loss["step"].diff().fillna(loss["step"].iloc[0])
    loss["epoch"] = (loss["step"] - 1) // n + 1
    means = loss.groupby("epoch").apply(lambda g: (g["loss"] * g["steps"]).sum() / g["steps"].sum())
    np.testing.assert_allclose(means.to_numpy(), _live(out, "epoch/train_loss")["train_loss"], rtol=1e-5)
    summary = json.loads((out / pretraining.LIVE_DIR / "metrics.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert summary["step"] == 2 * n and summary["epoch"]["epoch"] == 2 == metrics["epochs_run"]
    assert min(_live(out, "val/loss")["loss"]) == pytest.approx(metrics["best_val_loss"])


def test_a_resumed_fit_logs_each_epoch_and_step_once(tiny, tmp_path, capsys):
    checkpoint, config = tmp_path / "checkpoint.pt", pretraining.TrainConfig(epochs=3, batch_size=16, device="cpu")

    def run(epochs, checkpoint_path):
        method = pretraining.build_method("static_dim", seed=0)
        return pretraining.fit(
            method,
            tiny["train"],
            tiny["val"],
            dataclasses.replace(config, epochs=epochs),
            checkpoint_path=checkpoint_path,
            log_every=4,
        )

    run(2, checkpoint)
    resumed, straight = run(3, checkpoint), run(3, None)
    assert f"resuming from {checkpoint} after epoch 2" in capsys.readouterr().err
    for name, result in (("resumed", resumed), ("straight", straight)):
        pretraining.write_live(tmp_path / name / pretraining.LIVE_DIR, result)
    assert list(_live(tmp_path / "resumed", "epoch/epoch")["epoch"]) == [1, 2, 3]
    for name in ("epoch/epoch", "epoch/train_loss", "val/loss", "train/loss"):
        pd.testing.assert_frame_equal(_live(tmp_path / "resumed", name), _live(tmp_path / "straight", name))
    assert [p["step"] for p in resumed.steps] == [p["step"] for p in straight.steps]
    assert resumed.history[-1]["step"] == 3 * (len(pretraining.windows(tiny["train"], 1)) // 16)


@pytest.mark.parametrize("commits", [0, 1])
def test_write_live_leaves_an_enclosing_git_repo_alone(tiny, tmp_path, monkeypatch, commits):
    """dvclive's Live() alone would create .dvc in a git repo without one, and fail in one without commits."""
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q", str(tmp_path)], check=True)
    if commits:
        subprocess.run([*git, "-C", str(tmp_path), "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    monkeypatch.chdir(tmp_path)
    config = pretraining.TrainConfig(epochs=1, batch_size=16, device="cpu")
    result = pretraining.fit(pretraining.build_method("static_dim", seed=0), tiny["train"], tiny["val"], config)
    pretraining.write_live(tmp_path / "out" / pretraining.LIVE_DIR, result)
    assert list(_live(tmp_path / "out", "epoch/epoch")["epoch"]) == [1]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".git", "out"]
    assert (
        subprocess.run(
            ["git", "-C", str(tmp_path), "status", "--porcelain", "--ignored"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        == "?? out/\n"
    )


def test_resume_after_a_kill_ends_with_the_same_weights_as_a_straight_run(tiny_dir, tmp_path, capsys):
    killed_out = tmp_path / "killed"
    checkpoint = pretraining.default_checkpoint_path(killed_out)
    code = (
        "from atarirep.pretraining import pretrain; "
        f"pretrain('static_dim', {str(tiny_dir)!r}, {str(killed_out)!r}, epochs=1000, batch_size=16, "
        "seed=0, device='cpu', progress=False)"
    )
    with open(tmp_path / "killed.log", "w") as log:
        process = subprocess.Popen([sys.executable, "-c", code], stderr=log)
        deadline = time.monotonic() + 120
        while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        process.kill()  # SIGKILL: no cleanup runs
        process.wait()
    assert checkpoint.exists(), (tmp_path / "killed.log").read_text()
    assert not killed_out.exists()  # nothing looks finished
    epochs = torch.load(checkpoint, weights_only=True)["epoch"] + 1

    pretraining.pretrain("static_dim", tiny_dir, killed_out, epochs=epochs, **FAST)
    assert f"resuming from {checkpoint} after epoch {epochs - 1}" in capsys.readouterr().err
    straight_out = tmp_path / "straight"
    pretraining.pretrain("static_dim", tiny_dir, straight_out, epochs=epochs, **FAST)

    resumed, straight = encoders.load(killed_out / "encoder.pt"), encoders.load(straight_out / "encoder.pt")
    _assert_same_weights(resumed.state_dict(), straight.state_dict())
    assert not checkpoint.exists() and not pretraining.default_checkpoint_path(straight_out).exists()
    for name in ("epoch/epoch", "epoch/train_loss", "val/loss", "train/loss"):  # the resumed run's log is whole
        pd.testing.assert_frame_equal(_live(killed_out, name), _live(straight_out, name))
    assert list(_live(killed_out, "epoch/epoch")["epoch"]) == list(range(1, epochs + 1))
    assert sorted(p.name for p in straight_out.iterdir()) == ["encoder.pt", "live", "metrics.json"]
    assert straight.meta["method"] == "static_dim" and straight.meta["game"] == "Breakout"


def test_untrained_baseline_saves_its_seeded_encoder_with_an_empty_log(tiny_dir, tmp_path):
    pretraining.pretrain("random_cnn", tiny_dir, tmp_path / "random", epochs=3, **FAST)
    saved = encoders.load(tmp_path / "random" / "encoder.pt", expect="benchmark")
    _assert_same_weights(saved.state_dict(), pretraining.build_method("random_cnn", seed=0).encoder.state_dict())
    for name in pretraining.LIVE_PLOTS:  # dvc.yaml's plots exist, empty
        path = tmp_path / "random" / "live" / "plots" / "metrics" / f"{name}.tsv"
        assert path.read_text() == f"step\t{name.split('/')[-1]}\n"
    assert json.loads((tmp_path / "random" / "metrics.json").read_text())["epochs_run"] == 0


@pytest.mark.parametrize(
    "case",
    [
        "unknown method",
        "missing folder",
        "truncated frames",
        "batch too large",
        "cpc sequence too long",
        "bad keep",
        "bad log_every",
        "cpc reference epoch too small",
        "bad sampling",
        "bad precision",
    ],
)
def test_bad_input_is_one_user_error_line_and_nothing_is_written(tiny_dir, tmp_path, case):
    folder, method, options = tiny_dir, "static_dim", dict(FAST, epochs=1)
    if case == "unknown method":
        method = "simclr"
    elif case == "missing folder":
        folder = tmp_path / "nowhere"
    elif case == "truncated frames":
        folder = tmp_path / "copy"
        shutil.copytree(tiny_dir, folder)
        (folder / "frames.bin").write_bytes((folder / "frames.bin").read_bytes()[:1000])
    elif case == "batch too large":
        options["batch_size"] = 1000
    elif case == "cpc sequence too long":
        method, options["method_config"] = "cpc", {"sequence_length": 40, "offsets": [1, 2]}
    elif case == "bad keep":
        options["keep"] = "first"
    elif case == "bad log_every":
        options["log_every"] = 0
    elif case == "cpc reference epoch too small":
        method, options["method_config"] = "cpc", {"sequence_length": 4, "offsets": [1, 2]}
        options["sampling"] = "reference"
    elif case == "bad sampling":
        options["sampling"] = "uniform"
    elif case == "bad precision":
        options["precision"] = "fp16"
    out = tmp_path / "out"
    with pytest.raises(UserError) as err:
        pretraining.pretrain(method, folder, out, **options)
    message = str(err.value)
    assert "\n" not in message
    expected = {
        "unknown method": f"pretraining method 'simclr' is unknown; use one of {', '.join(methods.METHODS)}",
        "missing folder": f"episode folder {folder} is missing or incomplete (no meta.json)",
        "truncated frames": f"{folder / 'frames.bin'} is truncated or missing (1000 of",
        "batch too large": "the train split has ",
        "cpc sequence too long": "the train split has 0 samples of 40 consecutive frames (longest episode: 24 "
        "frames), fewer than one batch of 16; lower pretrain batch_size",
        "bad keep": "pretrain.keep must be one of last, best, not 'first'; set it to 'last'",
        "bad log_every": "pretrain log_every=0 is invalid; it must be an integer >= 1",
        "cpc reference epoch too small": "the val split has 12 samples of 4 consecutive frames (longest episode: 36 "
        "frames), fewer than one batch of 16; under sampling: reference each of its 3 "
        "episodes gives 4 samples; collect more steps (more episodes)",
        "bad sampling": "pretrain sampling='uniform' is not offered; use one of reference, every_frame",
        "bad precision": "pretrain precision='fp16' is not offered; use one of fp32, bf16",
    }[case]
    assert message.startswith(expected), message
    assert not out.exists() and not pretraining.default_checkpoint_path(out).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == (["copy"] if case == "truncated frames" else [])


# -- DDP ----------------------------------------------------------------------------------------------
HALF = 3  # samples per process


def _ddp_worker(rank: int, port: int, folder: str) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    place, device = devices.init_distributed(torch.device("cpu"))
    frames = torch.load(os.path.join(folder, "frames.pt"))  # (2 HALF, 2, 1, 210, 160)
    for name in ("pixel_pred", "stdim"):
        method = pretraining.build_method(name, seed=0)
        model = devices.wrap(pretraining.Objective(method), place, device)
        loss, _ = model(Batch(frames[rank * HALF : (rank + 1) * HALF]))
        loss.backward()
        if place.is_main:
            torch.save({k: p.grad for k, p in method.named_parameters()}, os.path.join(folder, f"{name}.pt"))
    dist.destroy_process_group()


def _gradients(name: str, frames: torch.Tensor) -> dict:
    method = pretraining.build_method(name, seed=0)
    method.loss(Batch(frames))[0].backward()
    return {k: p.grad.clone() for k, p in method.named_parameters()}


@pytest.mark.e2e
def test_ddp_with_two_gloo_processes_matches_the_one_process_gradient(tiny, tmp_path):
    split = tiny["train"]
    rows = pretraining.windows(split, 2).rows(np.arange(0, 12 * HALF, 6))  # 2 HALF pairs from several episodes
    frames = encoders.preprocess(torch.from_numpy(split.frames[rows.reshape(-1)])).view(2 * HALF, 2, 1, 210, 160)
    torch.save(frames, tmp_path / "frames.pt")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(port, str(tmp_path)), nprocs=2, join=True)

    # Per-sample loss: DDP over halves equals the one-process gradient on the whole batch.
    ddp, whole = torch.load(tmp_path / "pixel_pred.pt"), _gradients("pixel_pred", frames)
    for k in whole:
        torch.testing.assert_close(ddp[k], whole[k], rtol=1e-4, atol=1e-6)
    # InfoNCE: negatives are each process's own samples, so DDP equals the mean of the halves' gradients.
    ddp = torch.load(tmp_path / "stdim.pt")
    halves = [_gradients("stdim", frames[:HALF]), _gradients("stdim", frames[HALF:])]
    for k in ddp:
        torch.testing.assert_close(ddp[k], (halves[0][k] + halves[1][k]) / 2, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(ddp["global_local.weight"], _gradients("stdim", frames)["global_local.weight"])
