"""The agents' env against the reference: CleanRL's wrapper chain (stable-baselines3's atari_wrappers, which
CleanRL's are adapted from) over gymnasium's BreakoutNoFrameskip-v4 in a same-step SyncVectorEnv, played with
the same seed and actions: observations, rewards, ends of episodes and returns of whole games agree exactly."""

import importlib.util
from pathlib import Path

import ale_py
import gymnasium as gym
import numpy as np
import pytest

from atarirep.agents import vector_env
from atarirep.agents.vector_env import AgentEnvs
from atarirep.envs import LabelledAtariEnv
from atarirep.games import Protocol


def _bench_agent():
    """bench/bench_agent.py, loaded by path (bench/ is scripts, not a package): CleanRL's make_env is written once
    there, and the bench's baseline runs it too."""
    path = Path(__file__).resolve().parents[2] / "bench" / "bench_agent.py"
    spec = importlib.util.spec_from_file_location("bench_agent", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_env = _bench_agent().make_env
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


def test_agent_frames_of_stored_frames_are_close_to_the_envs_own_view():
    """The same emulator state, seen through the vector env (RGB resized, then gray) and through our resize of the
    stored frame (the emulator's luminance, then resized): a few gray levels apart (docs/agents.md)."""
    still = Protocol("still", 4, 0, False, False, 0.0, 108_000, False)
    envs, labelled = vector_env.AgentEnvs("Breakout", 1, still), LabelledAtariEnv("Breakout", still)
    stack, (frame, _) = envs.reset(seed=0), labelled.reset(seed=0)
    np.testing.assert_array_equal(stack[0, :3], stack[0, [3, 3, 3]])  # a new episode's stack: copies of its frame
    for _ in range(20):
        difference = np.abs(vector_env.agent_frames(frame)[0].astype(int) - stack[0, -1])
        assert difference.mean() < 2 and difference.max() <= 12, (difference.mean(), difference.max())
        stack = envs.step(np.array([3])).obs
        frame = labelled.step(3)[0]
    envs.close()


def test_stacks_of_stored_frames_never_reach_into_the_previous_episode():
    frames = np.arange(1, 7, dtype=np.uint8)[:, None, None] * np.ones((6, 84, 84), np.uint8)
    stacks = frames[vector_env.stack_indices(np.array([1, 0, 0, 1, 0, 0], bool))]
    assert [list(s[:, 0, 0]) for s in stacks] == [
        [1, 1, 1, 1],
        [1, 1, 1, 2],
        [1, 1, 2, 3],
        [4, 4, 4, 4],
        [4, 4, 4, 5],
        [4, 4, 5, 6],
    ]


def test_training_envs_end_episodes_at_a_life_lost_and_report_whole_games():
    envs = vector_env.AgentEnvs("Breakout", 2, "classic", training=True)
    envs.reset(seed=1)
    terminations, finished, rng = 0, [], np.random.default_rng(0)
    for _ in range(1500):
        step = envs.step(rng.integers(0, envs.num_actions, 2))
        terminations += int(step.terminated.sum())
        finished += step.finished_returns
    envs.close()
    assert finished, "no Breakout game of random play ended in 1,500 steps"
    assert terminations >= 5 * len(finished)  # five lives: five terminations per game
