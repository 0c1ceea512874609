"""PPO training throughput on Breakout: atarirep's PPO loop vs a plain CleanRL-style single file, same run.

Prints one JSON object. Both loops train with CleanRL's ppo_atari settings (8 envs x 128 steps = 1,024
agent steps per iteration, 4 epochs x 4 minibatches of 256, Adam 2.5e-4 annealed, GAE, clipped losses),
the same seed and the same torch thread count; steps/s counts agent steps (frames = 4x) over whole
iterations (rollout + GAE + update + the loop's own logging), after 1 warm-up iteration that is not timed.

  atarirep  atarirep.agents.ppo.train itself (total_steps = (iterations + 1) x 1,024, one checkpoint, after
            the last timed iteration, so outside the timing): AgentEnvs (CleanRL's wrapper chain on the
            emulators, atarirep.agents.vector_env), the ActorCritic channels-last on uint8 rollout storage,
            Gumbel-max sampling, dvclive logging. Timed through thin wrappers on AgentEnvs.step,
            ActorCritic.forward (no-grad calls = inference), ppo.compute_gae and ppo.update, so the breakdown is
            of the real code path.
  baseline  CleanRL's ppo_atari.py, written below as that file writes it: gymnasium SyncVectorEnv (same-step
            autoreset) of gym.make("BreakoutNoFrameskip-v4") under CleanRL's wrappers (stable-baselines3's
            NoopResetEnv, MaxAndSkipEnv, EpisodicLifeEnv, FireResetEnv, ClipRewardEnv; gymnasium's Resize,
            Grayscale and FrameStack observations); float32 rollout storage; an NCHW nn.Sequential Nature CNN
            with the ActorCritic's layer shapes and init, obs/255; Categorical sampling; CleanRL's GAE and
            minibatch loop (minus its tensorboard writes and its torch_deterministic flag; atarirep sets neither).
Why the baseline is fair: same algorithm, settings, network shapes, seeds and threads, and the same env step for
step (tests/agents/test_vector_env.py); it is the loop most PPO-on-Atari code is copied from.

Breakdown ("seconds_per_iteration"): rollout = rollout_env (env.step) + rollout_inference (no-grad forward;
the baseline's includes its Categorical sampling) + rollout_rest (sampling, storage); gae includes the bootstrap
value's forward; update = 4 epochs x 4 minibatches; other = the rest of the loop (lr, logging).

Also measured: env stepping alone (random actions, 8 envs, --env-steps steps) for AgentEnvs, ale-py's C++
AtariVectorEnv (how atarirep stepped games before: faster, but not CleanRL's env), envpool's Breakout-v5 and
the SyncVectorEnv above; the peak RSS of each training (each runs in a fresh process);
a "cuda" section when a GPU is present.

Each training runs --rounds times, round-robin with the other, each time in a fresh process; the best round is
reported. Usage: python bench/bench_agent.py [--iterations 6] [--threads N] [--rounds 2] [--env-steps 1000] [--quick]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ale_py
import gymnasium as gym
import numpy as np
import torch
from ale_py.vector_env import AtariVectorEnv
from stable_baselines3.common.atari_wrappers import (
    ClipRewardEnv,
    EpisodicLifeEnv,
    FireResetEnv,
    MaxAndSkipEnv,
    NoopResetEnv,
)
from torch import nn
from torch.distributions.categorical import Categorical

from atarirep.agents import ppo
from atarirep.agents.network import ActorCritic
from atarirep.agents.vector_env import AgentEnvs

gym.register_envs(ale_py)
GAME, GYM_ID, SEED = "Breakout", "BreakoutNoFrameskip-v4", 1
CONFIG = ppo.PPOConfig()  # 8 envs x 128 steps, 4 epochs x 4 minibatches: CleanRL's settings


# -- baseline: CleanRL's ppo_atari.py ------------------------------------------------------------------
def make_env(env_id: str):
    """CleanRL ppo_atari.py's make_env, wrapper for wrapper (its wrappers are stable-baselines3's)."""

    def thunk():
        env = gym.make(env_id)
        env = gym.wrappers.RecordEpisodeStatistics(env)
        env = NoopResetEnv(env, noop_max=30)
        env = MaxAndSkipEnv(env, skip=4)
        env = EpisodicLifeEnv(env)
        if "FIRE" in env.unwrapped.get_action_meanings():
            env = FireResetEnv(env)
        env = ClipRewardEnv(env)
        env = gym.wrappers.ResizeObservation(env, (84, 84))
        env = gym.wrappers.GrayscaleObservation(env)
        return gym.wrappers.FrameStackObservation(env, 4)

    return thunk


def make_envs(num_envs: int) -> gym.vector.SyncVectorEnv:
    return gym.vector.SyncVectorEnv(
        [make_env(GYM_ID) for _ in range(num_envs)], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )


def layer_init(layer, std=2**0.5, bias_const=0.0):
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class Agent(nn.Module):
    def __init__(self, num_actions: int):
        super().__init__()
        self.network = nn.Sequential(
            layer_init(nn.Conv2d(4, 32, 8, stride=4)),
            nn.ReLU(),
            layer_init(nn.Conv2d(32, 64, 4, stride=2)),
            nn.ReLU(),
            layer_init(nn.Conv2d(64, 64, 3, stride=1)),
            nn.ReLU(),
            nn.Flatten(),
            layer_init(nn.Linear(64 * 7 * 7, 512)),
            nn.ReLU(),
        )
        self.actor = layer_init(nn.Linear(512, num_actions), std=0.01)
        self.critic = layer_init(nn.Linear(512, 1), std=1)

    def get_value(self, x):
        return self.critic(self.network(x / 255.0))

    def get_action_and_value(self, x, action=None):
        hidden = self.network(x / 255.0)
        logits = self.actor(hidden)
        probs = Categorical(logits=logits)
        if action is None:
            action = probs.sample()
        return action, probs.log_prob(action), probs.entropy(), self.critic(hidden)


def run_baseline(iterations: int, device: str) -> dict:
    """CleanRL's loop for 1 + `iterations` iterations; the first is not timed."""
    c, device = CONFIG, torch.device(device)
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    envs = make_envs(c.num_envs)
    agent = Agent(envs.single_action_space.n).to(device)
    optimizer = torch.optim.Adam(agent.parameters(), lr=c.lr, eps=c.adam_eps)
    obs = torch.zeros((c.num_steps, c.num_envs) + envs.single_observation_space.shape).to(device)
    actions = torch.zeros((c.num_steps, c.num_envs) + envs.single_action_space.shape).to(device)
    logprobs, rewards, dones, values = (torch.zeros((c.num_steps, c.num_envs)).to(device) for _ in range(4))
    next_obs, _ = envs.reset(seed=SEED)
    next_obs, next_done = torch.Tensor(next_obs).to(device), torch.zeros(c.num_envs).to(device)
    total = iterations + 1
    timed = []
    for iteration in range(1, total + 1):
        t = {"env": 0.0, "inference": 0.0}
        started = time.perf_counter()
        optimizer.param_groups[0]["lr"] = (1.0 - (iteration - 1.0) / total) * c.lr
        for step in range(c.num_steps):
            obs[step], dones[step] = next_obs, next_done
            t0 = time.perf_counter()
            with torch.no_grad():
                action, logprob, _, value = agent.get_action_and_value(next_obs)
                values[step] = value.flatten()
            t1 = time.perf_counter()
            actions[step], logprobs[step] = action, logprob
            next_obs, reward, terminations, truncations, infos = envs.step(action.cpu().numpy())
            t["env"] += time.perf_counter() - t1
            t["inference"] += t1 - t0
            next_done = np.logical_or(terminations, truncations)
            rewards[step] = torch.tensor(reward).to(device).view(-1)
            next_obs, next_done = torch.Tensor(next_obs).to(device), torch.Tensor(next_done).to(device)
        t["rollout"] = time.perf_counter() - started

        t0 = time.perf_counter()
        with torch.no_grad():
            next_value = agent.get_value(next_obs).reshape(1, -1)
            advantages = torch.zeros_like(rewards).to(device)
            lastgaelam = 0
            for t_ in reversed(range(c.num_steps)):
                if t_ == c.num_steps - 1:
                    nextnonterminal, nextvalues = 1.0 - next_done, next_value
                else:
                    nextnonterminal, nextvalues = 1.0 - dones[t_ + 1], values[t_ + 1]
                delta = rewards[t_] + c.gamma * nextvalues * nextnonterminal - values[t_]
                advantages[t_] = lastgaelam = delta + c.gamma * c.gae_lambda * nextnonterminal * lastgaelam
            returns = advantages + values
        t1 = time.perf_counter()
        t["gae"] = t1 - t0

        b_obs = obs.reshape((-1,) + envs.single_observation_space.shape)
        b_logprobs, b_actions = logprobs.reshape(-1), actions.reshape((-1,) + envs.single_action_space.shape)
        b_advantages, b_returns, b_values = advantages.reshape(-1), returns.reshape(-1), values.reshape(-1)
        b_inds = np.arange(c.batch_size)
        minibatch_size = c.batch_size // c.num_minibatches
        clipfracs = []
        for _epoch in range(c.update_epochs):
            np.random.shuffle(b_inds)
            for start in range(0, c.batch_size, minibatch_size):
                mb_inds = b_inds[start : start + minibatch_size]
                _, newlogprob, entropy, newvalue = agent.get_action_and_value(b_obs[mb_inds], b_actions.long()[mb_inds])
                logratio = newlogprob - b_logprobs[mb_inds]
                ratio = logratio.exp()
                with torch.no_grad():
                    clipfracs += [((ratio - 1.0).abs() > c.clip_coef).float().mean().item()]
                mb_advantages = b_advantages[mb_inds]
                if c.norm_adv:
                    mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)
                pg_loss1 = -mb_advantages * ratio
                pg_loss2 = -mb_advantages * torch.clamp(ratio, 1 - c.clip_coef, 1 + c.clip_coef)
                pg_loss = torch.max(pg_loss1, pg_loss2).mean()
                newvalue = newvalue.view(-1)
                if c.clip_vloss:
                    v_loss_unclipped = (newvalue - b_returns[mb_inds]) ** 2
                    v_clipped = b_values[mb_inds] + torch.clamp(newvalue - b_values[mb_inds], -c.clip_coef, c.clip_coef)
                    v_loss_clipped = (v_clipped - b_returns[mb_inds]) ** 2
                    v_loss = 0.5 * torch.max(v_loss_unclipped, v_loss_clipped).mean()
                else:
                    v_loss = 0.5 * ((newvalue - b_returns[mb_inds]) ** 2).mean()
                entropy_loss = entropy.mean()
                loss = pg_loss - c.ent_coef * entropy_loss + v_loss * c.vf_coef
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), c.max_grad_norm)
                optimizer.step()
        t["update"] = time.perf_counter() - t1
        y_pred, y_true = b_values.cpu().numpy(), b_returns.cpu().numpy()
        var_y = np.var(y_true)
        explained_var = np.nan if var_y == 0 else 1 - np.var(y_true - y_pred) / var_y  # noqa: F841 (logged)
        t["iteration"] = time.perf_counter() - started
        if iteration > 1:
            timed.append(t)
    envs.close()
    return summarize(timed)


