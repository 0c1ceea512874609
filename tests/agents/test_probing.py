"""Probing an agent's encoder on real labelled Breakout episodes: the agent's 84x84x4 view of them (stacks never
reach into the previous episode), its features, and the probe_checkpoints stage on two tiny checkpoints."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from atarirep import episodes, reports
from atarirep.agents import checkpoints, probing
from atarirep.agents.network import ActorCritic
from atarirep.agents.vector_env import agent_frames
from atarirep.plumbing.errors import UserError
from tests.conftest import PROBE_SETTINGS

REPO = Path(__file__).resolve().parents[2]
STEPS = (1024, 2048)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sampled_root(tmp_path_factory):
    """<root>/PPO_classic/Breakout/0/model_{1024,2048}.gz: two untrained actor-critics of different weights."""
    root = tmp_path_factory.mktemp("checkpoints")
    folder = checkpoints.run_dir(root, "PPO", "classic", "Breakout", 0)
    for i, step in enumerate(STEPS):
        torch.manual_seed(i)
        checkpoints.save(
            folder / checkpoints.file_name(step),
            ActorCritic(4),
            algo="PPO",
            protocol="classic",
            game="Breakout",
            seed=0,
            step=step,
            frames=4 * step,
        )
    return folder.parent


def test_stacks_never_cross_episode_boundaries_and_match_a_hand_built_stack(breakout_probe_dir):
    split = episodes.load(breakout_probe_dir).split("train")
    view = probing.agent_view(split, batch_size=100)  # resized a batch at a time
    whole = view.stacks(0, len(view))
    np.testing.assert_array_equal(whole[:150, -1], agent_frames(np.asarray(split.frames[:150])))
    frames84 = whole[:, -1]
    starts = split.episode_bounds()[:-1]
    assert len(starts) >= 3
    batched = np.concatenate([view.stacks(s, s + 37) for s in range(0, len(view), 37)])
    np.testing.assert_array_equal(batched, whole)
    episode_start = starts[np.searchsorted(starts, np.arange(len(split)), side="right") - 1]
    for t in sorted({*starts, *(starts + 1), *(starts + 2), *(starts + 3), *(starts + 10)} - {len(split)}):
        hand = np.stack([frames84[max(t - 3 + k, episode_start[t])] for k in range(4)])  # oldest first
        np.testing.assert_array_equal(whole[t], hand, err_msg=f"row {t}")
    for start in starts[1:]:  # nothing of the previous episode: its first frame repeated
        assert (frames84[start - 1] != frames84[start]).any()
        np.testing.assert_array_equal(whole[start], np.repeat(frames84[start][None], 4, axis=0))


def test_test_stacks_are_built_over_whole_episodes_removed_duplicates_included(breakout_probe_dir):
    store = episodes.load(breakout_probe_dir)
    test = store.split("test")
    steps = store.steps[store.steps["split"] == "test"]
    gaps = np.flatnonzero((np.diff(steps["t"].to_numpy()) > 1) & (np.diff(steps["episode"].to_numpy()) == 0))
    view = probing.agent_view(test)
    # Every row's stack is the 4 frames of frames.bin before it within its episode, whatever the table kept.
    all_frames = test.frames.read(np.arange(steps["frame"].max() + 1))
    for row in range(len(test)):
        frame, t = int(steps["frame"].iloc[row]), int(steps["t"].iloc[row])
        history = [max(frame - lag, frame - t) for lag in (3, 2, 1, 0)]
        np.testing.assert_array_equal(view.stacks(row, row + 1)[0], agent_frames(all_frames[history]))
    if not len(gaps):
        pytest.skip("this dataset's test split had no duplicate removed inside an episode")


def test_agent_features_are_the_networks_512_features_of_each_stack(breakout_probe_dir):
    split = episodes.load(breakout_probe_dir).split("val")
    torch.manual_seed(0)
    network = ActorCritic(4).train()
    features = probing.agent_features(network, split, batch_size=50)
    assert features.shape == (len(split), 512) and features.dtype == torch.float32 and not features.requires_grad
    assert network.training  # its mode is given back
    view = probing.agent_view(split)
    with torch.no_grad():
        expected = network.eval().features(torch.from_numpy(view.stacks(0, len(view))))
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-5)


def _params(folder: Path) -> None:
    probe = {
        "baselines": ["majority"],
        **{k: v for k, v in PROBE_SETTINGS.items() if k not in ("seed", "device")},
        "fast": True,
        "supervised_per_variable": False,
        "supervised_epochs": 1,
    }
    (folder / "params.yaml").write_text(yaml.safe_dump({"seed": 0, "device": "cpu", "probe": probe}))


def _stage(cwd: Path, root: Path, probe_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [
            sys.executable,
            str(REPO / "stages/probe_checkpoints.py"),
            "Breakout",
            str(root),
            str(probe_dir),
            "out",
            "probes/Breakout/rl_agent",
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_stage_probes_every_sampled_checkpoint_and_the_last_as_rl_agent(breakout_probe_dir, sampled_root, tmp_path):
    _params(tmp_path)
    result = _stage(tmp_path, sampled_root, breakout_probe_dir)
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(tmp_path / "out/scores.csv", keep_default_na=False)
    variables = episodes.load(breakout_probe_dir).variables
    assert list(table.columns) == [
        "game",
        "seed",
        "step",
        "frames",
        "variable",
        "categories",
        "f1",
        "accuracy",
        "num_epochs",
    ]
    assert sorted(set(zip(table["seed"], table["step"], table["frames"], strict=True))) == [
        (0, s, 4 * s) for s in STEPS
    ]
    assert len(table) == 2 * len(variables)
    curve = pd.read_csv(tmp_path / "out/f1_by_category.csv")
    assert curve[["seed", "step", "frames"]].values.tolist() == [[0, s, 4 * s] for s in STEPS]
    assert curve.columns[-1] == "across_categories"
    assert (tmp_path / "out/f1_by_category.md").read_text().startswith("| seed | step | frames |")
    assert (tmp_path / "out/f1_by_category.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((tmp_path / "out/metrics.json").read_text())
    assert metrics["num_checkpoints"] == 2 and metrics["rl_agent"]["step"] == 2048

    # The rl_agent folder: the probe stage's format, the first seed's last checkpoint, read by the report.
    rl_dir = tmp_path / "probes/Breakout/rl_agent"
    assert sorted(p.name for p in rl_dir.iterdir()) == ["metrics.json", "scores.csv"]
    rl = pd.read_csv(rl_dir / "scores.csv", keep_default_na=False)
    assert list(rl.columns) == ["game", "method", "variable", "categories", "f1", "accuracy", "num_epochs"]
    last = table[table["step"] == 2048].reset_index(drop=True)
    pd.testing.assert_frame_equal(rl.drop(columns="method"), last.drop(columns=["seed", "step", "frames"]))
    direct = probing.probe_checkpoint(sampled_root / "0" / "model_2048.gz", breakout_probe_dir, **PROBE_SETTINGS)
    assert rl["f1"].tolist() == pytest.approx(direct["f1"].tolist())
    rl_metrics = json.loads((rl_dir / "metrics.json").read_text())
    assert set(rl_metrics) == {"game", "method", "f1", "accuracy", "num_variables", "num_test_frames", "sampling"}
    assert rl_metrics["method"] == "rl_agent" and rl_metrics["num_variables"] == len(variables)
    shown = reports.load_results(tmp_path / "probes", ["Breakout"], ["rl_agent"])
    assert list(reports.game_table(shown).columns) == ["rl_agent"]


def test_a_truncated_checkpoint_stops_the_stage_in_one_line_with_nothing_written(
    breakout_probe_dir, sampled_root, tmp_path
):
    root = tmp_path / "sampled" / "Breakout"
    shutil.copytree(sampled_root, root)
    damaged = root / "0" / "model_2048.gz"
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    _params(tmp_path)
    result = _stage(tmp_path, root, breakout_probe_dir)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: checkpoint {damaged} is truncated or corrupt (EOFError); rerun "
        "`dvc repro` for the stage that trains it, or `dvc pull` it"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml", "sampled"]


def test_bad_layouts_and_a_checkpoint_of_another_game_are_refused_in_one_line(breakout_probe_dir, tmp_path):
    with pytest.raises(UserError) as err:
        checkpoints.sampled_runs(tmp_path / "absent")
    assert str(err.value).startswith(f"sampled checkpoints {tmp_path / 'absent'} are missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError) as err:
        checkpoints.sampled_runs(tmp_path / "empty")
    assert "holds no SEED folders" in str(err.value)
    checkpoints.save(
        tmp_path / "model_8.gz", ActorCritic(6), algo="PPO", protocol="classic", game="Pong", seed=0, step=8, frames=32
    )
    with pytest.raises(UserError) as err:
        probing.probe_checkpoint(tmp_path / "model_8.gz", breakout_probe_dir, **PROBE_SETTINGS)
    assert str(err.value) == (
        f"checkpoint {tmp_path / 'model_8.gz'} was trained on Pong, not Breakout; point to "
        "sampled checkpoints of Breakout (data/checkpoints_sampled/<ALGO_protocol>/Breakout, or "
        "a multi-task run's that lists Breakout in multitask.games)"
    )
