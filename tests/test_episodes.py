"""Episode storage: CompressedFrames holds a stored split's frames compressed in memory, bit-exact."""

import numpy as np
import pytest

from atarirep import episodes
from atarirep.collection import collect


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    out = tmp_path_factory.mktemp("episodes") / "pong"
    collect(
        "Pong", out, steps=120, splits_fractions={"train": 0.5, "val": 0.5}, num_envs=2, min_episode_length=8, seed=0
    )
    return episodes.load(out).split("train")


def test_compressed_frames_give_back_the_stored_frames_by_any_index(stored):
    frames = np.asarray(stored.frames)  # (N, 1, 210, 160) uint8
    compressed = episodes.CompressedFrames(stored.frames, block_frames=7)  # blocks not dividing N
    assert len(compressed) == len(frames) and compressed.shape == frames.shape and compressed.dtype == np.uint8
    np.testing.assert_array_equal(np.asarray(compressed), frames)
    rows = np.array([5, 0, 5, len(frames) - 1])
    np.testing.assert_array_equal(compressed[rows], frames[rows])
    np.testing.assert_array_equal(compressed[3], frames[3])
    np.testing.assert_array_equal(compressed[2:9], frames[2:9])
    out = np.zeros((2, *episodes.FRAME_SHAPE), np.uint8)
    assert compressed.read_into(np.array([4, 1]), out) is out
    np.testing.assert_array_equal(out, frames[[4, 1]])
    assert compressed.compressed_bytes < frames.nbytes / 10  # Atari frames compress well


def test_episodes_accepts_compressed_frames(stored):
    rebuilt = episodes.Episodes(
        episodes.CompressedFrames(stored.frames), stored.labels, stored.variables, stored.episode_index
    )
    assert len(rebuilt) == len(stored)
