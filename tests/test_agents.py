"""Agents: the vector env's protocol rules, PPO (its core learns CartPole; a short Atari run checkpoints and
resumes exactly), the published checkpoint format, and the geometric checkpoint sampler."""

import gzip
import io
import json
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

from atarirep.agents import checkpoints, ppo, vector_env
from atarirep.agents.network import ActorCritic
from atarirep.envs import LabelledAtariEnv, Protocol
from atarirep.errors import UserError

REPO = Path(__file__).resolve().parents[1]
# docs/protocols.md 5: the 51 of 200 checkpoints the published collections keep.
PUBLISHED_51 = [
    1,
    15,
    28,
    40,
    51,
    62,
    71,
    80,
    89,
    97,
    104,
    111,
    117,
    123,
    128,
    133,
    138,
    142,
    146,
    150,
    154,
    157,
    160,
    163,
    166,
    168,
    170,
    173,
    175,
    176,
    178,
    180,
    181,
    *range(183, 201),
]
TINY = ppo.PPOConfig(total_steps=1536, num_envs=4, num_steps=128, checkpoint_every=512, reset_every=1024)


def test_geometric_rule_keeps_the_published_51_of_200():
    assert len(PUBLISHED_51) == 51
    assert checkpoints.geometric_indices(200, 51) == PUBLISHED_51
    assert sum(i <= 100 for i in PUBLISHED_51) == 10  # "10 of 51 in the first half"


def test_geometric_rule_keeps_the_last_and_refuses_keeping_more_than_there_are():
    assert checkpoints.geometric_indices(8, 1) == [8]
    assert checkpoints.geometric_indices(8, 8) == list(range(1, 9))
    kept = checkpoints.geometric_indices(20, 8)
    assert len(kept) == 8 and kept[-1] == 20 and kept == sorted(kept)
    assert np.diff(kept)[-1] <= np.diff(kept)[0]  # denser toward the end
    with pytest.raises(UserError, match="keep 9 checkpoints of 8"):
        checkpoints.geometric_indices(8, 9)


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


def test_a_published_style_checkpoint_loads_and_plays(tmp_path):
    """A file written with nothing but gzip + torch.save({"estimator_state": ...}), as the collections do."""
    network = ActorCritic(num_actions=4)
    path = tmp_path / "DQN_modern/Breakout/0/model_50000000.gz"
    path.parent.mkdir(parents=True)
    buffer = io.BytesIO()
    torch.save({"estimator_state": network.state_dict()}, buffer)
    path.write_bytes(gzip.compress(buffer.getvalue()))
    loaded, meta = checkpoints.load_network(path)
    assert meta["step"] == 50_000_000
    for name, tensor in network.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0)
    envs = vector_env.AgentEnvs("Breakout", 2, "modern", training=False)
    obs = envs.reset(seed=0)
    for _ in range(10):
        with torch.no_grad():
            logits, value = loaded(torch.from_numpy(obs))
        obs = envs.step(logits.argmax(1).numpy()).obs
    assert logits.shape == (2, 4) and value.shape == (2,)
    envs.close()


def test_damaged_and_foreign_checkpoints_are_refused_with_one_line(tmp_path):
    good = tmp_path / "model_1.gz"
    checkpoints.save(good, ActorCritic(4), algo="PPO", protocol="classic", game="Breakout", seed=0, step=1, frames=4)
    truncated = tmp_path / "model_2.gz"
    truncated.write_bytes(good.read_bytes()[:1000])
    foreign = tmp_path / "model_3.gz"
    buffer = io.BytesIO()
    torch.save({"estimator_state": nn.Linear(3, 2).state_dict()}, buffer)
    foreign.write_bytes(gzip.compress(buffer.getvalue()))
    not_ours = tmp_path / "model_4.gz"
    not_ours.write_bytes(gzip.compress(b"hello"))
    for path, message in (
        (truncated, "truncated or corrupt"),
        (foreign, "weights of another network"),
        (not_ours, "truncated or corrupt"),
        (tmp_path / "model_5.gz", "missing"),
    ):
        with pytest.raises(UserError, match=message) as err:
            checkpoints.load_network(path)
        assert "\n" not in str(err.value)


class _MLPActorCritic(nn.Module):
    def __init__(self, num_actions: int):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh())
        self.actor, self.critic = nn.Linear(64, num_actions), nn.Linear(64, 1)

    def forward(self, x):
        hidden = self.body(x)
        return self.actor(hidden), self.critic(hidden).squeeze(-1)


