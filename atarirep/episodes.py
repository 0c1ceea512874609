"""Labelled episodes: the one structure that collection, pretraining and probing share, and its storage.

A stored dataset is a folder:
  frames.bin    uint8 frames (1, 210, 160), zlib-compressed in chunks of at most 32 frames that never
                span two episodes, so a split or an episode decompresses only its own chunks;
  steps.csv.gz  one row per frame: split, episode, t (frame within episode), env and env_episode (which
                environment produced it, and its episode number there), frame (index in frames.bin),
                action (that led to the frame, -1 on a first frame), reward, then one column per kept
                state variable (the label); an episode's frames lie in frames.bin in order, so frame - t is
                its first frame, and test frames left out of the table (duplicates) are still there;
  meta.json     game, annotation set, protocol, seed, counts, kept and dropped variables, chunk index.
This module reads and writes that format, and holds frames compressed in memory (CompressedFrames)
for loops that sample them at random; it does not collect (atarirep.collection) or split (atarirep.splits).
Writing goes through part files: each environment's frames and step columns as collected (`PartWriter`,
`Part`, `PartEpisode`), then the chosen episodes copied into one dataset (`copy_episodes`, `write_store`).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from atarirep.plumbing.errors import UserError

FORMAT = "atarirep-episodes/1"
FRAME_SHAPE = (1, 210, 160)  # full-size grayscale; downsampling would break the labels' meaning
FRAME_BYTES = int(np.prod(FRAME_SHAPE))
CHUNK_FRAMES = 32  # small chunks keep random access cheap; compression barely changes
COMPRESSION_LEVEL = 3  # zlib: ~30-120x on Atari frames at ~80 us per frame
SPLITS = ("train", "val", "test")
STEP_COLUMNS = ("split", "episode", "t", "env", "env_episode", "frame", "action", "reward")


class LazyFrames:
    """Frames of a stored dataset, read and decompressed only when indexed.

    Behaves like a read-only (N, 1, 210, 160) uint8 array: `len`, `shape`, `dtype`, integer, slice
    and integer-array indexing, and `np.asarray(frames)` to load them all.
    """

    def __init__(
        self,
        path: Path,
        frame_ids: np.ndarray,
        chunk_starts: np.ndarray,
        chunk_offsets: np.ndarray,
        first_ids: np.ndarray | None = None,
    ):
        self._path = path
        self.frame_ids = np.asarray(frame_ids, dtype=np.int64)  # row -> frame number in frames.bin
        # row -> frame number of its episode's first frame: an episode's frames lie in frames.bin in order, test
        # frames left out of the table (duplicates of train frames) included, so each row's history is there
        self.first_ids = None if first_ids is None else np.asarray(first_ids, dtype=np.int64)
        self._chunk_starts = chunk_starts  # (C + 1,) first frame of each chunk
        self._chunk_offsets = chunk_offsets  # (C + 1,) byte offset of each chunk
        self.shape = (len(self.frame_ids), *FRAME_SHAPE)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 4
        self._cache: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.frame_ids)

    def _chunk(self, f, chunk: int) -> np.ndarray:
        if self._cache is not None and self._cache[0] == chunk:
            return self._cache[1]
        start, end = self._chunk_offsets[chunk], self._chunk_offsets[chunk + 1]
        f.seek(start)
        raw = f.read(end - start)
        num_frames = self._chunk_starts[chunk + 1] - self._chunk_starts[chunk]
        try:
            data = zlib.decompress(raw)
        except zlib.error:
            data = b""
        if len(data) != num_frames * FRAME_BYTES:
            raise UserError(
                f"{self._path} is corrupt (chunk {chunk} does not decompress to "
                f"{num_frames} frames); delete it and run `dvc repro collect` (or `dvc pull`)"
            )
        frames = np.frombuffer(data, np.uint8).reshape(num_frames, *FRAME_SHAPE)
        self._cache = (chunk, frames)
        return frames

    def history(self, length: int) -> np.ndarray:
        """(N, length) frame numbers: each row's last `length` frames within its episode, oldest first, the episode's
        first frame repeated before it starts; the frames a table leaves out are in it, so no history skips back."""
        if self.first_ids is None:
            raise ValueError("these frames do not know their episodes' first frames")
        lags = np.arange(length - 1, -1, -1)
        return np.maximum(self.frame_ids[:, None] - lags[None], self.first_ids[:, None])

    def read(self, frame_ids: np.ndarray) -> np.ndarray:
        """(len(frame_ids), 1, 210, 160) uint8: frames by their number in frames.bin (not by row)."""
        return self._read(np.asarray(frame_ids, np.int64))

    def _read(self, frame_ids: np.ndarray) -> np.ndarray:
        out = np.empty((len(frame_ids), *FRAME_SHAPE), np.uint8)
        chunks = np.searchsorted(self._chunk_starts, frame_ids, side="right") - 1
        order = np.argsort(chunks, kind="stable")  # each chunk is decompressed once
        with open(self._path, "rb") as f:
            for i in order:
                chunk = chunks[i]
                out[i] = self._chunk(f, chunk)[frame_ids[i] - self._chunk_starts[chunk]]
        return out

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return self._read(self.frame_ids[np.asarray([index])])[0]
        return self._read(self.frame_ids[index])

    def __array__(self, dtype=None, copy=None):
        frames = self._read(self.frame_ids)
        return frames if dtype is None else frames.astype(dtype)

    def __iter__(self) -> Iterator[np.ndarray]:
        for start in range(0, len(self), 1024):
            yield from self[start : start + 1024]


class CompressedFrames:
    """Frames held in memory as one zlib stream per frame, so any frame decompresses alone.

    Behaves like a read-only (N, 1, 210, 160) uint8 array (`len`, `shape`, indexing, `np.asarray`).
    Random access is what sampling loops need: a batch of frames from a stored dataset's 32-frame
    chunks would decompress up to 32 frames per frame read, while here each read costs one frame
    (~30-60 us) and memory stays ~30-120x below the decompressed array.
    """

    def __init__(self, frames: np.ndarray | LazyFrames, level: int = 1, block_frames: int = 1024):
        self._blobs: list[bytes] = []
        for start in range(0, len(frames), block_frames):  # a block at a time: bounded memory while building
            for frame in np.asarray(frames[start : start + block_frames]):
                self._blobs.append(zlib.compress(frame.tobytes(), level))  # level 1: ratio ~as level 3, faster
        self.shape = (len(self._blobs), *FRAME_SHAPE)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 4

    def __len__(self) -> int:
        return len(self._blobs)

    @property
    def compressed_bytes(self) -> int:
        return sum(len(blob) for blob in self._blobs)

    def read_into(self, rows: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Decompress frames `rows` (R,) into `out` (R, 1, 210, 160) uint8 (any writable buffer); returns out."""
        flat = out.reshape(len(rows), FRAME_BYTES)
        for i, row in enumerate(np.asarray(rows, np.int64).tolist()):
            flat[i] = np.frombuffer(zlib.decompress(self._blobs[row]), np.uint8)
        return out

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return self[[index]][0]
        rows = np.arange(len(self))[index]
        return self.read_into(rows, np.empty((len(rows), *FRAME_SHAPE), np.uint8))

    def __array__(self, dtype=None, copy=None):
        frames = self[:]
        return frames if dtype is None else frames.astype(dtype)


