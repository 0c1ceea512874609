"""Shared fixtures: small, real collections of ALE games (session-scoped: collected once per run), a tiny encoder."""
import os

import pytest
import torch
from torch import nn

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
