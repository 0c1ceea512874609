"""Checkpoints of the published trained-agent collections (DQN-family Nature CNNs saved with nothing but gzip and
torch.save({"estimator_state": ...})): recognised by their weights' shapes under any names, loaded as a QNetwork
with the same outputs, evaluated epsilon-greedily, probed like our own, brought in with `dvc import-url`; other
shapes refused in one line; our actor-critic files still load as ActorCritic."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch import nn

from atarirep import episodes
from atarirep.agents import checkpoints, evaluation, probing, saliency, vector_env
from atarirep.agents.network import ActorCritic, QNetwork
from atarirep.agents.vector_env import AgentEnvs
from atarirep.plumbing.errors import UserError
from tests.conftest import PROBE_SETTINGS

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # dvc of this environment
STEP = 50_000_000

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def nature_dqn(outputs: int, seed: int = 0) -> nn.Sequential:
    """The published DQN as one nn.Sequential: weights "0.weight", "2.weight", "4.weight", "7.weight", "9.weight"."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(4, 32, 8, stride=4),
        nn.ReLU(),
        nn.Conv2d(32, 64, 4, stride=2),
        nn.ReLU(),
        nn.Conv2d(64, 64, 3, stride=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3136, 512),
        nn.ReLU(),
        nn.Linear(512, outputs),
    )


# The Sequential's layer index -> its name in a published-style file.
RENAMINGS = {
    "sequential": {i: i for i in ("0", "2", "4", "7", "9")},
    # floringogianu/atari-agents' AtariNet: self.__features (the convs) and self.__head (Linear, ReLU, Linear)
    "atari_net": {
        "0": "_AtariNet__features.0",
        "2": "_AtariNet__features.2",
        "4": "_AtariNet__features.4",
        "7": "_AtariNet__head.0",
        "9": "_AtariNet__head.2",
    },
    "features_fc": {"0": "features.0", "2": "features.2", "4": "features.4", "7": "fc.0", "9": "fc.2"},
    "data_parallel": {i: f"module.head.{i}" for i in ("0", "2", "4", "7", "9")},
}


def renamed(state: dict, renaming: dict) -> OrderedDict:
    out = OrderedDict()
    for key, tensor in state.items():
        layer, kind = key.split(".")
        out[f"{renaming[layer]}.{kind}"] = tensor
    return out


def write_published(path: Path, state: dict) -> Path:
    """A file the way the collections write it: gzip of torch.save({"estimator_state": state_dict}), no other key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({"estimator_state": state}, buffer)
    path.write_bytes(gzip.compress(buffer.getvalue()))
    return path


def stacks(n: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 4, 84, 84), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def c51_reference(dqn: nn.Sequential, obs: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """The collections' C51 Q-values: softmax over atoms per action, the mean under the support."""
    logits = dqn(obs.float() / 255).view(len(obs), -1, len(support))
    return (torch.softmax(logits, dim=2) * support).sum(2)


