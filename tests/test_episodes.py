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


def test_a_part_writer_closes_chunks_at_episode_ends_and_gives_each_episode_its_rows_and_bytes(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 4, size=(40, *episodes.FRAME_SHAPE), dtype=np.uint8)
    writer = episodes.PartWriter(tmp_path / "env0.bin", 40, 2)
    for i, frame in enumerate(frames):
        if i == 5:
            writer.end_episode()
        writer.add(frame, np.array([i, 2 * i]), -1 if i in (0, 5) else i % 3, float(i))
    part = writer.close()
    assert part.chunk_frames.tolist() == [5, episodes.CHUNK_FRAMES, 40 - 5 - episodes.CHUNK_FRAMES]
    assert part.episode.tolist() == [0] * 5 + [1] * 35 and part.labels[7].tolist() == [7, 14]
    first, second = part.episodes(env=3)
    assert (first.env, first.env_episode, len(first), second.env_episode, len(second)) == (3, 0, 5, 1, 35)
    assert second.chunks.tolist() == [1, 2] and second.byte_range == (
        int(part.chunk_bytes[0]),
        part.path.stat().st_size,
    )
    table, chunk_frames, _ = episodes.copy_episodes(
        tmp_path / "frames.bin", {"train": [(second, np.ones(35, bool))]}, ("a", "b"), ["b"]
    )
    assert list(table.columns) == [*episodes.STEP_COLUMNS, "b"] and chunk_frames.tolist() == [32, 3]
    assert table["action"].iloc[0] == -1 and table["b"].tolist() == [2 * i for i in range(5, 40)]
    assert episodes.split_counts(table, ["train"]) == {"train": {"episodes": 1, "frames": 35}}
