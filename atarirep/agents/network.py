"""The actor-critic every agent here trains: the Nature CNN torso, a policy head and a value head."""
from __future__ import annotations

import torch
from torch import nn

from atarirep.encoders import NatureCNN, _init_orthogonal, preprocess


class ActorCritic(nn.Module):
    """(B, 4, 84, 84) uint8 stacks -> (policy logits (B, A), value (B,)); CleanRL's PPO Atari agent.

    `encoder` is the Nature CNN up to its 512-d layer, the representation `probe_checkpoints` probes.
    """

    architecture = "nature_actor_critic"

    def __init__(self, num_actions: int, feature_size: int = 512):
        super().__init__()
        self.num_actions = num_actions
        self.encoder = NatureCNN(in_channels=4, feature_size=feature_size)
        self.actor = nn.Linear(feature_size, num_actions)
        self.critic = nn.Linear(feature_size, 1)
        _init_orthogonal(self.actor, gain=0.01)
        _init_orthogonal(self.critic, gain=1.0)

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        # Lay out the uint8 frames first: re-laying out the float copy moves four times the bytes.
        return self.encoder(preprocess(obs.contiguous(memory_format=_memory_format(obs))))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.features(obs)
        return self.actor(hidden), self.critic(hidden).squeeze(-1)


def _memory_format(obs: torch.Tensor) -> torch.memory_format:
    # Channels-last convolutions are faster on CPU (bench/bench_pretrain.py) and on CUDA with bf16.
    return torch.channels_last if obs.dim() == 4 else torch.contiguous_format


def num_actions_of(state_dict: dict) -> int:
    """The action count an ActorCritic state_dict was built for (its policy head's rows)."""
    return int(state_dict["actor.weight"].shape[0])
