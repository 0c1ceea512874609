"""The agents' env against the reference: CleanRL's wrapper chain (stable-baselines3's atari_wrappers, which
CleanRL's are adapted from) over gymnasium's BreakoutNoFrameskip-v4 in a same-step SyncVectorEnv, played with
the same seed and actions: observations, rewards, ends of episodes and returns of whole games agree exactly."""

import sys
from pathlib import Path

import ale_py
import gymnasium as gym
import numpy as np
import pytest

from atarirep.agents.vector_env import AgentEnvs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from bench_agent import make_env  # noqa: E402  CleanRL's make_env, written once (the bench's baseline runs it too)

gym.register_envs(ale_py)


def _reference(env_id: str, num_envs: int):
    return gym.vector.SyncVectorEnv(
        [make_env(env_id) for _ in range(num_envs)], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )


@pytest.mark.parametrize("game, steps", [("Breakout", 700), ("Pong", 250), ("AirRaid", 150)])  # AirRaid: 250 rows
def test_training_env_equals_cleanrl_wrappers(game, steps):
    num_envs, seed = 3, 7
    reference, ours = _reference(f"{game}NoFrameskip-v4", num_envs), AgentEnvs(game, num_envs, "classic")
    ref_obs, _ = reference.reset(seed=seed)
    np.testing.assert_array_equal(ours.reset(seed), ref_obs)
    # Mostly FIRE and moves, so the paddle hits the ball now and then (rewards) and lives are lost (ends).
    actions = np.random.default_rng(0).integers(ours.num_actions, size=(steps, num_envs))
    lives_lost = games_over = 0
    ref_returns, our_returns = [], []
    for t, action in enumerate(actions):
        ref_obs, ref_reward, ref_term, ref_trunc, info = reference.step(action)
        step = ours.step(action)
        np.testing.assert_array_equal(step.obs, ref_obs, err_msg=f"step {t}")
        np.testing.assert_array_equal(step.reward, ref_reward, err_msg=f"step {t}")
        np.testing.assert_array_equal(step.terminated, ref_term, err_msg=f"step {t}")
        np.testing.assert_array_equal(step.truncated, ref_trunc, err_msg=f"step {t}")
        if "final_info" in info and "episode" in info["final_info"]:
            over = np.flatnonzero(info["final_info"]["_episode"])
            ref_returns += info["final_info"]["episode"]["r"][over].tolist()
            games_over += len(over)
        lives_lost += int(ref_term.sum())
        our_returns += step.finished_returns
    assert our_returns == ref_returns
    if game == "Breakout":  # the comparison went through lost lives and whole games
        assert lives_lost - games_over >= 10 and games_over >= 2, (lives_lost, games_over)
        assert sum(ref_returns) > 0
    reference.close()


def test_evaluation_plays_the_training_env_but_only_games_end():
    training, evaluating = AgentEnvs("Breakout", 2, "classic"), AgentEnvs("Breakout", 2, "classic", training=False)
    np.testing.assert_array_equal(training.reset(3), evaluating.reset(3))
    actions = np.random.default_rng(1).integers(4, size=(400, 2))
    lives_lost = 0
    for action in actions:
        a, b = training.step(action), evaluating.step(action)
        np.testing.assert_array_equal(a.obs, b.obs)  # a lost life starts the next one the same way
        np.testing.assert_array_equal(a.reward, b.reward)
        assert a.finished_returns == b.finished_returns
        # Evaluating, an end is a game over (its return reported); training, a lost life ends an episode too.
        assert b.terminated.sum() == len(b.finished_returns) and (a.terminated >= b.terminated).all()
        lives_lost += int(a.terminated.sum() - b.terminated.sum())
    assert lives_lost >= 5