# -- atarirep: ppo.train, timed through wrappers on its pieces ---------------------------------------
def run_atarirep(iterations: int, device: str) -> dict:
    """ppo.train for 1 + `iterations` iterations; iteration k is the span between the ends of updates k-1, k."""
    events: list[tuple[str, float, float]] = []

    def timed(kind, fn, when=lambda: True):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if not when():
                return fn(*args, **kwargs)
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            events.append((kind, start, time.perf_counter()))
            return out

        return wrapper

    AgentEnvs.step = timed("env", AgentEnvs.step)
    ActorCritic.forward = timed("inference", ActorCritic.forward, lambda: not torch.is_grad_enabled())
    ppo.compute_gae, ppo.update = timed("gae", ppo.compute_gae), timed("update", ppo.update)
    total = (iterations + 1) * CONFIG.batch_size
    config = ppo.PPOConfig(total_steps=total, checkpoint_every=total + CONFIG.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        ppo.train(GAME, SEED, f"{tmp}/checkpoints", f"{tmp}/live", config, device=device, progress=False)

    update_ends = [end for kind, _, end in events if kind == "update"]
    timed_iterations = []
    for lo, hi in zip(update_ends[:-1], update_ends[1:], strict=True):
        inside = [e for e in events if lo < e[1] < hi]

        def spent(kind, inside=inside):
            return sum(end - start for k, start, end in inside if k == kind)

        forwards = [e for e in inside if e[0] == "inference"]  # 128 rollout steps, then the bootstrap value
        bootstrap, gae_end = forwards[-1][1], next(end for k, _, end in inside if k == "gae")
        timed_iterations.append(
            {
                "env": spent("env"),
                "inference": sum(end - start for _, start, end in forwards[:-1]),
                "rollout": bootstrap - forwards[0][1],
                "gae": gae_end - bootstrap,
                "update": spent("update"),
                "iteration": hi - lo,
            }
        )
    return summarize(timed_iterations)


def summarize(iterations: list[dict]) -> dict:
    """steps/s over the timed iterations and their mean breakdown (seconds per iteration)."""
    mean = {k: float(np.mean([it[k] for it in iterations])) for k in iterations[0]}
    breakdown = {
        "rollout": mean["rollout"],
        "rollout_env": mean["env"],
        "rollout_inference": mean["inference"],
        "rollout_rest": mean["rollout"] - mean["env"] - mean["inference"],
        "gae": mean["gae"],
        "update": mean["update"],
        "other": mean["iteration"] - mean["rollout"] - mean["gae"] - mean["update"],
        "iteration": mean["iteration"],
    }
    return {
        "steps_per_s": round(CONFIG.batch_size / mean["iteration"], 1),
        "seconds_per_iteration": {k: round(v, 4) for k, v in breakdown.items()},
    }


# -- env stepping alone ------------------------------------------------------------------------------
def step_rate(env, actions: np.ndarray) -> float:
    """Agent steps/s of env.step over the rows of `actions` (after 10 untimed steps)."""
    for row in actions[:10]:
        env.step(row)
    started = time.perf_counter()
    for row in actions:
        env.step(row)
    return round(actions.size / (time.perf_counter() - started), 1)


def run_envs(steps: int) -> dict:
    num_envs = CONFIG.num_envs
    actions = np.random.default_rng(SEED).integers(0, 4, (steps, num_envs))  # Breakout's 4 actions
    found = {}
    ours = AgentEnvs(GAME, num_envs, CONFIG.protocol, training=True)
    ours.reset(SEED)
    found["atarirep_agentenvs"] = step_rate(ours, actions)
    ours.close()
    # ale-py's C++ vector env, as atarirep stepped games before (gray before resize, no FIRE after a lost life)
    vector = AtariVectorEnv(
        "breakout",
        num_envs,
        autoreset_mode="SameStep",
        frameskip=4,
        maxpool=True,
        grayscale=True,
        stack_num=4,
        img_height=84,
        img_width=84,
        noop_max=30,
        use_fire_reset=True,
        episodic_life=False,
        life_loss_info=True,
        reward_clipping=False,
        repeat_action_probability=0.0,
        max_num_frames_per_episode=108_000,
    )
    vector.reset(seed=SEED)
    found["ale_py_vector"] = step_rate(vector, actions)
    vector.close()
    try:
        import envpool
    except ImportError:
        found["envpool"] = "not installed"
    else:
        pool = envpool.make(
            "Breakout-v5", env_type="gymnasium", num_envs=num_envs, episodic_life=True, reward_clip=True
        )  # num_threads 0 = min(num_envs, cores)
        pool.reset()
        found["envpool"] = step_rate(pool, actions)
        pool.close()
    sync = make_envs(num_envs)
    sync.reset(seed=SEED)
    found["gymnasium_sync"] = step_rate(sync, actions)
    sync.close()
    return found


# -- children and main -------------------------------------------------------------------------------
def child(which: str, iterations: int, threads: int, device: str) -> None:
    torch.set_num_threads(threads)
    result = (run_atarirep if which == "atarirep" else run_baseline)(iterations, device)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(result))


