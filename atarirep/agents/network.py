"""The agents' networks on the Nature CNN torso: the actor-critic every algorithm here trains, and the Q-network
of the published DQN-family collections (DQN, M-DQN, C51), loaded from their checkpoints for evaluation and
probing.

Both take (B, 4, 84, 84) uint8 stacks, scale them to [0, 1] (obs / 255) once in `features`, and return
(head output (B, A), value (B,)), so code written for the actor-critic's (logits, value) runs on either;
`acts_greedily` tells whether the head is a policy's logits to sample (False) or Q-values to maximise (True);
an IMPALA checkpoint sets it for its policy (torchbeast's test mode takes the argmax); how they act is
atarirep.agents.acting's.
Both have the same `encoder` (the Nature CNN up to its 512-d layer, after its ReLU) and `features`, the
representation `probe_checkpoints` probes.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from atarirep.agents.popart import PopArt
from atarirep.encoders import ImpalaCNN, NatureCNN, _init_orthogonal, preprocess
from atarirep.plumbing.errors import UserError

MAX_ACTIONS = 18  # the full ALE action set: no Atari game has more actions
C51_SUPPORT = (-10.0, 10.0)  # C51's value range (Bellemare et al. 2017), used when a file holds no support


class ActorCritic(nn.Module):
    """(B, 4, 84, 84) uint8 stacks -> (policy logits (B, A), value (B,)); CleanRL's PPO Atari agent.

    `encoder` is the Nature CNN up to its 512-d layer, the representation `probe_checkpoints` probes.
    """

    architecture = "nature_actor_critic"
    acts_greedily = False  # the head is a policy: actions are sampled from softmax(logits)
    full_action_space = False  # it plays the game's minimal action set (as every network here but a mapped one)

    def __init__(self, num_actions: int, feature_size: int = 512):
        super().__init__()
        self.num_actions = num_actions
        self.encoder = NatureCNN(in_channels=4, feature_size=feature_size)
        self.actor = nn.Linear(feature_size, num_actions)
        self.critic = nn.Linear(feature_size, 1)
        _init_orthogonal(self.actor, gain=0.01)
        _init_orthogonal(self.critic, gain=1.0)

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        return _features(self.encoder, obs)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.features(obs)
        return self.actor(hidden), self.critic(hidden).squeeze(-1)


class QNetwork(nn.Module):
    """(B, 4, 84, 84) uint8 stacks -> (Q-values (B, A), value (B,) = max over actions of Q); the Nature DQN.

    The published DQN-family networks: Conv(4->32, 8, s4), Conv(32->64, 4, s2), Conv(64->64, 3, s1),
    Linear(3136 -> 512), each followed by a ReLU (`encoder`, the same NatureCNN as ActorCritic's), then
    `q` = Linear(512 -> A) or, for C51 (`atoms` > 1), Linear(512 -> A x atoms): per action a softmax over
    the atoms of `support`, whose mean is its Q-value.

    Pixel scale: uint8 input is divided by 255, as in the published collections' own `AtariNet` (it asserts
    uint8 input and divides by 255) and in our networks. A checkpoint trained on unscaled 0..255 inputs
    cannot be told apart from its weights; it would load and play badly (its activations 255 times too small).
    Float input is taken as already scaled to [0, 1]: `atarirep.agents.saliency` calls any network but an
    ActorCritic on its perturbed float stacks.
    """

    support: torch.Tensor  # a buffer (atoms,), for a C51 head only

    architecture = "nature_dqn"
    acts_greedily = True  # the head holds Q-values: the action is their argmax (epsilon-greedy)
    full_action_space = False

    def __init__(self, num_actions: int, atoms: int = 1, support: torch.Tensor | None = None, feature_size: int = 512):
        super().__init__()
        if atoms < 1:
            raise ValueError(f"atoms must be at least 1, got {atoms}")
        self.num_actions, self.atoms = num_actions, atoms
        self.encoder = NatureCNN(in_channels=4, feature_size=feature_size)
        self.q = nn.Linear(feature_size, num_actions * atoms)
        if atoms > 1:
            support = torch.linspace(*C51_SUPPORT, atoms) if support is None else support.detach().float().flatten()
            if support.numel() != atoms:
                raise ValueError(f"a support of {support.numel()} values for {atoms} atoms")
            self.register_buffer("support", support.clone())
        elif support is not None:
            raise ValueError("a support is only for a distributional head (atoms > 1)")

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        """(B, 512) features of uint8 stacks, or of float stacks already in [0, 1]."""
        if obs.dtype == torch.uint8:
            return _features(self.encoder, obs)
        return self.encoder(obs.contiguous(memory_format=_memory_format(obs)))

    def q_values(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, A) Q-values of (B, 512) features: the head's output, or for C51 each action's distribution's mean."""
        out = self.q(hidden)
        if self.atoms == 1:
            return out
        probs = torch.softmax(out.view(out.shape[0], self.num_actions, self.atoms), dim=-1)
        return (probs * self.support).sum(-1)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.q_values(self.features(obs))
        return q, q.max(dim=1).values


