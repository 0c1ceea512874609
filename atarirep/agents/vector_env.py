"""Games stepped as a batch for agents, exactly as CleanRL's `ppo_atari.py` wraps them (docs/protocols.md 4).

Each env is one emulator (ale-py's `ALEInterface`) driven the way CleanRL's wrapper chain drives
`BreakoutNoFrameskip-v4` (gymnasium's `AtariEnv` under `NoopResetEnv`, `MaxAndSkipEnv`, `EpisodicLifeEnv`,
`FireResetEnv`, `ClipRewardEnv`, `ResizeObservation`, `GrayscaleObservation`, `FrameStackObservation`, in a
`SyncVectorEnv` with same-step autoreset), step for step and bit for bit (tests/agents/test_vector_env.py plays both):

- a real reset: `reset_game`, then 1..noop_max single-frame no-ops drawn from the env's generator;
- an agent step: the action for `frame_skip` frames, the observation the pixel-wise max of the last two
  RGB frames (kept from the previous step if the game ends before them, as the reference does);
- a life lost (protocols with the life-loss rule) ends the training episode; the next episode starts with one
  no-op step, then FIRE and action 2 (in games with FIRE), and a fresh stack, the game going on;
- every episode start (real or after a life) in games with FIRE: FIRE, then action 2;
- the frame: RGB resized to 84x84 by area (OpenCV), then gray (0.2125 R + 0.7154 G + 0.0721 B, truncated);
  a new episode's stack holds 4 copies of its first frame.

Evaluation (`training=False`) plays the same env but never reports a lost life as an end: a life lost still
starts the next life with no-op, FIRE, action 2 and a fresh stack, as CleanRL's evaluation (the same env)
does, so an agent is evaluated on the starts it trained on. Seeding follows gymnasium: `reset(seed)` seeds env
i with `seed + i`, whose `SeedSequence` gives the no-op generator's seed and the emulator's (sticky actions).

Why not ale-py's C++ `AtariVectorEnv` (faster per frame): it grays before resizing, zero-fills stacks and
cannot play the no-op/FIRE start of a new life, so an agent trained there learns another game's starts.
`agent_frames` turns stored 210x160 grayscale frames into the 84x84 view for probing and for policies that act
on stored episodes (their gray comes from the emulator's palette, not from the resized RGB: docs/agents.md).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import ale_py
import cv2
import gymnasium as gym
import numpy as np
from ale_py import roms
from gymnasium.utils import seeding

from atarirep import seeds
from atarirep.games import Protocol, get_protocol, resolve_ale_game
from atarirep.plumbing.errors import UserError

AGENT_FRAME = (84, 84)
STACK = 4
_GRAY_WEIGHTS = np.array([0.2125, 0.7154, 0.0721])  # gymnasium's GrayscaleObservation


@dataclass
class Step:
    """One batched step: what PPO stores, and the raw returns of the games that ended in it."""

    obs: np.ndarray  # (N, 4, 84, 84) uint8: the next observation (a new episode's first after an end)
    reward: np.ndarray  # (N,) float32, clipped to its sign when the protocol clips
    terminated: np.ndarray  # (N,) bool: game over, or a life lost where the protocol ends episodes there
    truncated: np.ndarray  # (N,) bool: the frame cap
    finished_returns: list[float]


class _Game:
    """One emulator under the reference's wrapper chain: `_skip` is MaxAndSkipEnv.step, `_life_step` and
    `_life_reset` EpisodicLifeEnv's step and reset, `_real_reset` NoopResetEnv.reset, `reset` FireResetEnv.reset."""

    def __init__(self, game: str, protocol: Protocol, full_action_space: bool):
        self.protocol = protocol
        self.ale = ale_py.ALEInterface()
        self.ale.setLoggerMode(ale_py.LoggerMode.Error)
        self.ale.setFloat("repeat_action_probability", protocol.sticky_action_prob)
        self.ale.setInt("max_num_frames_per_episode", protocol.max_frames_per_episode)
        rom = roms.get_rom_path(_rom_name(game))
        if rom is None:
            raise UserError(f"ale-py has no ROM for {game}")
        self._rom = rom
        self.seed(None)
        self.actions = self.ale.getLegalActionSet() if full_action_space else self.ale.getMinimalActionSet()
        self.uses_fire = _fire_start(game, self.actions, protocol)
        height, width = self.ale.getScreenDims()  # 210 x 160 in most games, 250 rows in AirRaid
        self._rgb = np.zeros((2, height, width, 3), np.uint8)  # MaxAndSkipEnv's buffer: it outlives resets
        self._lives = 0
        self.was_real_done = True  # the last step ended the game (game over or the frame cap)
        self.raw_return = 0.0  # RecordEpisodeStatistics: every frame's raw reward since the game's reset

    def seed(self, seed: int | None) -> None:
        """AtariEnv.seed_game + load_game: one seed gives the no-op generator's and the emulator's seeds;
        the next `reset` starts a new game."""
        np_seed, ale_seed = seeds.emulator(seed)
        self.rng, _ = seeding.np_random(int(np_seed))
        self.ale.setInt("random_seed", np.int32(ale_seed))
        self.ale.loadROM(self._rom)
        self.was_real_done = True

    def _frame(self, action) -> bool:
        """One emulator frame (AtariEnv.step without frame skip); whether the game ended."""
        self.raw_return += self.ale.act(action)
        return self.ale.game_over(with_truncation=False) or self.ale.game_truncated()

    def _skip(self, index: int) -> tuple[float, bool]:
        """One agent step: (its raw reward, the game ended); the step's frame is `pooled()`."""
        action, skip = self.actions[index], self.protocol.frame_skip
        before = self.raw_return
        for i in range(skip):
            done = self._frame(action)
            if i >= skip - 2:
                self.ale.getScreenRGB(self._rgb[i - (skip - 2)])
            if done:
                break
        return self.raw_return - before, done

    def pooled(self) -> np.ndarray:
        """The last agent step's frame: the max of its last two RGB frames (the buffer's, stale if it ended early)."""
        return np.maximum(self._rgb[0], self._rgb[1])

    def _life_step(self, index: int) -> tuple[float, bool, bool]:
        """(raw reward, terminated, truncated): terminated is a game over, or a life lost under the life-loss rule."""
        reward, done = self._skip(index)
        self.was_real_done = done
        lives = self.ale.lives()
        lost_life = self.protocol.terminal_on_life_loss and 0 < lives < self._lives
        self._lives = lives
        return reward, self.ale.game_over(with_truncation=False) or lost_life, self.ale.game_truncated()

    def _real_reset(self) -> np.ndarray:
        self.ale.reset_game()
        self.raw_return = 0.0
        if self.protocol.noop_max > 0:
            for _ in range(int(self.rng.integers(1, self.protocol.noop_max + 1))):
                if self._frame(self.actions[0]):
                    self.ale.reset_game()
                    self.raw_return = 0.0
        return self.ale.getScreenRGB()  # the reset's own observation: the last frame, not a max

    def _life_reset(self) -> np.ndarray:
        if self.was_real_done or not self.protocol.terminal_on_life_loss:
            obs = self._real_reset()
        else:  # a life lost: one no-op step, the game going on
            done = self._skip(0)[1]
            obs = self._real_reset() if done else self.pooled()
        self._lives = self.ale.lives()
        return obs

    def reset(self) -> np.ndarray:
        """Start an episode (a game, or the next life); its first frame, (H, W, 3) RGB."""
        obs = self._life_reset()
        if self.uses_fire:
            for index in (1, 2):
                _, terminated, truncated = self._life_step(index)
                obs = self.pooled()
                if terminated or truncated:
                    self._life_reset()
        return obs

    def step(self, index: int) -> tuple[float, bool, bool]:
        """(raw reward, terminated, truncated) of one agent step; the env then needs `reset` if either is true."""
        return self._life_step(index)


