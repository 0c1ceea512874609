"""Collection policies (atarirep.policies): a random agent's or a checkpoint's actions, PPO's and IMPALA's."""

import json

import numpy as np
import pytest
import torch

from atarirep.agents import checkpoints
from atarirep.agents.network import ActorCritic
from atarirep.plumbing.errors import UserError


def test_collect_mode_agent_records_labelled_episodes_with_a_checkpoint(tmp_path):
    from atarirep import collection, episodes
    from atarirep.policies import AgentPolicy

    path = tmp_path / "model_7.gz"
    checkpoints.save(path, ActorCritic(4), algo="PPO", protocol="classic", game="Breakout", seed=3, step=7, frames=28)
    threads = torch.get_num_threads()
    store = collection.collect(
        "Breakout",
        tmp_path / "agent",
        steps=600,
        num_envs=2,
        min_episode_length=8,
        splits_fractions={"train": 0.7, "val": 0.1, "test": 0.2},
        seed=0,
        collect_mode="agent",
        agent_checkpoint=str(path),
        agent_random_prob=0.2,
    )
    meta = json.loads((tmp_path / "agent/meta.json").read_text())
    assert meta["collect_mode"] == "agent"
    assert meta["agent"] == {
        "algo": "PPO",
        "protocol": "classic",
        "game": "Breakout",
        "seed": 3,
        "step": 7,
        "frames": 28,
        "random_prob": 0.2,
    }
    assert len(episodes.load(tmp_path / "agent").split("train")) > 0 and store.game == "Breakout"
    assert torch.get_num_threads() == threads  # collecting in this process leaves its threads alone
    rng = np.random.default_rng(0)
    uniform = AgentPolicy(str(path), 4, rng, random_prob=1.0)
    counts = np.bincount([uniform.act(np.zeros((1, 210, 160), np.uint8), i == 0) for i in range(400)], minlength=4)
    assert counts.min() > 60  # random_prob 1: every action uniform
    with pytest.raises(UserError, match="acts with 4 actions but this game has 6"):
        AgentPolicy(str(path), 6, rng)


def test_an_impala_checkpoint_collects_by_sampling_and_reads_its_last_action_and_reward(tmp_path, monkeypatch):
    from atarirep import policies
    from atarirep.agents import acting, checkpoints
    from atarirep.agents.network import IMPALANet

    torch.manual_seed(0)
    net = IMPALANet(4, last_action_reward=True, acts_greedily=True)  # evaluated greedily, as torchbeast tests
    path = tmp_path / "model_8.gz"
    checkpoints.save(path, net, algo="IMPALA", protocol="classic", games=["Breakout"], seed=0, step=8, frames=32)
    seen = []
    play = acting.play_outputs

    def recording(net_, obs, last_action, last_reward):
        seen.append((int(last_action[0]), float(last_reward[0])))
        return play(net_, obs, last_action, last_reward)

    monkeypatch.setattr(acting, "play_outputs", recording)
    policy = policies.AgentPolicy(str(path), 4, np.random.default_rng(0), random_prob=0.0)
    frame = np.zeros((1, 210, 160), np.uint8)
    actions = [policy.act(frame, i == 0, reward=float(i % 2)) for i in range(200)]
    assert seen[0] == (0, 0.0)  # an episode's start: zeros
    assert [a for a, _ in seen[1:]] == actions[:-1] and seen[3][1] == 1.0  # then its own action, the reward given
    assert len(set(actions)) > 1  # a sample of the policy, not its argmax