def _features(encoder: nn.Module, obs: torch.Tensor) -> torch.Tensor:
    # Lay out the uint8 frames first: re-laying out the float copy moves four times the bytes.
    return encoder(preprocess(obs.contiguous(memory_format=_memory_format(obs))))


def _memory_format(obs: torch.Tensor) -> torch.memory_format:
    # Channels-last convolutions are faster on CPU (bench/bench_pretrain.py) and on CUDA with bf16.
    return torch.channels_last if obs.dim() == 4 else torch.contiguous_format


def num_actions_of(state_dict: dict) -> int:
    """The action count an ActorCritic state_dict was built for (its policy head's rows)."""
    return int(state_dict["actor.weight"].shape[0])


class IMPALANet(nn.Module):
    """(B, 4, 84, 84) uint8 stacks -> policy logits (B, A) and values (B, value_outputs).

    As monobeast's AtariNet, with `last_action_reward` the heads read, beside the torso's features, the last
    reward clamped to [-1, 1] and a one-hot of the last action (core input: features + 1 + num_actions, in
    that order); `features` stays the torso's alone (what probing probes). The value layer has one output per
    task under PopArt (`critic` a PopArt layer: normalised outputs, per-task mu/nu/sigma buffers), else one
    output shared by every task (a plain Linear; `value_outputs` given: that many, as older checkpoints had).
    With the Nature CNN, one task, no PopArt and no last action/reward its state_dict is ActorCritic's
    (encoder, actor, critic), so the PPO network loads it. `acts_greedily`: evaluation takes the argmax of the
    logits (torchbeast's test mode) rather than a sample.
    """

    def __init__(
        self,
        num_actions: int,
        num_tasks: int = 1,
        encoder: str = "nature",
        popart: bool = False,
        full_action_space: bool = False,
        *,
        last_action_reward: bool = False,
        value_outputs: int | None = None,
        acts_greedily: bool = False,
    ):
        super().__init__()
        self.num_actions, self.num_tasks, self.encoder_name, self.popart = num_actions, num_tasks, encoder, popart
        self.full_action_space = full_action_space  # it plays ALE's 18 actions in every game (a multi-task mapping)
        self.last_action_reward, self.acts_greedily = last_action_reward, acts_greedily
        self.value_outputs = value_outputs or (num_tasks if popart else 1)
        if popart and self.value_outputs != num_tasks:
            raise ValueError(f"PopArt needs one value output per task ({num_tasks}), not {self.value_outputs}")
        self.encoder = (
            NatureCNN(in_channels=4, feature_size=512)
            if encoder == "nature"
            else ImpalaCNN(in_channels=4, feature_size=256, input_size=(84, 84))
        )
        core = self.encoder.feature_size + (1 + num_actions if last_action_reward else 0)
        self.actor = nn.Linear(core, num_actions)
        self.critic = PopArt(core, num_tasks) if popart else nn.Linear(core, self.value_outputs)
        _init_orthogonal(self.actor, gain=0.01)  # as ActorCritic (CleanRL)
        _init_orthogonal(self.critic, gain=1.0)

    @classmethod
    def from_spec(cls, spec: dict) -> IMPALANet:
        """A fresh network of a checkpoint's "architecture" (`spec`); absent keys: ActorCritic's network."""
        return cls(
            int(spec["num_actions"]),
            num_tasks=int(spec.get("num_tasks", 1)),
            encoder=spec.get("encoder", "nature"),
            popart=bool(spec.get("popart", False)),
            full_action_space=bool(spec.get("full_action_space", False)),
            last_action_reward=bool(spec.get("last_action_reward", False)),
            value_outputs=spec.get("value_outputs"),
            acts_greedily=bool(spec.get("acts_greedily", False)),
        )

    @property
    def architecture(self) -> str:
        """ActorCritic's name when this is that network (the Nature CNN, one task, no PopArt, no last
        action/reward inputs), else our own."""
        plain = (
            self.encoder_name == "nature"
            and self.num_tasks == 1
            and not self.popart
            and not self.full_action_space
            and not self.last_action_reward
        )
        return "nature_actor_critic" if plain else "impala_actor_critic"

    @property
    def spec(self) -> dict:
        """What a checkpoint's "architecture" records to rebuild this network (`load_network`) and how it plays."""
        return {
            "name": self.architecture,
            "num_actions": self.num_actions,
            "encoder": self.encoder_name,
            "num_tasks": self.num_tasks,
            "popart": self.popart,
            "full_action_space": self.full_action_space,
            "last_action_reward": self.last_action_reward,
            "value_outputs": self.value_outputs,
            "acts_greedily": self.acts_greedily,
        }

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        """The torso's features of uint8 stacks, or of float stacks already in [0, 1] (saliency's perturbed stacks)."""
        if obs.dtype == torch.uint8:
            return self.encoder(preprocess(obs.contiguous(memory_format=torch.channels_last)))
        return self.encoder(obs.contiguous(memory_format=_memory_format(obs)))

    def core(
        self, hidden: torch.Tensor, last_action: torch.Tensor | None = None, last_reward: torch.Tensor | None = None
    ) -> torch.Tensor:
        """What the heads read: the features, then (with last_action_reward) the last reward clamped to [-1, 1]
        and the last action one-hot, as monobeast's AtariNet concatenates them; either absent: zeros (an
        episode's start). Both enter the heads linearly, so a saliency score (a difference of outputs at the
        same last action and reward) does not depend on them."""
        if not self.last_action_reward:
            return hidden
        n = hidden.shape[0]
        action = torch.zeros(n, dtype=torch.int64, device=hidden.device) if last_action is None else last_action
        reward = torch.zeros(n, device=hidden.device) if last_reward is None else last_reward
        reward = reward.reshape(n, 1).to(hidden.dtype).clamp(-1.0, 1.0)
        one_hot = F.one_hot(action.reshape(n).long(), self.num_actions).to(hidden.dtype)
        return torch.cat([hidden, reward, one_hot], dim=-1)

    def heads(
        self, obs: torch.Tensor, last_action: torch.Tensor | None = None, last_reward: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (B, A), the value layer's outputs (B, value_outputs): PopArt-normalised when popart)."""
        inputs = self.core(self.features(obs), last_action, last_reward)
        return self.actor(inputs), self.critic(inputs)

    def output_index(self, task_ids: torch.Tensor) -> torch.Tensor:
        """Each task's column of the value outputs: its own under PopArt, else the shared one (0)."""
        return task_ids if self.value_outputs > 1 else torch.zeros_like(task_ids)

    def unnormalize(self, outputs: torch.Tensor, task_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The value layer's outputs in the reward's scale (sigma n + mu under PopArt)."""
        return self.critic.unnormalize(outputs, task_ids) if isinstance(self.critic, PopArt) else outputs

    def forward(
        self,
        obs: torch.Tensor,
        task_ids: torch.Tensor | None = None,
        *,
        last_action: torch.Tensor | None = None,
        last_reward: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (B, A), values in the reward's scale): of each row's task given task_ids (B,), else (B,)
        for one value output (as ActorCritic) and (B, value_outputs) for several."""
        logits, outputs = self.heads(obs, last_action, last_reward)
        values = self.unnormalize(outputs)
        if task_ids is not None:
            return logits, values.gather(1, self.output_index(task_ids)[:, None]).squeeze(1)
        return logits, values.squeeze(1) if self.value_outputs == 1 else values


class OneGame(nn.Module):
    """One game's view of a multi-task IMPALANet: (logits (B, A), that game's value (B,)), as ActorCritic returns,
    so evaluation, saliency and probing run on it unchanged. The policy is shared; the value is game `task`'s
    (the shared output when the network has one)."""

    def __init__(self, network: IMPALANet, task: int):
        super().__init__()
        self.network, self.task = network, task
        self.num_actions, self.full_action_space = network.num_actions, network.full_action_space
        self.architecture = network.architecture
        self.acts_greedily, self.last_action_reward = network.acts_greedily, network.last_action_reward

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        return self.network.features(obs)

    def forward(
        self, obs: torch.Tensor, *, last_action: torch.Tensor | None = None, last_reward: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        task_ids = torch.full((obs.shape[0],), self.task, dtype=torch.int64, device=obs.device)
        return self.network(obs, task_ids, last_action=last_action, last_reward=last_reward)


# The networks a checkpoint loads as (atarirep.agents.checkpoints.load_for_game).
AgentNetwork = ActorCritic | QNetwork | IMPALANet | OneGame


def network_from(state: dict, spec: dict, source: str = "the state_dict") -> IMPALANet:
    """The IMPALANet a state_dict holds, given its checkpoint's "architecture" (absent: the Nature CNN actor-critic
    of one task); UserError starting with `source` for other weights."""
    try:
        spec = {**spec, "num_actions": int(state["actor.weight"].shape[0])}
        if not spec.get("popart") and "value_outputs" not in spec:  # older files: one plain output per task
            spec["value_outputs"] = int(state["critic.weight"].shape[0])
        network = IMPALANet.from_spec(spec)
        network.load_state_dict(state)
    except (KeyError, RuntimeError, TypeError, ValueError):
        raise UserError(
            f"{source} holds weights of another network (keys {', '.join(list(state)[:3])}, ...), "
            "not an IMPALA actor-critic; point to a checkpoint written by train_agent"
        ) from None
    return network