class AgentEnvs:
    """`num_envs` copies of `game` under `protocol` (module docstring); `training` reports a lost life as the end
    of an episode where the protocol says so (evaluation never does); `full_action_space`: all 18 ALE actions
    (games then share one action set), else the game's minimal set."""

    def __init__(
        self,
        game: str,
        num_envs: int,
        protocol: str | Protocol = "classic",
        *,
        training: bool = True,
        full_action_space: bool = False,
    ):
        self.protocol = protocol if isinstance(protocol, Protocol) else get_protocol(protocol)
        self.game = resolve_ale_game(game)  # agents play any game with a ROM, annotated or not
        self.num_envs = num_envs
        self.training = training
        self._games = [_Game(self.game, self.protocol, full_action_space) for _ in range(num_envs)]
        self.num_actions = len(self._games[0].actions)
        self._stacks = np.zeros((num_envs, STACK, *AGENT_FRAME), np.uint8)

    def reset(self, seed: int) -> np.ndarray:
        """Start a new game in every env; env i's no-ops and sticky actions follow `seed + i`."""
        for i, game in enumerate(self._games):
            game.seed(int(seed) + i)
            self._stacks[i] = _agent_frames(game.reset()[None])[0]
        return self._stacks.copy()

    def step(self, actions: np.ndarray) -> Step:
        n = self.num_envs
        reward, terminated, truncated = np.zeros(n, np.float64), np.zeros(n, bool), np.zeros(n, bool)
        frames, new_episode = [], np.zeros(n, bool)
        finished_returns = []
        for i, (game, action) in enumerate(zip(self._games, np.asarray(actions, np.int64).tolist(), strict=True)):
            reward[i], terminated[i], truncated[i] = game.step(action)
            new_episode[i] = terminated[i] or truncated[i]
            if game.was_real_done:
                finished_returns.append(game.raw_return)
            if not self.training:  # a lost life still starts the next one (below), but ends nothing
                terminated[i] = game.ale.game_over(with_truncation=False)
            frames.append(game.reset() if new_episode[i] else game.pooled())  # same-step autoreset
        gray = _agent_frames(np.stack(frames))
        going_on = ~new_episode
        self._stacks[going_on] = np.concatenate([self._stacks[going_on, 1:], gray[going_on, None]], axis=1)
        self._stacks[new_episode] = gray[new_episode, None]  # a new episode's stack: 4 copies of its first frame
        clipped = np.sign(reward) if self.protocol.clip_rewards else reward
        return Step(self._stacks.copy(), clipped.astype(np.float32), terminated, truncated, finished_returns)

    @property
    def running_returns(self) -> np.ndarray:
        """(N,) raw (unclipped) return of each env's game so far (a copy): what a cut game scored."""
        return np.array([game.raw_return for game in self._games], np.float64)

    def close(self) -> None:
        self._games.clear()