def test_ppos_update_learns_cartpole():
    """The algorithm core (compute_gae + update, as train uses them, lr annealed as train does) solves
    CartPole-v1 on CPU in seconds (seeds 0 to 3 solve it within 25 to 67 of the 100 iterations)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    config = ppo.PPOConfig(
        num_envs=4, num_steps=256, lr=1e-3, clip_coef=0.2, ent_coef=0.0, update_epochs=10, num_minibatches=8
    )
    iterations = 100
    envs = gym.vector.SyncVectorEnv(
        [lambda: gym.make("CartPole-v1") for _ in range(config.num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    network = _MLPActorCritic(2)
    optimizer = torch.optim.Adam(network.parameters(), lr=config.lr, eps=config.adam_eps)
    n, e = config.num_steps, config.num_envs
    obs_buf = torch.zeros((n, e, 4))
    actions, logprobs, rewards, dones, values = (torch.zeros((n, e)) for _ in range(5))
    next_obs, _ = envs.reset(seed=0)
    next_obs, next_done = torch.tensor(next_obs, dtype=torch.float32), torch.zeros(e)
    finished, returns, running = [], [], np.zeros(e)
    for iteration in range(iterations):  # at most 102,400 steps
        optimizer.param_groups[0]["lr"] = (1 - iteration / iterations) * config.lr
        for step in range(n):
            obs_buf[step], dones[step] = next_obs, next_done
            with torch.no_grad():
                logits, value = network(next_obs)
            log_probs = torch.log_softmax(logits, -1)
            action = ppo._sample(log_probs, rng)
            actions[step], values[step] = action.float(), value
            logprobs[step] = log_probs.gather(1, action[:, None]).squeeze(1)
            obs, reward, terminated, truncated, _ = envs.step(action.numpy())
            running += reward
            for i in np.flatnonzero(terminated | truncated):
                returns.append(running[i])
                running[i] = 0
            rewards[step] = torch.tensor(reward, dtype=torch.float32)
            next_obs = torch.tensor(obs, dtype=torch.float32)
            next_done = torch.tensor(terminated | truncated, dtype=torch.float32)
        with torch.no_grad():
            next_value = network(next_obs)[1]
        advantages = ppo.compute_gae(rewards, values, dones, next_value, next_done, config.gamma, config.gae_lambda)
        ppo.update(
            network,
            optimizer,
            config,
            rng,
            obs=obs_buf.reshape(-1, 4),
            actions=actions.reshape(-1).long(),
            logprobs=logprobs.reshape(-1),
            advantages=advantages.reshape(-1),
            values=values.reshape(-1),
        )
        finished.append(np.mean(returns[-10:]) if returns else 0.0)
        if finished[-1] >= 475:  # CartPole-v1 counts as solved at 475 (mean of the last 10 games here)
            break
    assert finished[0] < 50 and finished[-1] >= 475, finished


def test_compute_gae_matches_a_hand_computation():
    rewards, values = torch.tensor([[1.0], [0.0], [1.0]]), torch.tensor([[0.5], [0.2], [0.1]])
    dones, next_value, next_done = torch.tensor([[0.0], [0.0], [1.0]]), torch.tensor([0.3]), torch.tensor([0.0])
    gamma, lam = 0.9, 0.5
    # t=2: delta = 1 + 0.9*0.3 - 0.1 = 1.17; t=1: obs[2] starts an episode, so delta = 0 - 0.2, no carry;
    # t=0: delta = 1 + 0.9*0.2 - 0.5 = 0.68, A = 0.68 + 0.45 * (-0.2) = 0.59
    advantages = ppo.compute_gae(rewards, values, dones, next_value, next_done, gamma, lam)
    torch.testing.assert_close(advantages, torch.tensor([[0.59], [-0.2], [1.17]]))


def test_a_short_atari_run_checkpoints_in_the_published_layout_and_logs_a_curve(tmp_path):
    out = checkpoints.run_dir(tmp_path / "checkpoints", "PPO", "classic", "Breakout", 0)
    ppo.train("Breakout", 0, out, tmp_path / "log", TINY, device="cpu", progress=False)
    found = checkpoints.list_run(out)
    assert [step for step, _ in found] == [512, 1024, 1536]
    assert out.parts[-3:] == ("PPO_classic", "Breakout", "0") and found[0][1].name == "model_512.gz"
    network, meta = checkpoints.load_network(found[-1][1])
    assert (meta["game"], meta["seed"], meta["step"], meta["frames"], meta["protocol"]) == (
        "Breakout",
        0,
        1536,
        6144,
        "classic",
    )
    assert network.encoder(torch.zeros(1, 4, 84, 84)).shape == (1, 512)  # the Nature CNN up to its 512-d layer
    policy_loss = (tmp_path / "log/plots/metrics/losses/policy.tsv").read_text().splitlines()
    assert policy_loss[0] == "step\tpolicy" and [r.split("\t")[0] for r in policy_loss[1:]] == ["512", "1024", "1536"]
    assert not any(p.name.startswith(".") for p in out.parent.iterdir())  # no work folder left behind


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """(checkpoint folder, log folder) of the TINY run trained without interruption."""
    root = tmp_path_factory.mktemp("straight")
    ppo.train("Breakout", 0, root / "straight", root / "straight_log", TINY, device="cpu", progress=False)
    return root / "straight", root / "straight_log"


@pytest.mark.parametrize("killed_after", [1, 2])  # 1: the games are replayed; 2: new games had begun
def test_a_killed_run_resumes_from_its_last_checkpoint_to_the_same_weights(tmp_path, killed_after, straight_run):
    assert TINY.reset_iterations() == [2] and TINY.replay_iterations() == 2
    killed = tmp_path / "killed"
    code = (
        f"from atarirep.agents import ppo, checkpoints\n"
        f"real = ppo._write_resume\n"
        f"def write_then_die(*args, **kwargs):\n"
        f"    real(*args, **kwargs)\n"
        f"    if args[5] == {killed_after}: import os; os._exit(9)   # SIGKILL-like: no cleanup\n"
        f"ppo._write_resume = write_then_die\n"
        f"ppo.train('Breakout', 0, {str(killed)!r}, {str(tmp_path / 'killed_log')!r}, "
        f"ppo.{TINY!r}, device='cpu')\n"
    )
    died = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert died.returncode == 9, died.stderr
    assert not killed.exists() and (tmp_path / ".killed.partial/resume.pt").exists()
    ppo.train("Breakout", 0, killed, tmp_path / "killed_log", TINY, device="cpu", progress=True)
    straight, straight_log = straight_run
    for (step_a, a), (step_b, b) in zip(checkpoints.list_run(killed), checkpoints.list_run(straight), strict=True):
        assert step_a == step_b
        state_a, state_b = checkpoints.read(a)["estimator_state"], checkpoints.read(b)["estimator_state"]
        for name in state_b:
            torch.testing.assert_close(state_a[name], state_b[name], rtol=0, atol=0)
        assert a.read_bytes() == b.read_bytes()  # the same file, byte for byte (no write time in it): one DVC hash
    for name in ("losses/policy", "charts/lr"):
        logged = (tmp_path / "killed_log/plots/metrics" / f"{name}.tsv").read_text()
        assert logged == (straight_log / "plots/metrics" / f"{name}.tsv").read_text()


def test_bad_agent_params_are_refused_with_one_line():
    with pytest.raises(UserError, match="unknown keys learning_rate"):
        ppo.config_from({"learning_rate": 0.1})
    with pytest.raises(UserError, match="total_steps=1.5 must be of type int"):
        ppo.config_from({"total_steps": 1.5})
    with pytest.raises(UserError, match="protocol 'sticky' is unknown"):
        ppo.config_from({"protocol": "sticky"})
    assert ppo.PPOConfig().checkpoint_iterations()[-1] == ppo.PPOConfig().iterations
    assert len(ppo.PPOConfig().checkpoint_iterations()) == 200  # the paper profile's 200 checkpoints
    resets = ppo.PPOConfig().reset_iterations()  # new games at the checkpoint past each 1M steps
    assert len(resets) == 9 and set(resets) <= set(ppo.PPOConfig().checkpoint_iterations())
    assert ppo.PPOConfig().replay_iterations() <= 1_000_000 // 1024 + 50


def test_sample_checkpoints_stage_keeps_the_geometric_set_and_refuses_too_many(tmp_path):
    run = tmp_path / "PPO_classic/Breakout/0"
    run.mkdir(parents=True)
    for step in range(1, 11):
        checkpoints.save(
            run / f"model_{step * 100}.gz",
            ActorCritic(4),
            algo="PPO",
            protocol="classic",
            game="Breakout",
            seed=0,
            step=step * 100,
            frames=step * 400,
        )
    for keep, code in ((4, 0), (11, 2)):
        (tmp_path / "params.yaml").write_text(json.dumps({"sample_checkpoints": {"keep": keep}}))
        result = subprocess.run(
            [sys.executable, str(REPO / "stages/sample_checkpoints.py"), str(run), str(tmp_path / f"kept{keep}")],
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
        assert result.returncode == code, result.stderr
    kept = sorted(int(p.name[6:-3]) for p in (tmp_path / "kept4").iterdir())
    assert kept == [100 * i for i in checkpoints.geometric_indices(10, 4)]
    assert result.stderr.startswith("error: keep 11 checkpoints of 10") and result.stderr.count("\n") == 1
    assert not (tmp_path / "kept11").exists()


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
    from atarirep.agents import impala, network
    from atarirep.agents.network import IMPALANet

    torch.manual_seed(0)
    net = IMPALANet(4, last_action_reward=True, acts_greedily=True)  # evaluated greedily, as torchbeast tests
    path = tmp_path / "model_8.gz"
    impala.save_checkpoint(path, net, algo="IMPALA", protocol="classic", games=["Breakout"], seed=0, step=8, frames=32)
    seen = []
    play = network.play_outputs

    def recording(net_, obs, last_action, last_reward):
        seen.append((int(last_action[0]), float(last_reward[0])))
        return play(net_, obs, last_action, last_reward)

    monkeypatch.setattr(network, "play_outputs", recording)
    policy = policies.AgentPolicy(str(path), 4, np.random.default_rng(0), random_prob=0.0)
    frame = np.zeros((1, 210, 160), np.uint8)
    actions = [policy.act(frame, i == 0, reward=float(i % 2)) for i in range(200)]
    assert seen[0] == (0, 0.0)  # an episode's start: zeros
    assert [a for a, _ in seen[1:]] == actions[:-1] and seen[3][1] == 1.0  # then its own action, the reward given
    assert len(set(actions)) > 1  # a sample of the policy, not its argmax
