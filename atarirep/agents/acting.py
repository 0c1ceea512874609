"""How an agent acts with its network: one sampling rule for every algorithm, and one way to play games with a
trained network, shared by evaluation, saliency and collection by a trained agent.

- `gumbel_max`: a draw from softmax(scores), the sampling rule of PPO, IMPALA and `choose_actions`.
- `play_outputs`: the network's outputs on stacks, with the last action and reward for a network that reads them.
- `choose_actions`: actions from those outputs (a sample or the argmax, epsilon-random).
- `act`: one step's actions for (B, 4, 84, 84) stacks, from the two above.
- `agent_envs`, `play`: envs a network can play, and the loop that plays them.

The emulator (atarirep.agents.vector_env) is imported only where envs are opened.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from atarirep.plumbing.errors import UserError

if TYPE_CHECKING:
    from atarirep.agents.network import AgentNetwork
    from atarirep.agents.vector_env import AgentEnvs, Step


def gumbel_max(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A draw from softmax(scores) along the last axis: argmax(scores + Gumbel noise), from a seeded numpy generator
    (the same draws on CPU and CUDA). `scores` are logits or log-probabilities, in float64."""
    return (scores + rng.gumbel(size=scores.shape)).argmax(-1)


def play_outputs(
    network: nn.Module, obs: torch.Tensor, last_action: torch.Tensor, last_reward: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The network's (head, value) for acting on `obs`: given the last action and reward (B,) when it reads them
    (`last_action_reward`, an IMPALA network), else of the stacks alone."""
    if getattr(network, "last_action_reward", False):
        return network(obs, last_action=last_action, last_reward=last_reward)
    return network(obs)


def choose_actions(
    network: nn.Module, head: torch.Tensor, rng: np.random.Generator, epsilon: float, *, greedy: bool | None = None
) -> np.ndarray:
    """Actions for a batch of network outputs `head` (B, A): the argmax for a network that `acts_greedily` (Q-values,
    epsilon-greedy as the published DQN-family agents were evaluated; an IMPALA policy in torchbeast's test mode),
    else a Gumbel-max draw from the policy; `greedy` overrides the network's rule. With probability `epsilon` a
    uniformly random action instead. The uniform draws are made every step, so later actions do not depend on
    which envs took a random one."""
    outputs = head.double().cpu().numpy()
    greedy = getattr(network, "acts_greedily", False) if greedy is None else greedy
    chosen = outputs.argmax(1) if greedy else gumbel_max(outputs, rng)
    uniform = rng.integers(outputs.shape[1], size=len(outputs))
    return np.where(rng.random(len(outputs)) < epsilon, uniform, chosen)


def act(
    network: nn.Module,
    obs: np.ndarray,
    last_action: np.ndarray,
    last_reward: np.ndarray,
    rng: np.random.Generator,
    epsilon: float,
    *,
    greedy: bool | None = None,
) -> np.ndarray:
    """(B,) actions for (B, 4, 84, 84) uint8 stacks, given each env's last action (int64) and reward (float32):
    one forward pass without gradients on the network's device (`play_outputs`), then `choose_actions`."""
    device = next(network.parameters()).device
    with torch.no_grad():  # policy logits or Q-values (B, A)
        head, _ = play_outputs(
            network,
            torch.from_numpy(obs).to(device),
            torch.from_numpy(last_action).to(device),
            torch.from_numpy(last_reward).to(device),
        )
    return choose_actions(network, head, rng, epsilon, greedy=greedy)


def last_inputs(actions: np.ndarray, step: Step) -> tuple[np.ndarray, np.ndarray]:
    """The last action (int64) and reward (float32) an IMPALA network reads at the next step: zeros where a new
    episode starts."""
    started = step.terminated | step.truncated
    return (np.where(started, 0, actions).astype(np.int64), np.where(started, 0.0, step.reward).astype(np.float32))


def agent_envs(network: AgentNetwork, game: str, protocol: str, num_envs: int) -> AgentEnvs:
    """`num_envs` evaluation envs (`training=False`: a lost life ends nothing) of `game` under `protocol` for
    `network`, in its action space; UserError when the network has another number of actions than the game."""
    from atarirep.agents.vector_env import AgentEnvs  # the emulator, only where games are played

    envs = AgentEnvs(game, num_envs, protocol, training=False, full_action_space=network.full_action_space)
    if envs.num_actions != network.num_actions:
        envs.close()
        raise UserError(
            f"the network has {network.num_actions} actions but {envs.game} has {envs.num_actions}; "
            f"use a checkpoint trained on {envs.game}"
        )
    return envs


def play(
    network: nn.Module, envs: AgentEnvs, obs: np.ndarray, rng: np.random.Generator, epsilon: float
) -> Iterator[Step]:
    """Each batched step of `envs` played by `network` from the observations `obs` (their reset's): `act` with
    the last action and reward (zeros at an episode's start), then the envs' step. Endless: the caller stops."""
    last_action, last_reward = np.zeros(len(obs), np.int64), np.zeros(len(obs), np.float32)
    while True:
        actions = act(network, obs, last_action, last_reward, rng, epsilon)
        step = envs.step(actions)
        yield step
        last_action, last_reward = last_inputs(actions, step)
        obs = step.obs