def _agent_frames(rgb: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) RGB -> (N, 84, 84) gray: area resize, then gymnasium's weights (truncated)."""
    resized = np.stack([cv2.resize(frame, AGENT_FRAME[::-1], interpolation=cv2.INTER_AREA) for frame in rgb])
    # The weighted sum in GrayscaleObservation's order (R, then G, then B), so every pixel is bit-equal to it.
    gray = resized[..., 0] * _GRAY_WEIGHTS[0] + resized[..., 1] * _GRAY_WEIGHTS[1] + resized[..., 2] * _GRAY_WEIGHTS[2]
    return gray.astype(np.uint8)


def _fire_start(game: str, actions: list, protocol: Protocol) -> bool:
    """Whether an episode starts with FIRE, then action 2: where the protocol says so and the game has FIRE (CleanRL
    applies FireResetEnv where "FIRE" is among the game's actions; games without it start without). The
    reference asserts that FIRE is action 1 and that there are 3 actions or more; UserError where it is not."""
    if not protocol.fire_on_reset or ale_py.Action.FIRE not in actions:
        return False
    if actions[1] != ale_py.Action.FIRE or len(actions) < 3:
        raise UserError(
            f"{game}'s actions ({', '.join(a.name for a in actions)}) do not have FIRE as action 1, so "
            f"protocol {protocol.name!r} cannot start its episodes with FIRE and action 2 as the "
            "reference does; play it under protocol 'modern' (no FIRE start) or choose another game"
        )
    return True


def check_game(game: str, protocol: str | Protocol, full_action_space: bool = False) -> None:
    """UserError (one line) unless an agent can play `game` under `protocol`: a ROM, and a FIRE start it can play."""
    protocol = protocol if isinstance(protocol, Protocol) else get_protocol(protocol)
    _Game(resolve_ale_game(game), protocol, full_action_space)


def _rom_name(game: str) -> str:
    """ALE name (MsPacman, TicTacToe3D) -> ROM id (ms_pacman, tic_tac_toe_3d), as gymnasium's registry has it."""
    return gym.spec(f"ALE/{game}-v5").kwargs["game"]


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
    indices = np.argsort(dense == 0, axis=1, kind="stable")[:, :width]  # each row's covered pixels first
    return indices, (np.take_along_axis(dense, indices, 1) / scale).astype(np.float32)


def agent_frames(frames: np.ndarray) -> np.ndarray:
    """(T, 1, 210, 160) or (T, 210, 160) uint8 grayscale -> (T, 84, 84) uint8 by area weights (OpenCV's area
    resize within one gray level); the env resizes RGB, then grays it."""
    frames = frames.reshape(-1, *frames.shape[-2:])
    (row_idx, row_w), (col_idx, col_w) = (
        _area_weights(frames.shape[1], AGENT_FRAME[0]),
        _area_weights(frames.shape[2], AGENT_FRAME[1]),
    )
    # A weighted sum of the few input rows (then columns) each output pixel covers.
    rows = sum(frames[:, row_idx[:, k], :] * row_w[None, :, k, None] for k in range(row_idx.shape[1]))
    resized = sum(rows[:, :, col_idx[:, k]] * col_w[None, None, :, k] for k in range(col_idx.shape[1]))
    return np.clip(np.rint(resized), 0, 255).astype(np.uint8)


def stack_indices(is_first: np.ndarray) -> np.ndarray:
    """(T, 4) row indices of each row's stack, oldest first, for rows of consecutive episodes (`is_first` (T,) bool
    marks each episode's first row): a stack never reaches into the previous episode; before an episode's first
    row it repeats that row, as the env's stack holds 4 copies of a new episode's first frame."""
    is_first = np.asarray(is_first, bool)
    rows = np.arange(len(is_first))
    episode_start = np.maximum.accumulate(np.where(is_first, rows, 0))
    return np.maximum(rows[:, None] - np.arange(STACK - 1, -1, -1)[None], episode_start[:, None])
