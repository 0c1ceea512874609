import gymnasium as gym
import numpy as np
import pytest

from atarirep import AtariARIWrapper, annotations
from atarirep.envs import LabelledAtariEnv, _luminance, resolve_game
from atarirep.plumbing.errors import UserError


@pytest.mark.parametrize("game", annotations.annotated_games("latest"))
def test_every_annotated_game_constructs_and_labels(game):
    env = LabelledAtariEnv(game)
    obs, info = env.reset(seed=0)
    assert obs.shape == (1, 210, 160) and obs.dtype == np.uint8
    obs, _, _, _, info = env.step(1)
    ram = env.ale.getRAM()
    assert list(info["labels"]) == list(env.annotation.variables)
    for name, index in zip(env.annotation.variables, env.annotation.ram_indices, strict=True):
        assert info["labels"][name] == ram[index]  # a label is its RAM byte
    env.close()


def test_unannotated_game_is_refused_with_the_list():
    with pytest.raises(UserError, match="'Alien' has no RAM annotations .*pong"):
        resolve_game("Alien")


def test_step_is_four_frames_pooled_over_the_last_two_in_rgb():
    env = LabelledAtariEnv("MsPacman")
    env.reset(seed=3)
    for _ in range(20):
        env.step(2)
    state = env.ale.cloneState()
    frame_before = env.ale.getEpisodeFrameNumber()
    rgb = []
    for _ in range(4):  # the same step by hand
        env.ale.act(env.action_set[3])
        rgb.append(env.ale.getScreenRGB())
    env.ale.restoreState(state)
    obs, *_ = env.step(3)
    assert env.ale.getEpisodeFrameNumber() - frame_before == 4
    expected = _luminance(np.maximum(rgb[2], rgb[3]))
    assert np.array_equal(obs[0], expected)
    assert not np.array_equal(obs[0], _luminance(rgb[3]))  # the pooling matters in MsPacman (flicker)


def test_life_loss_ends_an_episode_but_not_the_game():
    env = LabelledAtariEnv("Breakout")
    env.reset(seed=0)
    lives = env.ale.lives()
    rng = np.random.default_rng(0)
    for _ in range(5000):
        _, _, terminated, truncated, info = env.step(int(rng.integers(1, 4)))
        if terminated:
            break
    assert terminated and not truncated
    assert info["lives"] == lives - 1 and not env.ale.game_over()


def test_reset_plays_noops_then_fire_where_the_game_needs_it():
    frames_mspacman, frames_breakout = set(), set()
    for seed in range(8):
        env = LabelledAtariEnv("MsPacman")  # no FIRE action: only the 1..30 no-ops
        env.reset(seed=seed)
        frames_mspacman.add(env.ale.getEpisodeFrameNumber())
        env = LabelledAtariEnv("Breakout")  # FIRE then action 2: two more agent steps of 4 frames
        env.reset(seed=seed)
        frames_breakout.add(env.ale.getEpisodeFrameNumber())
    assert all(1 <= f <= 30 for f in frames_mspacman) and len(frames_mspacman) > 1
    assert all(9 <= f <= 38 for f in frames_breakout) and len(frames_breakout) > 1


def test_same_seed_same_observations():
    def run(seed):
        env = LabelledAtariEnv("Pong")
        obs, _ = env.reset(seed=seed)
        out = [obs]
        for a in [2, 3, 4, 5] * 10:
            out.append(env.step(a)[0])
        return np.stack(out)

    assert np.array_equal(run(7), run(7))
    assert not np.array_equal(run(7), run(8))


@pytest.mark.parametrize("env_id", ["PongNoFrameskip-v4", "ALE/Pong-v5", "ALE/MsPacman-v5"])
def test_wrapper_labels_user_made_envs_on_reset_and_step(env_id):
    env = AtariARIWrapper(gym.make(env_id))
    _, info = env.reset(seed=0)
    ram = env.unwrapped.ale.getRAM()
    idx = dict(zip(env.annotation.variables, env.annotation.ram_indices, strict=True))
    assert info["labels"] == {name: int(ram[i]) for name, i in idx.items()}
    _, _, _, _, info = env.step(1)
    ram = env.unwrapped.ale.getRAM()
    assert info["labels"] == {name: int(ram[i]) for name, i in idx.items()}


def test_wrapper_refuses_a_non_atari_env():
    with pytest.raises(UserError, match="needs an ALE Atari env, got CartPoleEnv"):
        AtariARIWrapper(gym.make("CartPole-v1"))
