"""PPO (atarirep.agents.ppo): its core learns CartPole; a short Atari run checkpoints and resumes exactly; its
params are checked in one line."""

import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

from atarirep.agents import acting, checkpoints, ppo
from atarirep.plumbing.errors import UserError

TINY = ppo.PPOConfig(total_steps=1536, num_envs=4, num_steps=128, checkpoint_every=512, reset_every=1024)
# The resume tests' run: three iterations, a checkpoint after each, new games after the second (as TINY, a
# quarter of its work)
RESUMED = ppo.PPOConfig(total_steps=384, num_envs=2, num_steps=64, checkpoint_every=128, reset_every=256)


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
            action = torch.from_numpy(acting.gumbel_max(log_probs.double().numpy(), rng))
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
    """(checkpoint folder, log folder) of the RESUMED run trained without interruption."""
    root = tmp_path_factory.mktemp("straight")
    ppo.train("Breakout", 0, root / "straight", root / "straight_log", RESUMED, device="cpu", progress=False)
    return root / "straight", root / "straight_log"


@pytest.mark.parametrize("killed_after", [1, 2])  # 1: the games are replayed; 2: new games had begun
def test_a_killed_run_resumes_from_its_last_checkpoint_to_the_same_weights(tmp_path, killed_after, straight_run):
    assert RESUMED.reset_iterations() == [2] and RESUMED.replay_iterations() == 2
    killed = tmp_path / "killed"
    code = (
        f"from atarirep.agents import ppo, checkpoints\n"
        f"real = ppo._write_resume\n"
        f"def write_then_die(*args, **kwargs):\n"
        f"    real(*args, **kwargs)\n"
        f"    if args[4] == {killed_after}: import os; os._exit(9)   # SIGKILL-like: no cleanup\n"
        f"ppo._write_resume = write_then_die\n"
        f"ppo.train('Breakout', 0, {str(killed)!r}, {str(tmp_path / 'killed_log')!r}, "
        f"ppo.{RESUMED!r}, device='cpu')\n"
    )
    died = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert died.returncode == 9, died.stderr
    assert not killed.exists() and (tmp_path / ".killed.partial/resume.pt").exists()
    ppo.train("Breakout", 0, killed, tmp_path / "killed_log", RESUMED, device="cpu", progress=True)
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