@dataclass(frozen=True)
class Episodes:
    """Frames and their state labels, episode by episode; checks its own invariants when built.

    frames        (N, 1, 210, 160) uint8 grayscale, one per agent step; an array or LazyFrames
    labels        (N, V) int16; column j holds variables[j] (RAM bytes, 0..255)
    variables     the game's kept state variables
    episode_index (N,) int32; the episode each frame belongs to, frames of an episode contiguous and in order
    """

    frames: np.ndarray | LazyFrames | CompressedFrames
    labels: np.ndarray
    variables: tuple[str, ...]
    episode_index: np.ndarray

    def __post_init__(self):
        n = len(self.frames)
        if tuple(self.frames.shape[1:]) != FRAME_SHAPE or self.frames.dtype != np.uint8:
            raise ValueError(f"frames must be (N, 1, 210, 160) uint8, got {self.frames.shape} {self.frames.dtype}")
        if self.labels.shape != (n, len(self.variables)) or self.labels.dtype != np.int16:
            raise ValueError(
                f"labels must be ({n}, {len(self.variables)}) int16, got {self.labels.shape} {self.labels.dtype}"
            )
        if self.episode_index.shape != (n,) or self.episode_index.dtype != np.int32:
            raise ValueError(f"episode_index must be ({n},) int32")
        first_rows = self.episode_bounds()[:-1]
        if n and len(np.unique(self.episode_index[first_rows])) != len(first_rows):
            raise ValueError("each episode's frames must be contiguous")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_episodes(self) -> int:
        return len(self.episode_bounds()) - 1

    def episode_bounds(self) -> np.ndarray:
        """(E + 1,) int64: episode e spans rows bounds[e]:bounds[e + 1]."""
        starts = np.flatnonzero(np.diff(self.episode_index)) + 1
        return np.r_[0, starts, len(self)].astype(np.int64)

    def label_dicts(self) -> list[dict[str, int]]:
        return [dict(zip(self.variables, row, strict=True)) for row in self.labels.tolist()]


