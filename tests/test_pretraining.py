"""The pretraining loop on a tiny real Breakout collection: samples, resume, DDP, outputs and bad input."""
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

from atarirep import devices, encoders, episodes, methods, training
from atarirep.collection import collect
from atarirep.errors import UserError
from atarirep.methods import Batch

FAST = dict(batch_size=16, seed=0, device="cpu", progress=False)  # static_dim: one frame per sample


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """240 random-agent Breakout steps, 80/20 by episode (about 156 train and 84 val frames)."""
    out = tmp_path_factory.mktemp("episodes") / "tiny"
    collect("Breakout", out, steps=240, splits_fractions={"train": 0.8, "val": 0.2}, num_envs=4,
            min_episode_length=8, seed=0)
    return out


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return episodes.load_splits(tiny_dir)


@pytest.mark.parametrize("window", [2, 5])
def test_windows_never_cross_or_wrap_an_episode_boundary(tiny, window):
    split = tiny["train"]
    found = training.windows(split, window)
    rows = found.rows(np.arange(len(found)))                                   # (S, W)
    assert (split.episode_index[rows] == split.episode_index[rows[:, :1]]).all()
    bounds = split.episode_bounds()
    lengths = np.diff(bounds)
    assert len(found) == np.maximum(lengths - window + 1, 0).sum()
    last_frames = bounds[1:] - 1
    assert not np.isin(found.starts, last_frames - window + 2).any()           # no wrap to a next/first frame
    assert np.isin(bounds[:-1][lengths >= window], found.starts).all()         # every episode's first step is used


def test_loop_batches_hold_consecutive_frames_and_same_episode_negatives(tiny):
    split = tiny["train"]
    stored = np.asarray(split.frames)
    found = training.windows(split, 2)
    plan = training.epoch_plan(found, np.random.default_rng(0), 8, True, devices.Distributed())
    source = training._FrameSource(stored, torch.device("cpu"), use_background=False)
    assert len(plan) == len(found) // 8
    for (rows, negatives), batch in zip(plan, source.batches(plan, torch.Generator())):
        assert (rows[:, 1] == rows[:, 0] + 1).all()
        assert (split.episode_index[rows[:, 1]] == split.episode_index[rows[:, 0]]).all()
        assert (split.episode_index[negatives] == split.episode_index[rows[:, 0]]).all()
        expected = encoders.preprocess(torch.from_numpy(stored[rows.reshape(-1)])).view(8, 2, 1, 210, 160)
        torch.testing.assert_close(batch.frames, expected, rtol=0, atol=0)


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different


def test_background_loader_trains_to_the_same_weights_as_resident_frames(tiny):
    results = []
    for loader in ("resident", "background"):
        method = training.build_method("static_dim", seed=0)
        config = training.TrainConfig(epochs=1, batch_size=16, seed=0, device="cpu")
        results.append(training.fit(method, tiny["train"], tiny["val"], config, loader=loader))
    _assert_same_weights(_state(results[0].method), _state(results[1].method))
    assert results[0].history[0]["val_loss"] == results[1].history[0]["val_loss"]


def test_early_stopping_and_keep_best(tiny):
    method = training.build_method("static_dim", seed=0)
    config = training.TrainConfig(epochs=5, batch_size=16, lr=1e-12, patience=1, keep="best", seed=0, device="cpu")
    result = training.fit(method, tiny["train"], tiny["val"], config)
    assert [row["epoch"] for row in result.history] == [1, 2]                  # epoch 2 did not lower val loss
    assert result.stopped_early and result.kept_epoch == 1


