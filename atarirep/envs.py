"""Atari environments labelled with their RAM state variables, under a named protocol.

`LabelledAtariEnv` runs one game under a protocol (the AtariARI benchmark's by default) straight on
the emulator, and `AtariARIWrapper` adds the labels to an ALE env a user made with `gym.make`.
Collection loops, storage and policies live elsewhere (`atarirep.collection`, `atarirep.episodes`).
"""

from __future__ import annotations

import ale_py
import gymnasium as gym
import numpy as np

from atarirep import annotations as ram_annotations
from atarirep.episodes import FRAME_SHAPE
from atarirep.games import ALE_GAMES, Protocol, game_key, get_protocol, resolve_ale_game
from atarirep.plumbing.errors import UserError

gym.register_envs(ale_py)


def resolve_game(name: str, annotation_set: str = "latest") -> str:
    """The ALE name (`MsPacman`) of a game given in any spelling, if it is annotated.

    Accepts `Pong`, `pong`, `PongNoFrameskip-v4`, `ALE/Pong-v5`; raises UserError listing the
    annotated games for an unknown game or one without annotations.
    """
    key = ram_annotations.for_game(name, annotation_set).game  # refuses unannotated games
    if key not in map(game_key, ALE_GAMES):
        raise UserError(
            f"game {name!r} is annotated but this ale-py has no ROM for it; install an ale-py that ships it"
        )
    return resolve_ale_game(key)


def _luminance(rgb: np.ndarray) -> np.ndarray:
    """RGB (..., 3) uint8 -> luminance uint8, bit-exact with OpenCV's COLOR_RGB2GRAY (and ALE's grayscale)."""
    rgb = rgb.astype(np.uint32)
    return ((rgb[..., 0] * 4899 + rgb[..., 1] * 9617 + rgb[..., 2] * 1868 + 8192) >> 14).astype(np.uint8)


