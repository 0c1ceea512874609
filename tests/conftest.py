"""Shared fixtures: small, real collections of ALE games (session-scoped: collected once per run), a tiny encoder,
and a git + DVC copy of the project after one tiny `dvc repro` (built once per run, copied per test)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from atarirep import params
from atarirep.collection import collect

os.environ.setdefault("DVC_NO_ANALYTICS", "1")

SMALL_BREAKOUT = dict(steps=1600, num_envs=4, min_episode_length=16, seed=3)


@pytest.fixture(scope="session")
def breakout_probe_dir(tmp_path_factory):
    """A Breakout probing dataset (70/10/20) of 1600 random-agent steps over 4 envs."""
    out = tmp_path_factory.mktemp("episodes") / "breakout_probe"
    collect("Breakout", out, splits_fractions={"train": 0.7, "val": 0.1, "test": 0.2}, purpose="probe",
            **SMALL_BREAKOUT)
    return out


@pytest.fixture(scope="session")
def breakout_pretrain_dir(tmp_path_factory):
    """A Breakout pretraining dataset (80/20) of 1600 random-agent steps over 4 envs."""
    out = tmp_path_factory.mktemp("episodes") / "breakout_pretrain"
    collect("Breakout", out, splits_fractions={"train": 0.8, "val": 0.2}, purpose="pretrain", **SMALL_BREAKOUT)
    return out


@pytest.fixture(scope="session")
def breakout_dir(tmp_path_factory):
    """About 1,500 real Breakout frames (random agent, 2 envs), split 70/10/20 by episode: ~2 s to collect."""
    out = tmp_path_factory.mktemp("episodes") / "breakout"
    collect("Breakout", out, steps=1600, splits_fractions={"train": 0.7, "val": 0.1, "test": 0.2}, num_envs=2,
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


@pytest.fixture(scope="session")
def tiny_encoder():
    """The TinyEncoder class: call it for a fresh encoder (or pass it as a factory)."""
    return TinyEncoder


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small matrices and convolutions run far faster on one thread than on two contended ones (the shared
    2-core CI box); a module opts in with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = {"env": "Breakout",
        "collect": {"num_envs": 4, "num_workers": 2, "min_episode_length": 16,
                    "pretrain": {"steps": 800}, "probe": {"steps": 1200}},
        "pretrain": {"methods": ["random_cnn", "stdim"], "epochs": 1, "batch_size": 16},
        "probe": {"baselines": ["majority"], "epochs": 2, "patience": 1},
        "train_agent": {"ppo": {"total_steps": 1024, "num_envs": 4, "num_steps": 128, "checkpoint_every": 512}},
        "multitask": {"impala": {"total_steps": 640, "unroll_length": 40, "batch_size": 4, "num_actors": 2,
                                 "checkpoint_every": 320}},
        "sample_checkpoints": {"keep": 2},
        "evaluate_agent": {"protocols": ["classic"], "episodes": 1, "max_steps": 100},
        "saliency": {"checkpoints": 1, "frames": 3}}
ROOT_FILES = ("atarirep", "stages", "conf", "dvc.yaml", ".dvcignore", "pyproject.toml")


def _run(args, cwd, **kwargs):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(cwd)}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def _merge(base: dict, update: dict) -> dict:
    return {**base, **{k: _merge(base.get(k, {}), v) if isinstance(v, dict) else v for k, v in update.items()}}


@pytest.fixture(scope="session")
def built_repo(tmp_path_factory):
    """A git + DVC copy of this project at tiny default-profile amounts, after one `dvc repro` (committed).

    Returns (root, stdout of that first repro)."""
    root = tmp_path_factory.mktemp("built") / "repo"
    root.mkdir()
    for name in ROOT_FILES:
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, root / name,
                                                           **({"ignore": shutil.ignore_patterns("__pycache__")}
                                                              if src.is_dir() else {}))
    default = yaml.safe_load((root / "conf/profile/default.yaml").read_text())
    (root / "conf/profile/default.yaml").write_text("# @package _global_\n" + yaml.safe_dump(_merge(default, TINY)))
    (root / "params.yaml").write_text(yaml.safe_dump(params.compose(root / "conf"), sort_keys=False))
    _run(["git", "init", "-q"], root)
    _run(["dvc", "init", "-q"], root)
    _run(["dvc", "config", "core.analytics", "false"], root)
    _run(["dvc", "config", "hydra.enabled", "true"], root)
    shutil.copytree(REPO / ".dvc/plots", root / ".dvc/plots")  # the offline plots page
    _run(["dvc", "config", "plots.html_template", "plots/offline.html"], root)
    _run(["dvc", "remote", "add", "-d", "local", "../remote"], root)   # beside the repo
    first = _run(["dvc", "repro"], root, timeout=900)
    _run(["git", "add", "-A"], root)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "repro"], root)
    return root, first.stdout


@pytest.fixture
def repo(built_repo, tmp_path):
    """This test's own copy of the built repository (its remote is its own ../remote folder)."""
    root = tmp_path / "repo"
    shutil.copytree(built_repo[0], root, symlinks=True)
    return root