# -- loading --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("naming", list(RENAMINGS))
def test_a_published_dqn_loads_as_a_qnetwork_with_the_same_weights_and_outputs(tmp_path, naming):
    dqn = nature_dqn(4).eval()
    path = write_published(
        tmp_path / "DQN_modern/Breakout/3" / checkpoints.file_name(STEP), renamed(dqn.state_dict(), RENAMINGS[naming])
    )
    network, meta = checkpoints.load_network(path)
    assert type(network) is QNetwork and network.acts_greedily and not ActorCritic.acts_greedily
    assert network.num_actions == 4 and network.atoms == 1 and not network.training
    # The layout says what the file does not.
    assert meta == {
        "step": STEP,
        "frames": 4 * STEP,
        "algo": "DQN",
        "protocol": "modern",
        "game": "Breakout",
        "seed": 3,
        "architecture": {"name": "nature_dqn", "num_actions": 4},
    }
    ours = network.state_dict()
    for layer, name in zip(("0", "2", "4", "7"), checkpoints.ENCODER_LAYERS, strict=True):
        for kind in ("weight", "bias"):
            torch.testing.assert_close(ours[f"{name}.{kind}"], dqn.state_dict()[f"{layer}.{kind}"], rtol=0, atol=0)
    torch.testing.assert_close(ours["q.weight"], dqn[9].weight, rtol=0, atol=0)
    obs = stacks()
    with torch.no_grad():
        q, value = network(obs)
        expected = dqn(obs.float() / 255)  # the published nets divide uint8 frames by 255
        torch.testing.assert_close(q, expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(value, expected.max(1).values, rtol=1e-4, atol=1e-5)
        # The probed features are the 512-d layer after its ReLU, as in the published net.
        torch.testing.assert_close(network.features(obs), dqn[:9](obs.float() / 255), rtol=1e-4, atol=1e-5)


def test_a_c51_head_loads_with_the_files_support_or_a_given_atom_count(tmp_path):
    dqn = nature_dqn(6 * 51).eval()
    support = torch.linspace(-10, 10, 51)
    # The collections' C51 file: the support parameter first, then the features and the head.
    state = OrderedDict([("_AtariNet__support", support), *renamed(dqn.state_dict(), RENAMINGS["atari_net"]).items()])
    path = write_published(tmp_path / "C51_classic/Pong/0/model_1000.gz", state)
    network, meta = checkpoints.load_network(path)
    assert (type(network), network.num_actions, network.atoms) == (QNetwork, 6, 51)
    assert meta["architecture"] == {"name": "nature_dqn", "num_actions": 6, "atoms": 51}
    obs = stacks(3)
    with torch.no_grad():
        torch.testing.assert_close(network(obs)[0], c51_reference(dqn, obs, support), rtol=1e-4, atol=1e-5)

    # Without a support in the file, 306 outputs are refused, not taken for 306 actions, unless atoms is given.
    bare = write_published(tmp_path / "C51_classic/Pong/0/model_2000.gz", dqn.state_dict())
    with pytest.raises(UserError) as err:
        checkpoints.load_network(bare)
    message = str(err.value)
    assert "\n" not in message and "306 outputs" in message and "atoms=51" in message
    network, _ = checkpoints.load_network(bare, atoms=51)  # support: C51's linspace(-10, 10, 51)
    with torch.no_grad():
        torch.testing.assert_close(network(obs)[0], c51_reference(dqn, obs, support), rtol=1e-4, atol=1e-5)
    for atoms, words in ((50, "not a multiple of 50 atoms"), (3, "= 102 actions x 3 atoms")):
        with pytest.raises(UserError, match=words):
            checkpoints.load_network(bare, atoms=atoms)
    with pytest.raises(UserError, match="support of 51 atoms but atoms=3 was given"):
        checkpoints.load_network(path, atoms=3)

    # A QNetwork we save ourselves loads back the same, C51 included.
    again = tmp_path / "mine/model_7.gz"
    checkpoints.save(again, network, algo="C51", protocol="classic", game="Pong", seed=0, step=7, frames=28)
    loaded, meta = checkpoints.load_network(again)
    assert (loaded.atoms, meta["frames"], meta["architecture"]["atoms"]) == (51, 28, 51)
    with torch.no_grad():
        torch.testing.assert_close(loaded(obs)[0], network(obs)[0], rtol=0, atol=0)


def _dueling_shared() -> OrderedDict:
    """Shared 512 layer, then value 1x512 and advantage Ax512."""
    state = OrderedDict((k, v) for k, v in nature_dqn(4).state_dict().items() if not k.startswith("9."))
    state.update(
        {
            "value.weight": torch.zeros(1, 512),
            "value.bias": torch.zeros(1),
            "advantage.weight": torch.zeros(4, 512),
            "advantage.bias": torch.zeros(4),
        }
    )
    return state


def _dueling_streams() -> OrderedDict:
    """Separate value and advantage streams, each Linear(3136 -> 512) then its output."""
    convs = OrderedDict((k, v) for k, v in nature_dqn(4).state_dict().items() if k[0] in "024")
    for stream, rows in (("value", 1), ("advantage", 4)):
        convs.update(
            {
                f"{stream}.0.weight": torch.zeros(512, 3136),
                f"{stream}.0.bias": torch.zeros(512),
                f"{stream}.2.weight": torch.zeros(rows, 512),
                f"{stream}.2.bias": torch.zeros(rows),
            }
        )
    return convs


def _noisy() -> OrderedDict:
    state = OrderedDict((k, v) for k, v in nature_dqn(4).state_dict().items() if k[0] in "024")
    state.update(
        {
            "fc.weight_mu": torch.zeros(512, 3136),
            "fc.weight_sigma": torch.zeros(512, 3136),
            "out.weight_mu": torch.zeros(4, 512),
            "out.weight_sigma": torch.zeros(4, 512),
        }
    )
    return state


def _impala() -> OrderedDict:
    return OrderedDict(
        [
            ("conv.weight", torch.zeros(16, 4, 3, 3)),
            ("conv.bias", torch.zeros(16)),
            ("fc.weight", torch.zeros(256, 2048)),
            ("fc.bias", torch.zeros(256)),
        ]
    )


@pytest.mark.parametrize(
    "state, words",
    [
        (
            _dueling_shared,
            "looks like a dueling Q-network (weight shapes 32x4x8x8, 64x32x4x4, 64x64x3x3, 512x3136, 1x512, 4x512",
        ),
        (
            _dueling_streams,
            "looks like a dueling Q-network (weight shapes 32x4x8x8, 64x32x4x4, 64x64x3x3, 512x3136, "
            "1x512, 512x3136, 4x512",
        ),
        (_noisy, "weights of another network (weight shapes 32x4x8x8, 64x32x4x4, 64x64x3x3)"),
        (_impala, "weights of another network (weight shapes 16x4x3x3, 256x2048)"),
        (
            lambda: OrderedDict([*nature_dqn(4).state_dict().items(), ("bn.running_mean", torch.zeros(512))]),
            "holds tensors beyond the Nature CNN and its head (bn.running_mean",
        ),
        (
            lambda: OrderedDict((k, v) for k, v in nature_dqn(4).state_dict().items() if k != "7.bias"),
            "has layers without biases (7.bias missing",
        ),
    ],
)
def test_other_shapes_are_refused_in_one_line_naming_the_shapes_and_what_is_supported(tmp_path, state, words):
    path = write_published(tmp_path / "DQN_modern/Breakout/0/model_1.gz", state())
    with pytest.raises(UserError) as err:
        checkpoints.load_network(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"checkpoint {path} ")
    assert words in message, message
    assert message.endswith(checkpoints.supported())
    assert "supported: our actor-critic" in message and "conv 32x4x8x8" in message and "C51" in message


def test_our_actor_critic_files_still_load_as_actor_critics(tmp_path):
    network = ActorCritic(4).eval()
    ours = tmp_path / "model_8.gz"
    checkpoints.save(ours, network, algo="PPO", protocol="classic", game="Breakout", seed=0, step=8, frames=32)
    published = write_published(tmp_path / "PPO_classic/Breakout/2/model_8.gz", network.state_dict())
    # CleanRL's PPO agent: network.{0,2,4,7}, actor, critic.
    cleanrl = OrderedDict(
        (key.replace("encoder.layers.", "network."), value) for key, value in network.state_dict().items()
    )
    cleanrl_path = write_published(tmp_path / "cleanrl/model_8.gz", cleanrl)
    obs = stacks(2)
    for path, seed in ((ours, 0), (published, 2), (cleanrl_path, None)):
        loaded, meta = checkpoints.load_network(path)
        assert type(loaded) is ActorCritic and not loaded.acts_greedily
        assert (meta["step"], meta["frames"], meta.get("seed")) == (8, 32, seed)
        with torch.no_grad():
            for mine, theirs in zip(loaded(obs), network(obs), strict=True):
                torch.testing.assert_close(mine, theirs, rtol=0, atol=0)
    assert checkpoints.load_network(ours)[1]["architecture"] == {"name": "nature_actor_critic", "num_actions": 4}


def test_the_layout_gives_meta_only_where_it_is_the_published_one(tmp_path):
    assert checkpoints.layout_meta(tmp_path / "M-DQN_modern/MsPacman/12/model_5.gz") == {
        "algo": "M-DQN",
        "protocol": "modern",
        "game": "MsPacman",
        "seed": 12,
    }
    for where in (
        "sampled/Breakout/0/model_5.gz",
        "DQN_modern/Breakout/x/model_5.gz",
        "DQN_sticky/Breakout/0/model_5.gz",
        "DQN_modern/Breakout/0/weights.gz",
    ):
        assert checkpoints.layout_meta(tmp_path / where) == {}, where


# -- evaluation and probing ----------------------------------------------------------------------------
class Recorder(AgentEnvs):
    """AgentEnvs that keeps every observation it returns and every action it is given."""

    last = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.observations, self.actions = [], []
        Recorder.last = self

    def reset(self, seed):
        obs = super().reset(seed)
        self.observations.append(obs.copy())
        return obs

    def step(self, actions):
        self.actions.append(np.array(actions))
        step = super().step(actions)
        self.observations.append(step.obs.copy())
        return step


def test_a_published_dqn_plays_greedily(tmp_path, monkeypatch):
    path = write_published(
        tmp_path / "DQN_modern/Breakout/0/model_100.gz",
        renamed(nature_dqn(4, seed=1).state_dict(), RENAMINGS["atari_net"]),
    )
    network, _ = checkpoints.load_network(path)
    monkeypatch.setattr(vector_env, "AgentEnvs", Recorder)  # acting.agent_envs builds them
    returns = evaluation.evaluate(network, "Breakout", "modern", episodes=2, epsilon=0.0, max_steps=25, seed=0)
    envs = Recorder.last
    assert len(returns) == 2 and len(envs.actions) == 25
    with torch.no_grad():
        for obs, actions in zip(envs.observations[:-1], envs.actions, strict=True):  # each action is the argmax of Q
            np.testing.assert_array_equal(actions, network(torch.from_numpy(obs))[0].argmax(1).numpy())
    again = evaluation.evaluate(network, "Breakout", "modern", episodes=2, epsilon=0.0, max_steps=25, seed=0)
    assert again == returns and [a.tolist() for a in Recorder.last.actions] == [a.tolist() for a in envs.actions]
    # epsilon: the protocol's random actions replace some greedy ones
    evaluation.evaluate(network, "Breakout", "modern", episodes=2, epsilon=0.5, max_steps=25, seed=0)
    noisy = Recorder.last
    with torch.no_grad():
        greedy = [network(torch.from_numpy(obs))[0].argmax(1).numpy() for obs in noisy.observations[:-1]]
    assert (np.concatenate(noisy.actions) != np.concatenate(greedy)).any()


def test_a_published_dqn_is_probed_by_the_stage_like_our_checkpoints(breakout_probe_dir, tmp_path):
    """probe_checkpoints on a sampled root in the published layout: frames from the step, the game from the path."""
    root = tmp_path / "sampled/DQN_modern/Breakout"
    path = write_published(root / "0" / "model_250.gz", nature_dqn(4, seed=2).state_dict())
    probe = {
        "baselines": ["majority"],
        **{k: v for k, v in PROBE_SETTINGS.items() if k not in ("seed", "device")},
        "fast": True,
        "supervised_per_variable": False,
        "supervised_epochs": 1,
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"seed": 0, "device": "cpu", "probe": probe}))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "stages/probe_checkpoints.py"),
            "Breakout",
            str(root),
            str(breakout_probe_dir),
            "out",
            "probes/Breakout/rl_agent",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(tmp_path / "out/scores.csv", keep_default_na=False)
    assert set(zip(table["seed"], table["step"], table["frames"], strict=True)) == {(0, 250, 1000)}
    assert len(table) == len(episodes.load(breakout_probe_dir).variables)
    assert json.loads((tmp_path / "out/metrics.json").read_text())["rl_agent"]["step"] == 250
    # The features probed are the published net's 512-d layer of each 84x84x4 stack.
    network, _ = checkpoints.load_network(path)
    split = episodes.load(breakout_probe_dir).split("val")
    view = probing.agent_view(split)
    features = probing.agent_features(network, view)
    with torch.no_grad():
        expected = nature_dqn(4, seed=2)[:9](torch.from_numpy(view.stacks(0, len(view))).float() / 255)
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-5)


