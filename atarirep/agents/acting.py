"""How an agent picks its actions from its network's outputs: one sampling rule for every algorithm and stage."""

from __future__ import annotations

import numpy as np


def gumbel_max(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A draw from softmax(scores) along the last axis: argmax(scores + Gumbel noise), from a seeded numpy generator
    (the same draws on CPU and CUDA). `scores` are logits or log-probabilities, in float64."""
    return (scores + rng.gumbel(size=scores.shape)).argmax(-1)
