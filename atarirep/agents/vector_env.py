"""Games stepped as a batch for agents: ale-py's C++ `AtariVectorEnv` under a protocol of `envs.PROTOCOLS`.

Why ale-py's vector env: it ships with ale-py (a dependency already), and stepped Breakout faster than
envpool in bench/bench_agent.py on 2 CPU cores; both do the classic preprocessing in C++ (frame skip 4
with the max of the last two frames, 84x84 grayscale by area resize, a stack of 4).

`AgentEnvs` adds what training and evaluation need on top: the protocol's life-loss rule, raw (unclipped)
returns of whole games, and which steps end a real game. `agent_frames` turns stored 210x160 frames into
the same 84x84 view, so an agent can act on, and be probed with, the labelled episodes.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from ale_py.vector_env import AtariVectorEnv

from atarirep.envs import Protocol, get_protocol, resolve_ale_game

AGENT_FRAME = (84, 84)
STACK = 4


@dataclass
class Step:
    """One batched step: what PPO stores, and the games that ended in it (raw return, agent steps)."""

    obs: np.ndarray             # (N, 4, 84, 84) uint8: the next observation (a new game's first after an end)
    reward: np.ndarray          # (N,) float32, clipped to its sign when the protocol clips
    terminated: np.ndarray      # (N,) bool: game over, or a life lost where the protocol ends episodes there
    truncated: np.ndarray       # (N,) bool: the frame cap
    finished_returns: list[float]
    finished_lengths: list[int]


class AgentEnvs:
    """`num_envs` copies of `game` under `protocol`; `training` applies its life-loss rule (evaluation never does);
    `full_action_space`: all 18 ALE actions (games then share one action set), else the game's minimal set."""

    def __init__(self, game: str, num_envs: int, protocol: str | Protocol = "classic", *, training: bool = True,
                 num_threads: int = 0, full_action_space: bool = False):
        self.protocol = protocol if isinstance(protocol, Protocol) else get_protocol(protocol)
        self.game = resolve_ale_game(game)   # agents play any game with a ROM, annotated or not
        self.num_envs = num_envs
        self._life_loss_ends = training and self.protocol.terminal_on_life_loss
        # With life_loss_info a life loss reports terminated without resetting the game (the classic
        # EpisodicLife rule); ale-py's episodic_life would reset the whole game at every life lost.
        self._env = AtariVectorEnv(
            _rom_name(self.game), num_envs, num_threads=num_threads, autoreset_mode="SameStep",
            frameskip=self.protocol.frame_skip, maxpool=True, grayscale=True, stack_num=STACK,
            img_height=AGENT_FRAME[0], img_width=AGENT_FRAME[1], noop_max=self.protocol.noop_max,
            use_fire_reset=self.protocol.fire_on_reset, episodic_life=False,
            life_loss_info=self._life_loss_ends, reward_clipping=False,
            repeat_action_probability=self.protocol.sticky_action_prob,
            max_num_frames_per_episode=self.protocol.max_frames_per_episode,
            full_action_space=full_action_space)   # ALE's 18 actions in every game, not the game's minimal set
        self.num_actions = int(self._env.single_action_space.n)
        self._returns = np.zeros(num_envs, np.float64)
        self._lengths = np.zeros(num_envs, np.int64)
        self._lives = np.zeros(num_envs, np.int64)

    def reset(self, seed: int) -> np.ndarray:
        """Start a new game in every env; env i's no-ops and sticky actions follow `seed` and i."""
        obs, info = self._env.reset(seed=int(seed))
        self._returns[:] = 0
        self._lengths[:] = 0
        self._lives[:] = info["lives"]
        return obs

    def step(self, actions: np.ndarray) -> Step:
        obs, raw_reward, terminated, truncated, info = self._env.step(np.asarray(actions, np.int64))
        lives = info["lives"]
        self._returns += raw_reward
        self._lengths += 1
        # A terminated step whose lives did not drop is a game over (SameStep autoreset has already
        # started the next game, whose lives are the full count); one whose lives dropped, a life lost.
        game_over = (terminated & (lives >= self._lives)) | truncated
        self._lives[:] = lives
        finished = np.flatnonzero(game_over)
        step = Step(obs, (np.sign(raw_reward) if self.protocol.clip_rewards else raw_reward).astype(np.float32),
                    terminated.astype(bool), truncated.astype(bool),
                    self._returns[finished].tolist(), self._lengths[finished].tolist())
        self._returns[finished] = 0
        self._lengths[finished] = 0
        return step

    @property
    def running_returns(self) -> np.ndarray:
        """(N,) raw (unclipped) return of each env's game so far (a copy): what a cut game scored."""
        return self._returns.copy()

    def close(self) -> None:
        self._env.close()


def _rom_name(game: str) -> str:
    """ALE name (MsPacman) -> ROM id (ms_pacman)."""
    return "".join("_" + c.lower() if c.isupper() and i else c.lower() for i, c in enumerate(game))


@functools.cache
def _area_weights(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray]:
    """An area resize along one axis as (indices, weights), each (size_out, K): output pixel o averages the
    input pixels indices[o] with weights[o] (the share of each that o's span covers; K at most 4 here)."""
    scale = size_in / size_out
    dense = np.zeros((size_out, size_in), np.float64)
    for o in range(size_out):
        start, stop = o * scale, (o + 1) * scale
        for i in range(int(np.floor(start)), int(np.ceil(stop))):
            dense[o, i] = min(stop, i + 1) - max(start, i)
    width = int((dense > 0).sum(1).max())
    indices = np.argsort(dense == 0, axis=1, kind="stable")[:, :width]   # each row's covered pixels first
    return indices, (np.take_along_axis(dense, indices, 1) / scale).astype(np.float32)


def agent_frames(frames: np.ndarray) -> np.ndarray:
    """(T, 1, 210, 160) or (T, 210, 160) uint8 grayscale -> (T, 84, 84) uint8, as the vector env resizes."""
    frames = frames.reshape(-1, *frames.shape[-2:])
    (row_idx, row_w), (col_idx, col_w) = (_area_weights(frames.shape[1], AGENT_FRAME[0]),
                                          _area_weights(frames.shape[2], AGENT_FRAME[1]))
    # A weighted sum of the few input rows (then columns) each output pixel covers.
    rows = sum(frames[:, row_idx[:, k], :] * row_w[None, :, k, None] for k in range(row_idx.shape[1]))
    resized = sum(rows[:, :, col_idx[:, k]] * col_w[None, None, :, k] for k in range(col_idx.shape[1]))
    return np.clip(np.rint(resized), 0, 255).astype(np.uint8)


def stack_frames(frames84: np.ndarray, is_first: np.ndarray) -> np.ndarray:
    """(T, 84, 84) frames of consecutive episodes -> (T, 4, 84, 84) stacks, oldest first.

    A stack never reaches into the previous episode: before an episode's first frame it repeats zeros,
    as the vector env's stack holds zeros after a reset.
    """
    frames84 = np.asarray(frames84)
    is_first = np.asarray(is_first, bool)
    out = np.zeros((len(frames84), STACK, *frames84.shape[1:]), np.uint8)
    episode_start = np.maximum.accumulate(np.where(is_first, np.arange(len(frames84)), 0))
    for lag in range(STACK):
        source = np.arange(len(frames84)) - lag
        valid = source >= episode_start
        out[valid, STACK - 1 - lag] = frames84[source[valid]]
    return out
