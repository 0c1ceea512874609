"""Who picks the actions during collection: the random agent now, a trained agent later.

A policy is built per environment (with that environment's own RNG), so what an environment
records does not depend on how environments are grouped into worker processes.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from atarirep.errors import UserError

RANDOM_ACTIONS = ("nonzero", "all")


class Policy(Protocol):
    def act(self, frame: np.ndarray, is_first: bool) -> int:
        """An action index into the game's minimal action set for `frame` (1, 210, 160) uint8.

        `is_first` marks the first frame of an episode (a stateful agent resets its frame stack).
        """


class RandomAgent:
    """Uniform random actions over 1..n-1 (`nonzero`, the reference never picks NOOP) or 0..n-1 (`all`)."""

    def __init__(self, num_actions: int, rng: np.random.Generator, random_actions: str = "nonzero"):
        if random_actions not in RANDOM_ACTIONS:
            raise UserError(f"random_actions {random_actions!r} is unknown; use one of {', '.join(RANDOM_ACTIONS)}")
        self._low = 1 if random_actions == "nonzero" else 0
        self._num_actions = num_actions
        self._rng = rng

    def act(self, frame: np.ndarray, is_first: bool) -> int:
        return int(self._rng.integers(self._low, self._num_actions))


COLLECT_MODES = ("random_agent",)


def make_policy(collect_mode: str, num_actions: int, rng: np.random.Generator, **options) -> Policy:
    """The policy for `collect_mode`; a trained agent ("pretrained_ppo") plugs in here later."""
    if collect_mode == "random_agent":
        return RandomAgent(num_actions, rng, options.get("random_actions", "nonzero"))
    raise UserError(f"collect_mode {collect_mode!r} is unknown; use one of {', '.join(COLLECT_MODES)}")