class FloatDQN(nn.Module):
    """The published net on float stacks in [0, 1]: (Q-values, max Q), what saliency calls a network on."""

    def __init__(self, dqn: nn.Sequential):
        super().__init__()
        self.dqn, self.num_actions = dqn, dqn[-1].out_features

    def forward(self, x):
        q = self.dqn(x)
        return q, q.max(1).values


def test_saliency_maps_of_a_published_dqn_are_those_of_its_own_net(tmp_path):
    dqn = nature_dqn(4, seed=3).eval()
    network, _ = checkpoints.load_network(
        write_published(tmp_path / "DQN_modern/Breakout/0/model_9.gz", dqn.state_dict())
    )
    obs = stacks(1, seed=4)
    policy, value = saliency.saliency_maps(network, obs, radius=2, stride=6, batch_size=64)
    expected_policy, expected_value = saliency.saliency_maps(FloatDQN(dqn), obs, radius=2, stride=6, batch_size=64)
    assert policy.shape == value.shape == (1, 84, 84) and policy.max() > 0 and value.max() > 0
    np.testing.assert_allclose(policy, expected_policy, rtol=1e-3, atol=1e-4 * expected_policy.max())
    np.testing.assert_allclose(value, expected_value, rtol=1e-3, atol=1e-4 * expected_value.max())