def test_resume_after_a_kill_ends_with_the_same_weights_as_a_straight_run(tiny_dir, tmp_path, capsys):
    killed_out = tmp_path / "killed"
    checkpoint = training.default_checkpoint_path(killed_out)
    code = ("from atarirep.training import pretrain; "
            f"pretrain('static_dim', {str(tiny_dir)!r}, {str(killed_out)!r}, epochs=1000, batch_size=16, "
            "seed=0, device='cpu', progress=False)")
    with open(tmp_path / "killed.log", "w") as log:
        process = subprocess.Popen([sys.executable, "-c", code], stderr=log)
        deadline = time.monotonic() + 120
        while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        process.kill()                                                         # SIGKILL: no cleanup runs
        process.wait()
    assert checkpoint.exists(), (tmp_path / "killed.log").read_text()
    assert not killed_out.exists()                                             # nothing looks finished
    epochs = torch.load(checkpoint, weights_only=True)["epoch"] + 1

    training.pretrain("static_dim", tiny_dir, killed_out, epochs=epochs, **FAST)
    assert f"resuming from {checkpoint} after epoch {epochs - 1}" in capsys.readouterr().err
    straight_out = tmp_path / "straight"
    training.pretrain("static_dim", tiny_dir, straight_out, epochs=epochs, **FAST)

    resumed, straight = encoders.load(killed_out / "encoder.pt"), encoders.load(straight_out / "encoder.pt")
    _assert_same_weights(resumed.state_dict(), straight.state_dict())
    assert not checkpoint.exists() and not training.default_checkpoint_path(straight_out).exists()
    log = pd.read_csv(straight_out / "log.tsv", sep="\t")
    assert list(log.columns[:4]) == list(training.LOG_COLUMNS) and list(log["epoch"]) == list(range(1, epochs + 1))
    pd.testing.assert_frame_equal(pd.read_csv(killed_out / "log.tsv", sep="\t").drop(columns="samples_per_s"),
                                  log.drop(columns="samples_per_s"))
    assert sorted(p.name for p in straight_out.iterdir()) == ["encoder.pt", "log.tsv", "metrics.json"]
    assert straight.meta["method"] == "static_dim" and straight.meta["game"] == "Breakout"


def test_untrained_baseline_saves_its_seeded_encoder_with_an_empty_log(tiny_dir, tmp_path):
    training.pretrain("random_cnn", tiny_dir, tmp_path / "random", epochs=3, **FAST)
    saved = encoders.load(tmp_path / "random" / "encoder.pt", expect="benchmark")
    _assert_same_weights(saved.state_dict(), training.build_method("random_cnn", seed=0).encoder.state_dict())
    assert (tmp_path / "random" / "log.tsv").read_text() == "\t".join(training.LOG_COLUMNS) + "\n"


@pytest.mark.parametrize("case", ["unknown method", "missing folder", "truncated frames", "batch too large",
                                  "cpc sequence too long", "bad keep"])
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
    out = tmp_path / "out"
    with pytest.raises(UserError) as err:
        training.pretrain(method, folder, out, **options)
    message = str(err.value)
    assert "\n" not in message
    expected = {
        "unknown method": f"pretraining method 'simclr' is unknown; use one of {', '.join(methods.METHODS)}",
        "missing folder": f"episode folder {folder} is missing or incomplete (no meta.json)",
        "truncated frames": f"{folder / 'frames.bin'} is truncated or missing (1000 of",
        "batch too large": "the train split has ",
        "cpc sequence too long": "the train split has 0 samples of 40 consecutive frames (longest episode: 24 "
                                 "frames), fewer than one batch of 16; lower pretrain batch_size",
        "bad keep": "pretrain keep='first' is invalid; it must be one of last, best",
    }[case]
    assert message.startswith(expected), message
    assert not out.exists() and not training.default_checkpoint_path(out).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == (["copy"] if case == "truncated frames" else [])


# -- DDP ----------------------------------------------------------------------------------------------
HALF = 3  # samples per process


def _ddp_worker(rank: int, port: int, folder: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    place, device = devices.init_distributed(torch.device("cpu"))
    frames = torch.load(os.path.join(folder, "frames.pt"))                     # (2 HALF, 2, 1, 210, 160)
    for name in ("pixel_pred", "stdim"):
        method = training.build_method(name, seed=0)
        model = devices.wrap(training.Objective(method), place, device)
        loss, _ = model(Batch(frames[rank * HALF:(rank + 1) * HALF]))
        loss.backward()
        if place.is_main:
            torch.save({k: p.grad for k, p in method.named_parameters()}, os.path.join(folder, f"{name}.pt"))
    dist.destroy_process_group()


def _gradients(name: str, frames: torch.Tensor) -> dict:
    method = training.build_method(name, seed=0)
    method.loss(Batch(frames))[0].backward()
    return {k: p.grad.clone() for k, p in method.named_parameters()}


def test_ddp_with_two_gloo_processes_matches_the_one_process_gradient(tiny, tmp_path):
    split = tiny["train"]
    rows = training.windows(split, 2).rows(np.arange(0, 12 * HALF, 6))       # 2 HALF pairs from several episodes
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
