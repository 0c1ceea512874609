"""Shared fixtures: small, real collections of ALE games (session-scoped: collected once per run)."""
import os

import pytest

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
