"""The benchmark's dataset rules over collected episodes: short-episode filter, split by episode,
label-entropy filter and test-frame deduplication (PROTOCOLS.md section 1).

Pure functions over arrays; they read and write nothing.
"""
from __future__ import annotations

import numpy as np

from atarirep.episodes import SPLITS
from atarirep.errors import UserError


def check_fractions(fractions: dict[str, float]) -> dict[str, float]:
    """`fractions` in train, val, test order; UserError unless they are positive, name known splits,
    include train and sum to 1. The order is fixed so that a params file's key order changes nothing."""
    fractions = {name: fractions[name] for name in SPLITS if name in fractions} | dict(fractions)
    unknown = set(fractions) - set(SPLITS)
    if unknown or "train" not in fractions:
        raise UserError(f"splits {dict(fractions)} must name train and optionally val and test "
                        f"(unknown: {', '.join(sorted(unknown)) or 'none'})")
    if any(not 0 < f <= 1 for f in fractions.values()) or abs(sum(fractions.values()) - 1) > 1e-6:
        raise UserError(f"split fractions {dict(fractions)} must be positive and sum to 1 "
                        f"(they sum to {sum(fractions.values()):g}); for example train: 0.7, val: 0.1, test: 0.2")
    return fractions


def split_sizes(num_episodes: int, fractions: dict[str, float]) -> dict[str, int]:
    """Episodes per split: cut points floor(cumulative fraction * n), as the reference does."""
    cuts = np.floor(np.cumsum(list(fractions.values())) * num_episodes + 1e-9).astype(int)
    cuts[-1] = num_episodes
    return dict(zip(fractions, np.diff(np.r_[0, cuts]).tolist()))


def min_episodes_for(fractions: dict[str, float]) -> int:
    """The fewest episodes for which every split gets at least one."""
    n = len(fractions)
    while min(split_sizes(n, fractions).values()) < 1:
        n += 1
    return n


def split_episodes(num_episodes: int, fractions: dict[str, float],
                   rng: np.random.Generator) -> dict[str, np.ndarray]:
    """{split: sorted episode ids}: a seeded shuffle of the episodes, cut by `fractions`.

    Departs from AtariARI: the reference shuffles indices and then does not use them, so its splits
    follow collection order; here the shuffle is used and seeded.
    """
    order = rng.permutation(num_episodes)
    sizes = split_sizes(num_episodes, fractions)
    out, start = {}, 0
    for name, size in sizes.items():
        out[name] = np.sort(order[start:start + size])
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


def duplicate_mask(frame_hashes: np.ndarray, reference_hashes: np.ndarray) -> np.ndarray:
    """(N,) bool: which of `frame_hashes` (N, 16) uint8 also occur in `reference_hashes` (M, 16)."""
    seen = {row.tobytes() for row in reference_hashes}
    return np.fromiter((row.tobytes() in seen for row in frame_hashes), bool, len(frame_hashes))