# -- dvc import-url ------------------------------------------------------------------------------------
def _run(args: list[str], cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, f"{args}:\n{result.stdout}\n{result.stderr}"
    return result


def test_dvc_import_url_of_a_published_run_then_evaluate(tmp_path):
    """`mkdir -p data/checkpoints_sampled/DQN_modern/Breakout` and
    `dvc import-url <collection>/DQN_modern/Breakout/0 data/checkpoints_sampled/DQN_modern/Breakout/0`, then
    evaluate() one imported checkpoint and the evaluate_agent stage on the imported root."""
    collection = tmp_path / "collection"
    for step, seed in ((1_000_000, 3), (STEP, 4)):
        write_published(
            collection / "DQN_modern/Breakout/0" / checkpoints.file_name(step),
            renamed(nature_dqn(4, seed).state_dict(), RENAMINGS["atari_net"]),
        )
    repo = tmp_path / "repo"
    repo.mkdir()
    _run(["git", "init", "-q"], repo)
    _run(["dvc", "init", "-q"], repo)
    _run(["dvc", "config", "core.analytics", "false"], repo)
    target = "data/checkpoints_sampled/DQN_modern/Breakout/0"
    (repo / target).parent.mkdir(parents=True)  # dvc import-url wants the target's folder to exist
    _run(["dvc", "import-url", str(collection / "DQN_modern/Breakout/0"), target], repo)
    assert (repo / f"{target}.dvc").is_file()
    assert sorted(p.name for p in (repo / target).iterdir()) == ["model_1000000.gz", f"model_{STEP}.gz"]

    network, meta = checkpoints.load_network(repo / target / f"model_{STEP}.gz")
    assert type(network) is QNetwork
    assert (meta["game"], meta["seed"], meta["algo"], meta["protocol"], meta["step"], meta["frames"]) == (
        "Breakout",
        0,
        "DQN",
        "modern",
        STEP,
        4 * STEP,
    )
    returns = evaluation.evaluate(
        network, meta["game"], meta["protocol"], episodes=2, epsilon=0.001, max_steps=20, seed=0
    )
    assert len(returns) == 2 and all(np.isfinite(returns))

    # The stage takes the imported folder's parent as its sampled root (the .dvc file beside the run is skipped).
    params = {
        "seed": 0,
        "device": "cpu",
        "evaluate_agent": {"protocols": ["modern"], "episodes": 2, "epsilon": 0.001, "max_steps": 20},
    }
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    _run(
        [
            sys.executable,
            str(REPO / "stages/evaluate_agent.py"),
            "Breakout",
            "data/checkpoints_sampled/DQN_modern/Breakout",
            "data/evaluations/Breakout",
        ],
        repo,
    )
    rows = pd.read_csv(repo / "data/evaluations/Breakout/returns.csv")
    assert sorted(set(zip(rows["step"], rows["frames"], strict=True))) == [(1_000_000, 4_000_000), (STEP, 4 * STEP)]
    assert len(rows) == 2 * 2 and set(rows["seed"]) == {0} and set(rows["protocol"]) == {"modern"}
    metrics = json.loads((repo / "data/evaluations/Breakout/metrics.json").read_text())
    assert metrics["modern"]["step"] == STEP


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