# -- writing ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Part:
    """One environment's collected frames: its part file of compressed chunks (chunks never span episodes) and
    the step columns of each frame, in order: the episode (numbered within the environment), the labels of
    every variable, the action that led to the frame (-1 on a first frame) and that step's reward."""

    path: Path
    episode: np.ndarray  # (N,) int32
    labels: np.ndarray  # (N, V) uint8
    actions: np.ndarray  # (N,) int16
    rewards: np.ndarray  # (N,) float32
    chunk_frames: np.ndarray  # (C,) int64 frames per chunk
    chunk_bytes: np.ndarray  # (C,) int64 compressed bytes per chunk

    def episodes(self, env: int) -> list[PartEpisode]:
        """Its episodes in order, `env` the environment's number."""
        chunk_starts = np.r_[0, np.cumsum(self.chunk_frames)]
        byte_starts = np.r_[0, np.cumsum(self.chunk_bytes)]
        chunk_episode = self.episode[chunk_starts[:-1]]
        found = []
        for ep in np.unique(self.episode):
            chunks = np.flatnonzero(chunk_episode == ep)
            byte_range = (int(byte_starts[chunks[0]]), int(byte_starts[chunks[-1] + 1]))
            rows = np.flatnonzero(self.episode == ep)
            found.append(PartEpisode(self, env, int(ep), rows, chunks, byte_range))
        return found


@dataclass(frozen=True)
class PartEpisode:
    """Where one collected episode lies: its rows in its part's columns and its chunks' bytes in its part file."""

    part: Part
    env: int  # the environment
    env_episode: int  # the episode's number in that environment
    rows: np.ndarray  # (T,) rows of the part's columns
    chunks: np.ndarray  # its chunks' numbers in the part
    byte_range: tuple[int, int]  # the chunks' span in the part file

    def __len__(self) -> int:
        return len(self.rows)


