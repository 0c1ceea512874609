import pytest
import torch

from atarirep import get_episodes
from atarirep.errors import UserError


def test_get_episodes_returns_the_reference_layout():
    tr_eps, val_eps, tr_labels, val_labels, test_eps, test_labels = get_episodes(
        env_name="BreakoutNoFrameskip-v4", steps=1600, seed=5, num_processes=4, min_episode_length=16,
        progress=False)
    assert len(tr_eps) == len(tr_labels) and len(val_eps) == len(val_labels) and len(test_eps) == len(test_labels)
    assert min(len(tr_eps), len(val_eps), len(test_eps)) >= 1
    episode, labels = tr_eps[0], tr_labels[0]
    assert episode.dtype == torch.uint8 and episode.shape[1:] == (1, 210, 160)
    assert set(labels) >= {"ball_x", "player_x"} and "block_bit_map_0" not in labels  # entropy-filtered
    assert all(len(v) == len(episode) for v in labels.values())
    total = sum(len(e) for e in tr_eps + val_eps + test_eps)
    assert total <= 1600


def test_train_encoder_mode_returns_two_splits():
    tr_eps, val_eps = get_episodes("Breakout", steps=1600, num_processes=4, min_episode_length=16,
                                   train_mode="train_encoder", progress=False)
    assert len(tr_eps) >= len(val_eps) >= 1
    assert not any(torch.equal(a, b) for a in tr_eps for b in val_eps)


def test_downsampling_is_refused_because_it_breaks_labels():
    with pytest.raises(UserError, match="full-size grayscale frames only"):
        get_episodes("Pong", steps=100, downsample=True)


def test_the_reference_names_import_from_the_package():
    import subprocess
    import sys
    code = ("import sys, atarirep; assert 'torch' not in sys.modules; "
            "from atarirep import AtariARIWrapper, get_episodes, ProbeTrainer; print(ProbeTrainer.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "atarirep.probe"
