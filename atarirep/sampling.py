"""How an epoch draws its samples from a split's episodes: `reference` (AtariARI's rule) or `every_frame`.

reference: every sample picks an episode uniformly with replacement, then one item uniformly inside it, as
AtariARI's `BatchSampler(RandomSampler(episodes, replacement=True, num_samples=...), batch_size,
drop_last=True)` then `np.random.randint(len(episode))`; frames of short episodes count more, and a draw
repeats some frames and misses others. Training, validation and test batches are all drawn this way.
every_frame: a seeded permutation of all items, each once per epoch (validation and test use every item once).
Items are frames for probes and windows of consecutive frames of one episode for pretraining; `bounds`
(E + 1,) int64 are the first item of each episode, then the number of items (episodes are contiguous).
Pure functions of a numpy Generator: the same seed draws the same samples.
"""

from __future__ import annotations

import numpy as np

from atarirep.plumbing.errors import UserError

SAMPLINGS = ("reference", "every_frame")


def check(sampling: str, where: str) -> None:
    """UserError (one line) unless `sampling` is offered; `where` names the param, e.g. "probe.sampling"."""
    if sampling not in SAMPLINGS:
        raise UserError(
            f"{where}={sampling!r} is not offered; use one of {', '.join(SAMPLINGS)} "
            "(reference: AtariARI's draw of episodes with replacement; every_frame: each frame once)"
        )


def draw(rng: np.random.Generator, bounds: np.ndarray, num_samples: int) -> np.ndarray:
    """(num_samples,) int64 items: each an episode uniformly with replacement (episodes with no item are never
    chosen), then an item uniformly inside it."""
    bounds = np.asarray(bounds, np.int64)
    lengths = np.diff(bounds)
    eligible = np.flatnonzero(lengths > 0)
    if num_samples <= 0 or len(eligible) == 0:
        return np.zeros(0, np.int64)
    chosen = eligible[rng.integers(0, len(eligible), num_samples)]
    return bounds[chosen] + rng.integers(0, lengths[chosen])


def epoch_order(
    rng: np.random.Generator, bounds: np.ndarray, sampling: str, *, num_samples: int | None = None
) -> np.ndarray:
    """One epoch's `num_samples` items (default: one per item, AtariARI's total_steps) in order: the first of a
    permutation of every item (every_frame), or `draw` (reference)."""
    num_items = int(bounds[-1])
    num_samples = num_items if num_samples is None else num_samples
    if sampling == "every_frame":
        return rng.permutation(num_items)[:num_samples]
    check(sampling, "sampling")
    return draw(rng, bounds, num_samples)


def evaluation_rows(rng: np.random.Generator | None, bounds: np.ndarray, sampling: str, batch_size: int) -> np.ndarray:
    """The items a validation or test pass scores: every item once (every_frame), or AtariARI's draw of one
    sample per item, the last partial batch dropped unless it is the only one (reference; `rng` must then be
    given)."""
    num_items = int(bounds[-1])
    if sampling == "every_frame":
        return np.arange(num_items)
    check(sampling, "sampling")
    if rng is None:
        raise ValueError("reference sampling draws its rows: pass rng")
    return draw(rng, bounds, num_items // batch_size * batch_size or num_items)
