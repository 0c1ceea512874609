"""The benchmark's dataset rules over collected episodes: short-episode filter, split by episode,
label-entropy filter and test-frame deduplication (docs/protocols.md section 1).

Pure functions over arrays; they read and write nothing.
"""

from __future__ import annotations

import numpy as np

from atarirep.episodes import SPLITS
from atarirep.plumbing.errors import UserError


def check_fractions(fractions: dict[str, float]) -> dict[str, float]:
    """`fractions` in train, val, test order; UserError unless they are positive, name known splits,
    include train and sum to 1. The order is fixed so that a params file's key order changes nothing."""
    fractions = {name: fractions[name] for name in SPLITS if name in fractions} | dict(fractions)
    unknown = set(fractions) - set(SPLITS)
    if unknown or "train" not in fractions:
        raise UserError(
            f"splits {dict(fractions)} must name train and optionally val and test "
            f"(unknown: {', '.join(sorted(unknown)) or 'none'})"
        )
    if any(not 0 < f <= 1 for f in fractions.values()) or abs(sum(fractions.values()) - 1) > 1e-6:
        raise UserError(
            f"split fractions {dict(fractions)} must be positive and sum to 1 "
            f"(they sum to {sum(fractions.values()):g}); for example train: 0.7, val: 0.1, test: 0.2"
        )
    return fractions


def split_sizes(num_episodes: int, fractions: dict[str, float]) -> dict[str, int]:
    """Episodes per split: cut points floor(cumulative fraction * n), as the reference does."""
    cuts = np.floor(np.cumsum(list(fractions.values())) * num_episodes + 1e-9).astype(int)
    cuts[-1] = num_episodes
    return dict(zip(fractions, np.diff(np.r_[0, cuts]).tolist(), strict=True))


def min_episodes_for(fractions: dict[str, float]) -> int:
    """The fewest episodes for which every split gets at least one."""
    n = len(fractions)
    while min(split_sizes(n, fractions).values()) < 1:
        n += 1
    return n


def split_episodes(num_episodes: int, fractions: dict[str, float], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """{split: sorted episode ids}: a seeded shuffle of the episodes, cut by `fractions`.

    Departs from AtariARI: the reference shuffles indices and then does not use them, so its splits
    follow collection order; here the shuffle is used and seeded.
    """
    order = rng.permutation(num_episodes)
    sizes = split_sizes(num_episodes, fractions)
    out, start = {}, 0
    for name, size in sizes.items():
        out[name] = np.sort(order[start : start + size])
        start += size
    return out


def label_entropy(labels: np.ndarray) -> np.ndarray:
    """(V,) float64 entropy in nats of each column of (N, V) uint8 labels, over all N frames."""
    entropies = np.empty(labels.shape[1])
    for j in range(labels.shape[1]):
        p = np.bincount(labels[:, j], minlength=256) / len(labels)
        p = p[p > 0]
        entropies[j] = float(-(p * np.log(p)).sum())
    return entropies


def variables_to_keep(variables, entropies: np.ndarray, threshold: float) -> list[str]:
    """The variables whose label entropy (nats) is at least `threshold` (docs/protocols.md 1)."""
    return [v for v, e in zip(variables, entropies, strict=True) if e >= threshold]


def hash_set(frame_hashes: np.ndarray) -> set[bytes]:
    """The rows of (M, 16) uint8 frame hashes as a set, built once and looked up by every test episode."""
    return {row.tobytes() for row in frame_hashes}


def duplicate_mask(frame_hashes: np.ndarray, seen: set[bytes]) -> np.ndarray:
    """(N,) bool: which rows of `frame_hashes` (N, 16) uint8 are in `seen` (a `hash_set`)."""
    return np.fromiter((row.tobytes() in seen for row in frame_hashes), bool, len(frame_hashes))


def dedupe_test_episodes(test_hashes: list[np.ndarray], seen: set[bytes]) -> tuple[list[np.ndarray | None], int, int]:
    """Remove test frames equal to a train or val frame (hashes in `seen`), episode by episode.

    test_hashes: one (T, 16) uint8 array per test episode. Returns (per episode the (T,) bool mask of
    frames kept, or None where the episode is dropped because one frame or none is left; the number
    of test frames removed, the lone frames of dropped episodes included; the number of test
    episodes dropped). docs/protocols.md 1: test episodes left with 1 frame are dropped.
    """
    keeps: list[np.ndarray | None] = []
    num_removed, num_dropped = 0, 0
    for hashes in test_hashes:
        keep = ~duplicate_mask(hashes, seen)
        if keep.sum() <= 1:
            keeps.append(None)
            num_removed += len(keep)
            num_dropped += 1
        else:
            keeps.append(keep)
            num_removed += int((~keep).sum())
    return keeps, num_removed, num_dropped