def in_child(which: str, iterations: int, threads: int, device: str) -> dict:
    """Each training runs in a fresh process, so its peak RSS is its own."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", which, str(iterations), str(threads), device],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(iterations: int, threads: int, device: str, rounds: int) -> dict:
    """Round-robin over the two loops, `rounds` times: on a shared machine another process's load hits whichever
    runs at that moment, and the best round (reported with its breakdown) is the least disturbed."""
    runs = {"atarirep": [], "baseline": []}
    for _ in range(rounds):
        for which, found in runs.items():
            found.append(in_child(which, iterations, threads, device))
    best = {which: max(found, key=lambda r: r["steps_per_s"]) for which, found in runs.items()}
    return {
        **best,
        "steps_per_s_rounds": {which: [r["steps_per_s"] for r in found] for which, found in runs.items()},
        "speedup": round(best["atarirep"]["steps_per_s"] / best["baseline"]["steps_per_s"], 2),
    }


def main() -> None:
    from report import finish  # here: tests load this file by path, without bench/ on sys.path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=6, help="timed PPO iterations (1,024 steps each)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    parser.add_argument("--env-steps", type=int, default=1000, help="vector steps of the env-stepping section")
    parser.add_argument("--rounds", type=int, default=2, help="round-robin rounds; the best is reported")
    parser.add_argument("--quick", action="store_true", help="2 iterations, 1 round, 200 env steps")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the JSON here (bench/results/NAME.json)")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        which, iterations, threads, device = args.child
        return child(which, int(iterations), int(threads), device)
    if args.quick:
        args.iterations, args.rounds, args.env_steps = 2, 1, 200

    started = time.perf_counter()
    c = CONFIG
    report: dict = {
        "benchmark": "ppo_agent",
        "game": GAME,
        "seed": SEED,
        "settings": {
            "num_envs": c.num_envs,
            "num_steps": c.num_steps,
            "update_epochs": c.update_epochs,
            "num_minibatches": c.num_minibatches,
            "steps_per_iteration": c.batch_size,
            "timed_iterations": args.iterations,
            "warmup_iterations": 1,
            "rounds": args.rounds,
            "env_steps": args.env_steps,
        },
        "torch_threads": args.threads,
        "ale_threads": min(c.num_envs, os.cpu_count() or 1),
    }
    report["cpu"] = compare(args.iterations, args.threads, "cpu", args.rounds)
    report["env_steps_per_s"] = run_envs(args.env_steps)
    frame = 4 * 84 * 84
    report["rollout_storage_mb"] = {
        "atarirep_uint8": round(c.batch_size * frame / 2**20, 1),
        "baseline_float32": round(c.batch_size * frame * 4 / 2**20, 1),
        "note": "both allocated once before the first iteration; peak_rss_mb is each training's own process",
    }
    if torch.cuda.is_available():
        report["cuda"] = {
            **compare(args.iterations, args.threads, "cuda", args.rounds),
            "note": "inference and update times on CUDA are launch times up to the next sync",
        }
    else:
        report["cuda"] = "not available (never run)"
    report["seconds"] = round(time.perf_counter() - started, 1)
    finish(report, args.json)


if __name__ == "__main__":
    main()