class PartWriter:
    """Writes one environment's part file while it is collected, a frame at a time with its step columns;
    a chunk is closed at CHUNK_FRAMES frames or at `end_episode`. `close` gives the Part."""

    def __init__(self, path: Path, budget: int, num_variables: int):
        self._path, self._file = path, open(path, "wb")
        self._pending: list[np.ndarray] = []
        self._chunk_frames: list[int] = []
        self._chunk_bytes: list[int] = []
        self._rows, self._episode = 0, 0
        self._columns = (
            np.empty(budget, np.int32),
            np.empty((budget, num_variables), np.uint8),
            np.full(budget, -1, np.int16),
            np.zeros(budget, np.float32),
        )

    def add(self, frame: np.ndarray, labels: np.ndarray, action: int = -1, reward: float = 0.0) -> None:
        """`frame` (1, 210, 160) uint8 and its labels; the action and reward of the step that led to it (a first
        frame: -1 and 0)."""
        episode, label_rows, actions, rewards = self._columns
        i = self._rows
        episode[i], label_rows[i], actions[i], rewards[i] = self._episode, labels, action, reward
        self._rows += 1
        self._pending.append(frame)
        if len(self._pending) == CHUNK_FRAMES:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            data = zlib.compress(np.stack(self._pending).tobytes(), COMPRESSION_LEVEL)
            self._file.write(data)
            self._chunk_frames.append(len(self._pending))
            self._chunk_bytes.append(len(data))
            self._pending = []

    def end_episode(self) -> None:
        """The frames added next are the environment's next episode."""
        self._flush()
        self._episode += 1

    def close(self) -> Part:
        self._flush()
        self._file.close()
        n = self._rows
        episode, labels, actions, rewards = (column[:n] for column in self._columns)
        frames, sizes = np.asarray(self._chunk_frames, np.int64), np.asarray(self._chunk_bytes, np.int64)
        return Part(self._path, episode, labels, actions, rewards, frames, sizes)


