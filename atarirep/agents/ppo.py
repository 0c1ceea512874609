"""PPO on Atari, in one file that reads top to bottom (CleanRL's `ppo_atari.py`, docs/protocols.md 4).

Settings are the reference's: 8 envs x 128 steps, 4 epochs of 4 minibatches, Adam lr 2.5e-4 (eps 1e-5)
annealed to 0, gamma 0.99, GAE lambda 0.95, clip 0.1 with value clipping, entropy 0.01, value 0.5, grad
norm 0.5; the Nature CNN on 84x84x4; the classic protocol (30 no-ops, FIRE reset, a life loss ends the
training episode, rewards clipped to their sign).

What this adds to the single file: a checkpoint every `checkpoint_every` agent steps in the published
format (atarirep.agents.checkpoints), logs through dvclive, and exact resume: a run killed at any point
resumes from its last checkpoint and ends with the same weights as an unbroken run (on CPU). The vector
env's emulator state cannot be saved, but the emulator is deterministic given its seed and the actions,
so the resume file keeps every action played since the envs last started new games, and a resumed run
replays them. To bound that replay, every env starts a new game (seeded by the segment's index) at the
first checkpoint past each multiple of `reset_every` agent steps (1M: 125,000 steps of each of 8 envs,
longer than the 27,000-step cap of a game); such a cut is a truncation, bootstrapped from the value as
the end of any rollout is. Actions are drawn by Gumbel-max from a seeded numpy generator, so sampling
does not depend on the device's RNG.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch
from torch import nn

from atarirep import seeds
from atarirep.agents import acting, checkpoints, runner
from atarirep.agents.network import ActorCritic
from atarirep.agents.vector_env import AgentEnvs
from atarirep.games import get_protocol
from atarirep.plumbing import devices, params

RESUME_FORMAT = "atarirep-ppo-resume/2"


@dataclass(frozen=True)
class PPOConfig:
    total_steps: int = 10_000_000  # agent steps over all envs (frames = 4x)
    num_envs: int = 8
    num_steps: int = 128  # rollout length per env
    lr: float = 2.5e-4
    anneal_lr: bool = True
    gamma: float = 0.99
    gae_lambda: float = 0.95
    num_minibatches: int = 4
    update_epochs: int = 4
    norm_adv: bool = True
    clip_coef: float = 0.1
    clip_vloss: bool = True
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    adam_eps: float = 1e-5
    protocol: str = "classic"
    checkpoint_every: int = 50_000  # agent steps; 200 checkpoints in 10M steps
    reset_every: int = 1_000_000  # agent steps; new games at the next checkpoint (bounds a resume's replay)

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def iterations(self) -> int:
        return self.total_steps // self.batch_size

    def check(self, where: str = "train_agent.ppo") -> None:
        """Every range of the config, each checked here once: UserError "`where`.key must be ...; set it to ..."."""
        get_protocol(self.protocol)
        for name in (
            "total_steps",
            "num_envs",
            "num_steps",
            "num_minibatches",
            "update_epochs",
            "checkpoint_every",
            "reset_every",
        ):
            if getattr(self, name) < 1:
                raise runner.out_of_range(self, where, name, "at least 1")
        if self.batch_size % self.num_minibatches:
            raise runner.out_of_range(
                self, where, "num_minibatches", f"a divisor of num_envs x num_steps ({self.batch_size})"
            )
        if self.iterations < 1:
            raise runner.out_of_range(
                self, where, "total_steps", f"at least one rollout (num_envs x num_steps = {self.batch_size})"
            )
        for name, rule, ok in (
            ("lr", "in (0, 1)", 0 < self.lr < 1),
            ("gamma", "in (0, 1]", 0 < self.gamma <= 1),
            ("gae_lambda", "in [0, 1]", 0 <= self.gae_lambda <= 1),
            ("clip_coef", "positive", self.clip_coef > 0),
            ("ent_coef", "at least 0", self.ent_coef >= 0),
            ("vf_coef", "at least 0", self.vf_coef >= 0),
            ("max_grad_norm", "positive", self.max_grad_norm > 0),
            ("adam_eps", "positive", self.adam_eps > 0),
        ):
            if not ok:
                raise runner.out_of_range(self, where, name, rule)

    def checkpoint_iterations(self) -> list[int]:
        """The iterations after which a checkpoint is written: the first to reach each multiple of
        `checkpoint_every`, and always the last."""
        return runner.checkpoint_iterations(self.total_steps, self.checkpoint_every, self.batch_size)

    def reset_iterations(self) -> list[int]:
        """The checkpoint iterations after which every env starts a new game: the first checkpoint at or past
        each multiple of `reset_every` (none at the end)."""
        saves = self.checkpoint_iterations()
        marks = {
            next((i for i in saves if i * self.batch_size >= k * self.reset_every), self.iterations)
            for k in range(1, self.total_steps // self.reset_every + 1)
        }
        return sorted(m for m in marks if m < self.iterations)

    def replay_iterations(self) -> int:
        """The most iterations a resumed run replays: the longest stretch between new games."""
        bounds = [0, *self.reset_iterations(), self.iterations]
        return max(b - a for a, b in pairwise(bounds))


def config_from(mapping: dict) -> PPOConfig:
    """A PPOConfig from params (train_agent.ppo); UserError for an unknown key or a value of the wrong type."""
    config = params.config_from(PPOConfig, mapping, "train_agent.ppo")
    config.check()
    return config


def train(
    game: str,
    seed: int,
    out_dir: str | os.PathLike,
    log_dir: str | os.PathLike,
    config: PPOConfig,
    *,
    study_seed: int = 0,
    device: str = "auto",
    algo: str = "PPO",
    progress: bool = True,
) -> Path:
    """Train PPO run `seed` on `game`; checkpoints go to out_dir (model_STEP.gz), dvclive logs to log_dir.

    Every random source (weights, actions, minibatches, the games' no-ops) follows seeds.agent_run(study_seed, seed).

    Both are written whole at the end; until then everything lives in a hidden folder beside out_dir,
    from which a killed run resumes.
    """
    config.check()
    device_ = devices.resolve(device)
    fingerprint = runner.fingerprint(config, game=game, seed=seed, study_seed=study_seed, algo=algo)
    work = runner.WorkFolder(out_dir, log_dir, RESUME_FORMAT, fingerprint)
    seeded = seeds.agent_run(study_seed, seed)
    envs = AgentEnvs(game, config.num_envs, config.protocol, training=True)
    torch.manual_seed(seeded)
    network = devices.place(ActorCritic(envs.num_actions), device_, torch.channels_last)
    # fused: one kernel for all parameters (the same Adam, faster on CPU: bench/bench_agent.py)
    optimizer = torch.optim.Adam(network.parameters(), lr=config.lr, eps=config.adam_eps, fused=True)
    rng = np.random.default_rng(seeded)
    start, segment = 0, 0
    # Every action since the envs last started new games (allocated once): a resume replays them.
    played = np.zeros((config.replay_iterations() * config.num_steps, config.num_envs), np.uint8)
    played_steps = 0
    saved = work.resume()
    if saved is not None:
        network.load_state_dict(saved["network"])
        optimizer.load_state_dict(saved["optimizer"])
        rng.bit_generator.state = json.loads(saved["rng"])
        start, segment = int(saved["iteration"]), int(saved["segment"])
        played_steps = len(saved["played"])
        played[:played_steps] = saved["played"].numpy()
        print(f"resuming {game} seed {seed} after iteration {start} ({start * config.batch_size} steps)")
    live = work.live(None if saved is None else start * config.batch_size)
    save_at, reset_at = set(config.checkpoint_iterations()), set(config.reset_iterations())

    # Rollout storage, allocated once (memory does not grow with training length).
    n, e = config.num_steps, config.num_envs
    obs = torch.zeros((n, e, 4, 84, 84), dtype=torch.uint8, device=device_)
    actions = torch.zeros((n, e), dtype=torch.long, device=device_)
    logprobs, rewards, dones, values = (torch.zeros((n, e), device=device_) for _ in range(4))
    next_obs = torch.from_numpy(envs.reset(seeds.ppo_games(seeded, segment))).to(device_)
    next_done = torch.zeros(e, device=device_)
    for row in played[:played_steps]:  # a resumed run: the games back to where the checkpoint left them
        result = envs.step(row)
        next_obs = torch.from_numpy(result.obs).to(device_)
        next_done = torch.from_numpy(result.terminated | result.truncated).to(device_, torch.float32)
    returns_window: list[float] = []  # games finished since the last log row (emptied each iteration)

    for iteration in range(start + 1, config.iterations + 1):
        started = time.perf_counter()
        if config.anneal_lr:
            optimizer.param_groups[0]["lr"] = runner.annealed(config.lr, iteration, config.iterations)

        # 1. Collect a rollout of num_steps from every env.
        for step in range(n):
            obs[step], dones[step] = next_obs, next_done
            with torch.no_grad():
                logits, value = network(next_obs)
            log_probs = torch.log_softmax(logits.float(), dim=-1)
            action = torch.from_numpy(acting.gumbel_max(log_probs.detach().cpu().double().numpy(), rng))
            played[played_steps] = action.numpy()
            played_steps += 1
            actions[step], values[step] = action.to(device_), value.float()
            logprobs[step] = log_probs.gather(1, actions[step, :, None]).squeeze(1)
            result = envs.step(action.numpy())
            rewards[step] = torch.from_numpy(result.reward).to(device_)
            next_obs = torch.from_numpy(result.obs).to(device_)
            next_done = torch.from_numpy(result.terminated | result.truncated).to(device_, torch.float32)
            returns_window.extend(result.finished_returns)

        # 2. Advantages by GAE; 3. update_epochs passes over the rollout in shuffled minibatches.
        with torch.no_grad():
            next_value = network(next_obs)[1].float()
        advantages = compute_gae(rewards, values, dones, next_value, next_done, config.gamma, config.gae_lambda)
        stats = update(
            network,
            optimizer,
            config,
            rng,
            obs=obs.reshape(-1, *obs.shape[2:]),
            actions=actions.reshape(-1),
            logprobs=logprobs.reshape(-1),
            advantages=advantages.reshape(-1),
            values=values.reshape(-1),
        )

        # 4. Log, checkpoint (then start new games), report.
        global_step = iteration * config.batch_size
        metrics = {
            **{f"losses/{k}": v for k, v in stats.items()},
            "charts/lr": optimizer.param_groups[0]["lr"],
            "charts/steps_per_s": config.batch_size / (time.perf_counter() - started),
        }
        if returns_window:
            metrics["charts/episode_return"] = float(np.mean(returns_window))
            metrics["charts/episodes"] = len(returns_window)
        runner.log(live, global_step, metrics)
        returns_window.clear()
        if iteration in save_at:
            checkpoints.save(
                work.checkpoint(global_step),
                network,
                algo=algo,
                protocol=config.protocol,
                game=envs.game,
                seed=seed,
                step=global_step,
                frames=global_step * envs.protocol.frame_skip,
            )
            if iteration in reset_at:
                segment, played_steps = segment + 1, 0
                next_obs = torch.from_numpy(envs.reset(seeds.ppo_games(seeded, segment))).to(device_)
                next_done = torch.zeros(e, device=device_)
            _write_resume(work, network, optimizer, rng, iteration, segment, played[:played_steps])
        if progress:
            shown = " ".join(f"{k.split('/')[1]}={v:.4g}" for k, v in metrics.items())
            print(
                f"{envs.game} seed {seed} step {global_step}/{config.iterations * config.batch_size} {shown}",
                flush=True,
            )
    live.end()
    envs.close()

    work.finish()  # logs and checkpoints replace the stage's outputs whole
    return Path(out_dir)


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    dones: torch.Tensor,
    next_value: torch.Tensor,
    next_done: torch.Tensor,
    gamma: float,
    lam: float,
) -> torch.Tensor:
    """(T, N) advantages by generalised advantage estimation; dones[t] marks obs[t] as a new episode's first."""
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(next_value)
    for t in reversed(range(len(rewards))):
        not_done = 1.0 - (next_done if t == len(rewards) - 1 else dones[t + 1])
        following = next_value if t == len(rewards) - 1 else values[t + 1]
        delta = rewards[t] + gamma * following * not_done - values[t]
        last = delta + gamma * lam * not_done * last
        advantages[t] = last
    return advantages


def update(
    network: nn.Module,
    optimizer: torch.optim.Optimizer,
    config: PPOConfig,
    rng: np.random.Generator,
    *,
    obs: torch.Tensor,
    actions: torch.Tensor,
    logprobs: torch.Tensor,
    advantages: torch.Tensor,
    values: torch.Tensor,
) -> dict[str, float]:
    """PPO's clipped update on one flattened rollout; `network(obs)` gives (logits, value). Returns the
    last minibatch's losses (as CleanRL logs them) and the mean clip fraction."""
    returns = advantages + values
    size = len(actions)
    minibatch = size // config.num_minibatches
    clip_fractions = []
    for _ in range(config.update_epochs):
        order = torch.from_numpy(rng.permutation(size)).to(actions.device)
        for begin in range(0, size, minibatch):
            idx = order[begin : begin + minibatch]
            logits, new_value = network(obs[idx])
            log_probs = torch.log_softmax(logits.float(), dim=-1)
            new_logprob = log_probs.gather(1, actions[idx, None]).squeeze(1)
            entropy = -(log_probs.exp() * log_probs).sum(1).mean()
            log_ratio = new_logprob - logprobs[idx]
            ratio = log_ratio.exp()
            with torch.no_grad():
                approx_kl = ((ratio - 1) - log_ratio).mean()
                clip_fractions.append(((ratio - 1.0).abs() > config.clip_coef).float().mean())
            adv = advantages[idx]
            if config.norm_adv:
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
            pg_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - config.clip_coef, 1 + config.clip_coef)).mean()
            new_value = new_value.float()
            v_loss = (new_value - returns[idx]) ** 2
            if config.clip_vloss:
                clipped = values[idx] + (new_value - values[idx]).clamp(-config.clip_coef, config.clip_coef)
                v_loss = torch.max(v_loss, (clipped - returns[idx]) ** 2)
            v_loss = 0.5 * v_loss.mean()
            loss = pg_loss - config.ent_coef * entropy + config.vf_coef * v_loss
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(network.parameters(), config.max_grad_norm)
            optimizer.step()
    return {
        "policy": pg_loss.item(),
        "value": v_loss.item(),
        "entropy": entropy.item(),
        "approx_kl": approx_kl.item(),
        "clip_fraction": torch.stack(clip_fractions).mean().item(),
    }


def _write_resume(
    work: runner.WorkFolder, network: nn.Module, optimizer, rng, iteration: int, segment: int, played: np.ndarray
) -> None:
    """What a resumed run needs beyond the checkpoint: the optimizer, the generator, and the actions to replay."""
    state = {
        "iteration": iteration,
        "segment": segment,
        "played": torch.from_numpy(played.copy()),
        "network": {k: v.detach().cpu() for k, v in network.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "rng": json.dumps(rng.bit_generator.state),
    }
    work.save(state)