class LabelledAtariEnv(gym.Env):
    """One Atari game under a protocol, with `info["labels"]` (name -> RAM byte) on reset and every step.

    Observations are (1, 210, 160) uint8 grayscale: the pixel-wise max of the last two RGB frames of
    the step, then luminance (as the reference's MaxAndSkip + WarpFrame do). The emulator is driven
    directly rather than through stacked wrappers, so only the two frames that are kept get copied.
    """

    action_space: gym.spaces.Discrete  # the game's minimal action set
    metadata = {"render_modes": []}

    def __init__(self, game: str, protocol: str | Protocol = "atariari", annotation_set: str = "latest"):
        self.protocol = protocol if isinstance(protocol, Protocol) else get_protocol(protocol)
        self.game = resolve_game(game, annotation_set)
        self.annotation = ram_annotations.for_game(game, annotation_set)
        self._ram_indices = np.asarray(self.annotation.ram_indices, dtype=np.intp)
        self._ale_env = gym.make(
            f"ALE/{self.game}-v5",
            frameskip=1,
            repeat_action_probability=self.protocol.sticky_action_prob,
            full_action_space=False,
            max_num_frames_per_episode=self.protocol.max_frames_per_episode,
        )
        base = self._ale_env.unwrapped
        assert isinstance(base, ale_py.AtariEnv)  # what gym.make("ALE/...") makes
        self.ale = base.ale
        self.action_set = self.ale.getMinimalActionSet()
        meanings = base.get_action_meanings()
        self._uses_fire = self.protocol.fire_on_reset and len(meanings) >= 3 and meanings[1] == "FIRE"
        self.action_space = gym.spaces.Discrete(len(self.action_set))
        self.observation_space = gym.spaces.Box(0, 255, FRAME_SHAPE, np.uint8)
        self._rgb = np.zeros((2, 210, 160, 3), np.uint8)
        self._is_real_done = True
        self._lives = 0

    # -- the labels -------------------------------------------------------------------------------
    def ram_labels(self) -> np.ndarray:
        """The annotated RAM bytes now, (V,) uint8 in `annotation.variables` order."""
        return self.ale.getRAM()[self._ram_indices]

    def labels(self) -> dict[str, int]:
        return dict(zip(self.annotation.variables, self.ram_labels().tolist(), strict=True))

    # -- emulator steps ---------------------------------------------------------------------------
    def _observation(self) -> np.ndarray:
        last, before = self._rgb[1], self._rgb[0]
        gray = np.empty((210, 160), np.uint8)
        self.ale.getScreenGrayscale(gray)  # equals _luminance(last), at a fraction of the cost
        # Max over RGB channels, then luminance, redone only on the rows where the two frames differ
        # (sprites flicker on a few rows; a row test is a fast contiguous reduction).
        rows = np.flatnonzero((last != before).reshape(210, -1).any(axis=1))
        if len(rows):
            gray[rows] = _luminance(np.maximum(last[rows], before[rows]))
        return gray[None]

    def _agent_step(self, action_index: int) -> tuple[float, bool]:
        """Play one agent step (frame_skip frames); returns (raw reward, game over)."""
        action = self.action_set[action_index]
        skip = self.protocol.frame_skip
        reward = 0.0
        for i in range(skip):
            reward += self.ale.act(action)
            if i >= skip - 2:
                self.ale.getScreenRGB(self._rgb[i - (skip - 2)])
            if self.ale.game_over() or self.ale.game_truncated():
                # Departs from AtariARI: the reference keeps stale frames when a game ends mid-skip;
                # here both pooled frames are the last one emulated.
                if i < skip - 1:
                    self.ale.getScreenRGB(self._rgb[1])
                    self._rgb[0] = self._rgb[1]
                return reward, True
        return reward, False

    def _real_reset(self) -> None:
        self.ale.reset_game()
        if self.protocol.noop_max > 0:
            noop = self.action_set[0]
            for _ in range(int(self.np_random.integers(1, self.protocol.noop_max + 1))):
                self.ale.act(noop)
                if self.ale.game_over():
                    self.ale.reset_game()
        self.ale.getScreenRGB(self._rgb[1])
        self._rgb[0] = self._rgb[1]

    def _life_reset(self) -> None:
        """After a real game over: a real reset; after a life loss only: one no-op agent step."""
        if self._is_real_done:
            self._real_reset()
        else:
            _, game_over = self._agent_step(0)
            if game_over:
                self._real_reset()
        self._is_real_done = False
        self._lives = self.ale.lives()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None and self.protocol.sticky_action_prob > 0:
            # The emulator's own RNG drives sticky actions only; seeding it reloads the ROM (~0.1 s),
            # so it is done only when it matters. Without sticky actions the emulator is deterministic.
            self._ale_env.reset(seed=int(seed))
            self._is_real_done = True
        if seed is not None:
            self._is_real_done = True
        self._life_reset()
        if self._uses_fire:  # FireResetEnv: FIRE, then action 2, resetting again if either ends it
            for action in (1, 2):
                _, game_over = self._agent_step(action)
                if game_over or self._lost_life():
                    self._is_real_done = game_over
                    self._life_reset()
        return self._observation(), {"labels": self.labels(), "lives": self.ale.lives()}

    def _lost_life(self) -> bool:
        lives = self.ale.lives()
        return 0 < lives < self._lives

    def step(self, action: int):
        raw_reward, game_over = self._agent_step(int(action))
        life_lost = self._lost_life()
        self._lives = self.ale.lives()
        truncated = self.ale.game_truncated() and not self.ale.game_over()
        self._is_real_done = game_over
        terminated = (game_over and not truncated) or (life_lost and self.protocol.terminal_on_life_loss)
        reward = float(np.sign(raw_reward)) if self.protocol.clip_rewards else raw_reward
        info = {"labels": self.labels(), "lives": self._lives, "raw_reward": raw_reward}
        return self._observation(), reward, terminated, truncated, info

    def close(self):
        self._ale_env.close()


class AtariARIWrapper(gym.Wrapper):
    """Adds `info["labels"]` (variable name -> RAM byte) on reset and every step of an ALE env.

    Works on any env made with `gym.make("PongNoFrameskip-v4")`, `gym.make("ALE/Pong-v5")` and
    their wrapped forms, as the original AtariARI wrapper did (which labelled steps only).
    """

    def __init__(self, env: gym.Env, annotation_set: str = "latest"):
        super().__init__(env)
        base = env.unwrapped
        if not isinstance(base, ale_py.AtariEnv):
            raise UserError(
                f"AtariARIWrapper needs an ALE Atari env, got {type(base).__name__}; "
                "make one with gym.make('ALE/Pong-v5') after `import ale_py`"
            )
        name = getattr(base, "_game", None) or (env.spec.id if env.spec else "")
        self.annotation = ram_annotations.for_game(name, annotation_set)
        self._ram_indices = np.asarray(self.annotation.ram_indices, dtype=np.intp)
        self._ale = base.ale

    def labels(self) -> dict[str, int]:
        ram = self._ale.getRAM()
        return dict(zip(self.annotation.variables, ram[self._ram_indices].tolist(), strict=True))

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        info["labels"] = self.labels()
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        info["labels"] = self.labels()
        return obs, reward, terminated, truncated, info