def copy_episodes(
    frames_bin: Path,
    split_episodes: dict[str, list[tuple[PartEpisode, np.ndarray]]],
    variables: tuple[str, ...],
    kept_variables: list[str],
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Copy each split's episodes' compressed chunks, split by split, into `frames_bin` without recompressing,
    and their steps table (STEP_COLUMNS, then the labels of `kept_variables`; the parts' label columns are
    `variables`).

    `split_episodes`: per split, (episode, (T,) bool mask of its frames the table keeps); a frame left out of
    the table keeps its bytes in its chunk. Returns (steps table, frames per chunk, bytes per chunk)."""
    label_columns = [variables.index(v) for v in kept_variables]
    tables: list[pd.DataFrame] = []
    chunk_frames: list[int] = []
    chunk_bytes: list[int] = []
    next_frame = 0
    with open(frames_bin, "wb") as out:
        for split_name, recs in split_episodes.items():
            for rec, keep in recs:
                with open(rec.part.path, "rb") as part:
                    part.seek(rec.byte_range[0])
                    out.write(part.read(rec.byte_range[1] - rec.byte_range[0]))
                chunk_frames += rec.part.chunk_frames[rec.chunks].tolist()
                chunk_bytes += rec.part.chunk_bytes[rec.chunks].tolist()
                t = np.flatnonzero(keep)
                table = pd.DataFrame(
                    {
                        "split": split_name,
                        "episode": len(tables),
                        "t": t,
                        "env": rec.env,
                        "env_episode": rec.env_episode,
                        "frame": next_frame + t,
                        "action": rec.part.actions[rec.rows][keep],
                        "reward": rec.part.rewards[rec.rows][keep],
                    }
                )
                labels = rec.part.labels[rec.rows][keep][:, label_columns]
                tables.append(pd.concat([table, pd.DataFrame(labels, columns=kept_variables)], axis=1))
                next_frame += len(rec.rows)
    return pd.concat(tables, ignore_index=True), np.asarray(chunk_frames), np.asarray(chunk_bytes)


def split_counts(steps: pd.DataFrame, split_names) -> dict[str, dict[str, int]]:
    """Per split of `split_names`: the episodes and frames a steps table holds (meta.json's `counts`)."""
    return {
        name: {
            "episodes": int(steps.loc[steps.split == name, "episode"].nunique()),
            "frames": int((steps.split == name).sum()),
        }
        for name in split_names
    }


def write_store(
    folder: Path, frames_bin: Path, chunk_frames: np.ndarray, chunk_bytes: np.ndarray, steps: pd.DataFrame, meta: dict
) -> None:
    """Finish a dataset inside `folder` (a temporary folder the caller will rename into place).

    `frames_bin` already holds the chunks, in order; `steps` has STEP_COLUMNS then label columns.
    """
    os.replace(frames_bin, folder / "frames.bin")
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, filename="") as gz:  # mtime 0: same bytes each run
        gz.write(steps.to_csv(index=False, lineterminator="\n").encode())
    (folder / "steps.csv.gz").write_bytes(buffer.getvalue())
    meta = {
        **meta,
        "format": FORMAT,
        "chunks": {"num_frames": [int(x) for x in chunk_frames], "num_bytes": [int(x) for x in chunk_bytes]},
    }
    (folder / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


# -- reading ----------------------------------------------------------------------------------------
class EpisodeStore:
    """A stored dataset opened for reading; frames stay on disk until indexed."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        fix = "run `dvc repro collect` (or `dvc pull`) to recreate it"
        meta_path = self.folder / "meta.json"
        if not self.folder.is_dir() or not meta_path.exists():
            raise UserError(f"episode folder {self.folder} is missing or incomplete (no meta.json); {fix}")
        try:
            self.meta = json.loads(meta_path.read_text())
            if self.meta.get("format") != FORMAT:
                raise ValueError(f"format {self.meta.get('format')!r}")
            chunk_frames = np.asarray(self.meta["chunks"]["num_frames"], np.int64)
            chunk_bytes = np.asarray(self.meta["chunks"]["num_bytes"], np.int64)
        except (ValueError, KeyError, TypeError) as err:
            raise UserError(f"{meta_path} is corrupt or of another format ({err}); {fix}") from None
        self._chunk_starts = np.r_[0, np.cumsum(chunk_frames)]
        self._chunk_offsets = np.r_[0, np.cumsum(chunk_bytes)]
        frames_path = self.folder / "frames.bin"
        size = frames_path.stat().st_size if frames_path.exists() else -1
        if size != self._chunk_offsets[-1]:
            raise UserError(
                f"{frames_path} is truncated or missing ({max(size, 0)} of {self._chunk_offsets[-1]} bytes); {fix}"
            )
        try:
            self.steps = pd.read_csv(self.folder / "steps.csv.gz")
        except (OSError, EOFError, zlib.error, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
            raise UserError(f"{self.folder / 'steps.csv.gz'} is corrupt or missing ({err}); {fix}") from None
        self.variables = tuple(self.meta["variables"])
        expected = [*STEP_COLUMNS, *self.variables]
        if list(self.steps.columns) != expected or len(self.steps) != sum(
            c["frames"] for c in self.meta["counts"].values()
        ):
            raise UserError(
                f"{self.folder / 'steps.csv.gz'} does not match meta.json (columns or row count differ); {fix}"
            )
        if len(self.steps) and self.steps["frame"].max() >= self._chunk_starts[-1]:
            raise UserError(f"{self.folder} refers to frames beyond frames.bin; {fix}")

    @property
    def game(self) -> str:
        return self.meta["game"]

    @property
    def split_names(self) -> tuple[str, ...]:
        return tuple(name for name in SPLITS if name in self.meta["counts"])

    def split(self, name: str) -> Episodes:
        """The frames and labels of split `name` ("train", "val" or "test")."""
        if name not in self.meta["counts"]:
            raise UserError(
                f"{self.folder} has no {name!r} split (it has {', '.join(self.split_names)}); "
                "collect it with splits that include it"
            )
        rows = self.steps[self.steps["split"] == name]
        frames = LazyFrames(
            self.folder / "frames.bin",
            rows["frame"].to_numpy(),
            self._chunk_starts,
            self._chunk_offsets,
            (rows["frame"] - rows["t"]).to_numpy(),
        )
        return Episodes(
            frames=frames,
            labels=rows[list(self.variables)].to_numpy(np.int16),
            variables=self.variables,
            episode_index=rows["episode"].to_numpy(np.int32),
        )


def load(folder: str | os.PathLike) -> EpisodeStore:
    """Open a stored dataset; UserError (one line, with the fix) if it is missing or corrupt."""
    return EpisodeStore(folder)


def load_splits(folder: str | os.PathLike) -> dict[str, Episodes]:
    """{split name: Episodes} of a stored dataset, frames read lazily."""
    store = load(folder)
    return {name: store.split(name) for name in store.split_names}
