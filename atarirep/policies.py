"""Who picks the actions during collection: the random agent, or a trained agent's checkpoint.

A policy is built per environment (with that environment's own RNG), so what an environment
records does not depend on how environments are grouped into worker processes.
"""

from __future__ import annotations

import multiprocessing
from typing import Protocol

import numpy as np

from atarirep.plumbing.errors import UserError

RANDOM_ACTIONS = ("nonzero", "all")


class Policy(Protocol):
    def act(self, frame: np.ndarray, is_first: bool, reward: float = 0.0) -> int:
        """An action index into the game's minimal action set for `frame` (1, 210, 160) uint8.

        `is_first` marks the first frame of an episode (a stateful agent resets its frame stack); `reward` is the
        (clipped) reward of the step that led to `frame` (0 on a first frame), which an IMPALA network reads.
        """


class RandomAgent:
    """Uniform random actions over 1..n-1 (`nonzero`, the reference never picks NOOP) or 0..n-1 (`all`)."""

    def __init__(self, num_actions: int, rng: np.random.Generator, random_actions: str = "nonzero"):
        _check_choice("random_actions", random_actions, RANDOM_ACTIONS)
        self._low = 1 if random_actions == "nonzero" else 0
        self._num_actions = num_actions
        self._rng = rng

    def act(self, frame: np.ndarray, is_first: bool, reward: float = 0.0) -> int:
        return int(self._rng.integers(self._low, self._num_actions))


class AgentPolicy:
    """A trained agent's checkpoint acting on the stored frames (docs/protocols.md 1, trained-agent mode).

    Each 210x160 frame is resized as the agent saw frames in training (atarirep.agents.vector_env) and
    stacked 4 deep, copies of an episode's first frame before it (as the training env stacks); the action is
    drawn from the policy (the argmax for a Q-network; an IMPALA network also reads the last action and reward),
    and with probability `random_prob` (the reference: 0.2) a uniformly random action replaces it.
    """

    def __init__(self, checkpoint: str, num_actions: int, rng: np.random.Generator, random_prob: float = 0.2):
        import torch

        from atarirep.agents import acting, checkpoints, network, vector_env

        if multiprocessing.parent_process() is not None:  # a collecting worker: they run side by side
            torch.set_num_threads(1)  # (never changed in the caller's own process)
        self._resize, self._act = vector_env.agent_frames, acting.act
        self._network, _ = checkpoints.load_network(checkpoint)
        if self._network.num_actions != num_actions:
            raise UserError(
                f"checkpoint {checkpoint} acts with {self._network.num_actions} actions but this game "
                f"has {num_actions}; use a checkpoint trained on this game"
            )
        self._stack = np.zeros((1, vector_env.STACK, *vector_env.AGENT_FRAME), np.uint8)
        self._greedy, self._last_action = isinstance(self._network, network.QNetwork), 0
        self._rng, self._random_prob, self._num_actions = rng, random_prob, num_actions

    def act(self, frame: np.ndarray, is_first: bool, reward: float = 0.0) -> int:
        frame84 = self._resize(frame)[0]
        if is_first:
            self._stack[0] = frame84
            self._last_action = 0
        else:
            self._stack[0, :-1] = self._stack[0, 1:]
            self._stack[0, -1] = frame84
        # The reference's trained-agent mode samples a policy (greedy only for a Q-network), whatever the
        # checkpoint's evaluation rule.
        last_action, last_reward = np.array([self._last_action], np.int64), np.array([reward], np.float32)
        chosen = self._act(
            self._network, self._stack, last_action, last_reward, self._rng, self._random_prob, greedy=self._greedy
        )
        action = int(chosen[0])
        self._last_action = action
        return action


COLLECT_MODES = ("random_agent", "agent")


def make_policy(collect_mode: str, num_actions: int, rng: np.random.Generator, **options) -> Policy:
    """The policy for `collect_mode`: `random_agent` (options: random_actions) or `agent` (options:
    agent_checkpoint, a model_STEP.gz file, and agent_random_prob)."""
    if collect_mode == "random_agent":
        return RandomAgent(num_actions, rng, options.get("random_actions", "nonzero"))
    _check_choice("collect_mode", collect_mode, COLLECT_MODES)
    return AgentPolicy(options["agent_checkpoint"], num_actions, rng, options.get("agent_random_prob", 0.2))


def check_policy(
    collect_mode: str, random_actions: str, agent_checkpoint: str | None, agent_random_prob: float
) -> None:
    """UserError (one line, with the fix) unless `make_policy` can build the policy: a known collect_mode and
    random_actions, a checkpoint in agent mode, agent_random_prob a probability."""
    _check_choice("collect_mode", collect_mode, COLLECT_MODES)
    _check_choice("random_actions", random_actions, RANDOM_ACTIONS)
    if collect_mode == "agent" and not agent_checkpoint:
        raise UserError(
            "collect_mode agent needs an agent checkpoint; run train_agent and sample_checkpoints "
            "first (dvc repro does)"
        )
    if not 0 <= agent_random_prob <= 1:
        raise UserError(f"agent_random_prob {agent_random_prob} must be in [0, 1] (the reference: 0.2)")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"{name} {value!r} is unknown; use one of {', '.join(choices)}")
