"""IMPALA (atarirep.agents.impala): short single- and multi-task runs with real actor processes write
checkpoints in the published format that load back (PopArt statistics and one value output per game in a
multi-task PopArt run's, one shared output in the clipped ablation's), a dead actor stops the run within
seconds with a UserError naming it and the run resumes from its last checkpoint, and games whose action
counts differ are refused. The heads read the last action and reward, which an actor records in its
unrolls (as monobeast), and PopArt's actors see unclipped rewards. Tiny settings: 2 actors,
unrolls of 8, 2 unrolls a learner step; ~25 s in all on 2 shared cores, ~5 s of it the actors' forkserver
starting once (it imports torch and this package; actors then fork from it in well under a second)."""

import dataclasses
import gzip
import io
import re
import time
from pathlib import Path

import pytest
import torch

from atarirep.agents import acting, checkpoints, evaluation, impala, saliency
from atarirep.agents.acting import play_outputs
from atarirep.agents.network import ActorCritic, IMPALANet, OneGame, network_from
from atarirep.plumbing.errors import UserError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = impala.IMPALAConfig(total_steps=192, unroll_length=8, batch_size=2, num_actors=2, checkpoint_every=96)


def _payload(path):
    with gzip.open(path, "rb") as f:
        return torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)


@pytest.mark.e2e
def test_a_single_game_run_writes_checkpoints_that_load_as_the_ppo_network(tmp_path):
    out, logs = tmp_path / "IMPALA_classic/Breakout/0", tmp_path / "logs"
    plain = dataclasses.replace(TINY, last_action_reward=False)  # the plain heads: ActorCritic's state_dict
    impala.train("Breakout", 0, out, logs, plain, device="cpu", progress=False)

    assert [step for step, _ in checkpoints.list_run(out)] == [96, 192]
    assert not (tmp_path / "IMPALA_classic/Breakout/.0.partial").exists()
    payload = _payload(out / "model_192.gz")
    assert payload["algo"] == "IMPALA" and payload["game"] == "Breakout" and payload["step"] == 192
    assert payload["frames"] == 4 * 192 and payload["architecture"]["name"] == "nature_actor_critic"
    # The Nature CNN on one game is ActorCritic's state_dict: the PPO loader (evaluate_agent, probing) takes it.
    ppo_net, _ = checkpoints.load_network(out / "model_192.gz")
    net = network_from(payload["estimator_state"], payload["architecture"]).eval()  # the same weights as IMPALANet
    assert isinstance(ppo_net, ActorCritic) and payload["games"] == ["Breakout"]
    assert ppo_net.acts_greedily and net.acts_greedily  # evaluated greedily, as torchbeast tests
    obs = torch.randint(0, 256, (3, 4, 84, 84), dtype=torch.uint8)
    for mine, theirs in zip(net(obs), ppo_net(obs), strict=True):
        torch.testing.assert_close(mine, theirs)
    # Trained: the weights moved from any fresh network's.
    first = _payload(out / "model_96.gz")["estimator_state"]
    assert not torch.equal(first["actor.weight"], payload["estimator_state"]["actor.weight"])
    assert (logs / "metrics.json").is_file()
    assert (logs / "plots/metrics/losses/baseline.tsv").is_file()


@pytest.mark.e2e
def test_a_multi_task_run_keeps_each_games_popart_statistics_and_value_output(tmp_path):
    config = impala.IMPALAConfig(
        total_steps=192, unroll_length=8, batch_size=2, num_actors=2, checkpoint_every=96, popart_beta=0.1
    )  # large: the statistics visibly move in 12 learner steps
    out, logs = tmp_path / "IMPALA_classic/Pong+SpaceInvaders/0", tmp_path / "logs"
    impala.train(["Pong", "SpaceInvaders"], 0, out, logs, config, device="cpu", progress=False)

    payload = _payload(out / "model_192.gz")
    state = payload["estimator_state"]
    assert payload["games"] == ["Pong", "SpaceInvaders"] and payload["game"] == "Pong+SpaceInvaders"
    assert payload["architecture"] == {
        "name": "impala_actor_critic",
        "num_actions": 6,
        "encoder": "nature",
        "num_tasks": 2,
        "popart": True,
        "full_action_space": False,
        "last_action_reward": True,
        "value_outputs": 2,
        "acts_greedily": True,
    }
    # One policy for both games, one value output per game; both read features + last reward + one-hot action.
    assert state["actor.weight"].shape == (6, 512 + 1 + 6)
    assert state["critic.linear.weight"].shape == (2, 512 + 1 + 6)
    for key in ("critic.mu", "critic.nu", "critic.sigma"):
        assert state[key].shape == (2,)
    assert not torch.equal(state["critic.sigma"], torch.ones(2))  # updated after every learner step
    assert not torch.equal(state["critic.mu"], _payload(out / "model_96.gz")["estimator_state"]["critic.mu"])
    net, _ = checkpoints.load_network(out / "model_192.gz")
    torch.testing.assert_close(net.critic.sigma, state["critic.sigma"])
    obs = torch.randint(0, 256, (2, 4, 84, 84), dtype=torch.uint8)
    logits, values = net(obs)
    assert logits.shape == (2, 6) and values.shape == (2, 2)  # both games' values, in the reward's scale
    torch.testing.assert_close(net(obs, torch.tensor([1, 0]))[1], values[[0, 1], [1, 0]])
    for game in ("Pong", "SpaceInvaders"):
        assert (logs / f"plots/metrics/popart/sigma/{game}.tsv").is_file()


@pytest.mark.e2e
def test_the_clipped_multi_task_ablation_has_one_shared_value_output(tmp_path):
    config = impala.multitask_config(
        {"total_steps": 32, "unroll_length": 8, "batch_size": 2, "checkpoint_every": 32},
        {"num_actors": 2},
        algo="IMPALA",
        protocol="classic",
        games=["Pong", "SpaceInvaders"],
        full_action_space=False,
    )
    assert not config.uses_popart(2) and config.clips_rewards(2)
    out = tmp_path / "IMPALA_classic/multitask/0"
    impala.train(["Pong", "SpaceInvaders"], 0, out, tmp_path / "logs", config, device="cpu", progress=False)
    payload = _payload(out / "model_32.gz")
    assert payload["architecture"]["value_outputs"] == 1 and not payload["architecture"]["popart"]
    assert payload["estimator_state"]["critic.weight"].shape == (1, 512 + 1 + 6)
    obs = torch.randint(0, 256, (2, 4, 84, 84), dtype=torch.uint8)
    views = [checkpoints.load_for_game(out / "model_32.gz", game)[0] for game in ("Pong", "SpaceInvaders")]
    torch.testing.assert_close(views[0](obs)[1], views[1](obs)[1])  # the same value for every game


def test_the_heads_read_the_last_action_and_the_clipped_last_reward():
    torch.manual_seed(0)
    net = IMPALANet(6, last_action_reward=True).eval()
    obs = torch.randint(0, 256, (2, 4, 84, 84), dtype=torch.uint8)
    action, reward = torch.tensor([1, 4]), torch.tensor([0.0, 1.0])
    with torch.no_grad():
        logits, value = net(obs, last_action=action, last_reward=reward)
        for changed in (
            {"last_action": torch.tensor([2, 4]), "last_reward": reward},
            {"last_action": action, "last_reward": torch.tensor([-1.0, 1.0])},
        ):
            other_logits, other_value = net(obs, **changed)
            assert not torch.allclose(other_logits[0], logits[0]) and not torch.allclose(other_value[0], value[0])
            torch.testing.assert_close(other_logits[1], logits[1])  # the other row's inputs did not change
        # The reward is clamped to [-1, 1] (monobeast's AtariNet): 5 reads as 1.
        torch.testing.assert_close(net(obs, last_action=action, last_reward=torch.tensor([0.0, 5.0]))[0], logits)
        # Absent: zeros, an episode's start. The features (what probing reads) are the torso's alone.
        torch.testing.assert_close(
            net(obs)[0], net(obs, last_action=torch.zeros(2, dtype=torch.int64), last_reward=torch.zeros(2))[0]
        )
        assert net.features(obs).shape == (2, 512)
    assert net.actor.in_features == 512 + 1 + 6 and net.architecture == "impala_actor_critic"


class _Queue:
    """A stand-in for the actor's queues in this process: hands out `items` in turn, records what is put."""

    def __init__(self, items=()):
        self.items, self.put_items = list(items), []

    def get(self, timeout=None):
        return self.items.pop(0)

    def put(self, item):
        self.put_items.append(item)


def _unrolls(game: str, config: impala.IMPALAConfig, num_games: int, unrolls: int, length: int):
    """The buffers one actor (run in this process) fills playing `game`: `unrolls` unrolls of `length` steps."""
    config = dataclasses.replace(config, unroll_length=length, num_actors=1, batch_size=1, num_buffers=unrolls)
    torch.manual_seed(0)
    network = IMPALANet(6, num_games, popart=config.uses_popart(num_games), last_action_reward=True)
    buffers = impala.make_buffers(config, 6)
    free, full = _Queue([*range(unrolls), None]), _Queue()
    impala.act(
        0,
        game,
        0,
        config,
        config.training_protocol(num_games),
        7,
        network.spec,
        network.state_dict(),
        buffers,
        free,
        full,
        _Queue(),
        learner_pid=0,
    )
    assert full.put_items == list(range(unrolls))
    return {key: value[:unrolls] for key, value in buffers.items()}


def _check_last_inputs(b):
    """last_action/last_reward[t + 1] are step t's action and clamped reward, across episode ends too (as
    monobeast's Environment.step returns them with the next episode's first frame); zeros before the first."""
    assert b["last_action"][0, 0] == 0 and b["last_reward"][0, 0] == 0
    torch.testing.assert_close(b["last_action"][:, 1:], b["actions"])
    torch.testing.assert_close(b["last_reward"][:, 1:], b["rewards"].clamp(-1, 1))
    torch.testing.assert_close(b["last_action"][1:, 0], b["actions"][:-1, -1])  # an unroll goes on from the last
    torch.testing.assert_close(b["last_reward"][1:, 0], b["rewards"][:-1, -1].clamp(-1, 1))
    ends = b["dones"].nonzero()
    assert len(ends)  # episodes ended (lives lost) in the unrolls
    for i, t in ends.tolist():  # the next stack is an episode's first
        assert b["last_action"][i, t + 1] == b["actions"][i, t]


def test_an_actor_records_the_last_action_and_reward_and_popart_actors_see_unclipped_rewards():
    popart = impala.multitask_config(
        {}, {}, algo="IMPALA_PopArt", protocol="classic", games=["Pong", "SpaceInvaders"], full_action_space=False
    )
    clipped = impala.multitask_config(
        {}, {}, algo="IMPALA", protocol="classic", games=["Pong", "SpaceInvaders"], full_action_space=False
    )
    assert not popart.training_protocol(2).clip_rewards and clipped.training_protocol(2).clip_rewards
    raw = _unrolls("SpaceInvaders", popart, 2, unrolls=3, length=150)
    _check_last_inputs(raw)
    assert raw["rewards"].max() > 1  # SpaceInvaders' 5-30 points, unclipped
    assert raw["last_reward"].abs().max() <= 1
    sign = _unrolls("SpaceInvaders", clipped, 2, unrolls=3, length=150)
    _check_last_inputs(sign)
    assert set(sign["rewards"].unique().tolist()) <= {-1.0, 0.0, 1.0} and sign["rewards"].max() == 1


def test_an_impala_checkpoint_is_evaluated_greedily_with_its_last_action_and_reward(tmp_path, monkeypatch):
    torch.manual_seed(0)
    network = IMPALANet(4, last_action_reward=True, acts_greedily=True)
    path = tmp_path / "model_8.gz"
    checkpoints.save(path, network, algo="IMPALA", protocol="classic", games=["Breakout"], seed=0, step=8, frames=32)
    loaded, _ = checkpoints.load_for_game(path, "Breakout")
    assert isinstance(loaded, IMPALANet) and loaded.acts_greedily and loaded.last_action_reward
    seen = []

    def recording(net, obs, last_action, last_reward):
        head, value = play_outputs(net, obs, last_action, last_reward)
        seen.append((head, last_action.clone()))
        return head, value

    monkeypatch.setattr(acting, "play_outputs", recording)
    evaluation.evaluate(loaded, "Breakout", "classic", episodes=2, epsilon=0.0, max_steps=30, seed=0)
    assert len(seen) == 30 and (seen[0][1] == 0).all()  # zeros at the games' start
    for (head, _), (_, next_last) in zip(seen, seen[1:], strict=False):
        torch.testing.assert_close(next_last, head.argmax(1))  # the argmax played, then fed back


@pytest.mark.e2e
def test_a_dead_actor_stops_the_run_within_seconds_and_the_run_resumes(tmp_path, capsys):
    config = impala.IMPALAConfig(total_steps=256, unroll_length=8, batch_size=2, num_actors=2, checkpoint_every=32)
    out, logs = tmp_path / "IMPALA_classic/Breakout/0", tmp_path / "logs"
    with pytest.raises(
        UserError,
        match=r"IMPALA actor 1 \(Breakout\) died with exit code 1: RuntimeError: "
        r"injected fault after 10 unrolls",
    ) as err:
        impala.train("Breakout", 0, out, logs, config, device="cpu", progress=False, _fault=(1, 10, "raise"))
    died = float(re.search(r"at time ([\d.]+)", str(err.value)).group(1))
    assert time.time() - died < 3.0  # noticed, reported, the other actor stopped
    assert not out.exists() and not logs.exists()  # nothing half-written
    work = tmp_path / "IMPALA_classic/Breakout/.0.partial"
    saved = sorted(int(p.name[6:-3]) for p in (work / "checkpoints").iterdir())
    assert saved and saved == list(range(32, saved[-1] + 1, 32))

    capsys.readouterr()
    impala.train("Breakout", 0, out, logs, config, device="cpu", progress=False)
    assert f"after learner step {saved[-1] // 16} ({saved[-1]} steps)" in capsys.readouterr().out
    assert [step for step, _ in checkpoints.list_run(out)] == list(range(32, 257, 32))
    assert not work.exists()


@pytest.mark.e2e
def test_a_killed_actor_is_named_with_its_signal(tmp_path):
    config = impala.IMPALAConfig(total_steps=10**6, unroll_length=8, batch_size=2, num_actors=2, checkpoint_every=32)
    started = time.time()
    with pytest.raises(UserError, match=r"IMPALA actor 1 \(Breakout\) died with exit code -9: killed by signal 9"):
        impala.train(
            "Breakout",
            0,
            tmp_path / "out",
            tmp_path / "logs",
            config,
            device="cpu",
            progress=False,
            _fault=(1, 2, "kill"),
        )
    assert time.time() - started < 60  # not the 10^6 steps the run was set for
    assert not (tmp_path / "out").exists()


def test_games_with_different_action_counts_are_refused_before_any_actor_starts(tmp_path):
    with pytest.raises(UserError, match="same number of actions.*Breakout 4, Pong 6"):
        impala.train(["Breakout", "Pong"], 0, tmp_path / "out", tmp_path / "logs", TINY, device="cpu")
    with pytest.raises(UserError, match="2 actors for 3 games"):
        impala.train(
            ["Pong", "SpaceInvaders", "DemonAttack"], 0, tmp_path / "out", tmp_path / "logs", TINY, device="cpu"
        )
    assert not (tmp_path / "out").exists()


def _multi_task_checkpoint(path, games, num_actions=6, full_action_space=False) -> IMPALANet:
    torch.manual_seed(0)
    network = IMPALANet(num_actions, len(games), popart=True, full_action_space=full_action_space)
    with torch.no_grad():  # statistics far from their start, so that each game's value is its own
        network.critic.mu.copy_(torch.linspace(-3.0, 3.0, len(games)))
        network.critic.sigma.copy_(torch.linspace(2.0, 5.0, len(games)))
        network.critic.nu.copy_(network.critic.sigma**2 + network.critic.mu**2)
    checkpoints.save(path, network, algo="IMPALA_PopArt", protocol="classic", games=games, seed=0, step=8, frames=32)
    return network.eval()


def test_a_multi_task_checkpoint_plays_and_is_shown_per_game_with_that_games_value(tmp_path):
    path = tmp_path / "IMPALA_PopArt_classic/multitask/0/model_8.gz"
    network = _multi_task_checkpoint(path, ["Pong", "SpaceInvaders"])
    obs = torch.randint(0, 256, (3, 4, 84, 84), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    logits, values = network(obs)
    views = []
    for task, game in enumerate(["Pong", "SpaceInvaders"]):
        view, meta = checkpoints.load_for_game(path, game)
        assert isinstance(view, OneGame) and meta["games"] == ["Pong", "SpaceInvaders"]
        view_logits, view_values = view(obs)
        torch.testing.assert_close(view_logits, logits)  # one policy for every game
        torch.testing.assert_close(view_values, values[:, task])  # this game's value, in its reward's scale
        views.append(view)
    with pytest.raises(UserError, match=r"trained on Pong\+SpaceInvaders, not Breakout; point to"):
        checkpoints.load_for_game(path, "Breakout")
    # Evaluation plays each game with the shared policy.
    returns = evaluation.evaluate(views[1], "SpaceInvaders", "classic", episodes=1, epsilon=0.0, max_steps=40, seed=0)
    assert len(returns) == 1 and returns[0] >= 0
    # Saliency: the same policy map for both games, each value map from its own head; a point's value score
    # is 0.5 (V_game(perturbed) - V_game(stack))^2, the whole perturbed stack through the network.
    stacks = obs[:1].numpy()
    (p0, v0), (p1, v1) = (saliency.saliency_grids(view, stacks, stride=12) for view in views)
    torch.testing.assert_close(p0, p1)
    assert not torch.allclose(v0, v1)
    images = obs[:1].float() / 255
    masks = torch.from_numpy(saliency.get_mask((36, 48), (84, 84), 2)).float()[None]  # grid point (3, 4)
    perturbed = saliency.perturb(images, saliency.gaussian_blur(images), masks)
    with torch.no_grad():
        expected = 0.5 * (network(perturbed)[1][0, 1] - values[0, 1]) ** 2
    torch.testing.assert_close(v1[0, 3, 4], expected, rtol=1e-4, atol=1e-6)


def test_full_action_space_lets_games_of_other_action_sets_share_one_network(tmp_path):
    config = dataclasses.replace(TINY, full_action_space=True)
    assert impala.check_games(["Breakout", "Pong"], config) == (["Breakout", "Pong"], 18)
    path = tmp_path / "model_8.gz"
    _multi_task_checkpoint(path, ["Breakout", "Pong"], num_actions=18, full_action_space=True)
    view, meta = checkpoints.load_for_game(path, "Breakout")
    assert view.num_actions == 18 and view.full_action_space and meta["architecture"]["full_action_space"]
    returns = evaluation.evaluate(view, "Breakout", "classic", episodes=1, epsilon=0.0, max_steps=40, seed=0)
    assert len(returns) == 1  # Breakout played with all 18 actions
    with pytest.raises(UserError, match="or set multitask.full_action_space: true"):
        impala.check_games(["Breakout", "Pong"], TINY)


def test_multitask_params_are_checked_in_one_line():
    base = {"total_steps": 1280, "batch_size": 4, "num_actors": 2, "checkpoint_every": 640}
    config = impala.multitask_config(
        base,
        {"popart_beta": 0.001},
        algo="IMPALA_PopArt",
        protocol="classic",
        games=["Pong", "SpaceInvaders"],
        full_action_space=False,
    )
    assert config.popart and config.games == ("Pong", "SpaceInvaders") and config.popart_beta == 0.001
    plain = impala.multitask_config(
        base, {}, algo="IMPALA", protocol="classic", games=["Pong", "SpaceInvaders"], full_action_space=False
    )
    assert not plain.popart and plain.clips_rewards(2) and not config.clips_rewards(2)
    sign = impala.multitask_config(
        base,
        {"reward_clipping": "sign"},
        algo="IMPALA_PopArt",
        protocol="classic",
        games=["Pong", "SpaceInvaders"],
        full_action_space=False,
    )
    assert sign.clips_rewards(2)  # PopArt on clipped rewards: an ablation
    for overrides, algo, games, message in [
        ({}, "PopArt", ["Pong", "SpaceInvaders"], "multitask.algo must be one of IMPALA_PopArt, IMPALA, not 'PopArt'"),
        ({}, "IMPALA_PopArt", ["Pong"], "multitask.games must list at least two games, not ['Pong']"),
        ({"games": ["Pong"]}, "IMPALA_PopArt", ["Pong", "SpaceInvaders"], "multitask.impala sets games"),
        (
            {"total_steps": 0},
            "IMPALA_PopArt",
            ["Pong", "SpaceInvaders"],
            "multitask.impala (over train_agent.impala).total_steps must be at least 1, not 0",
        ),
        (
            {"reward_clipping": "none"},
            "IMPALA",
            ["Pong", "SpaceInvaders"],
            "multitask.impala (over train_agent.impala).reward_clipping is 'none' in a multi-task run without "
            "PopArt (algo IMPALA): unclipped rewards need PopArt's normalised values",
        ),
    ]:
        with pytest.raises(UserError, match=re.escape(message)):
            impala.multitask_config(
                base, overrides, algo=algo, protocol="classic", games=games, full_action_space=False
            )


def test_the_impala_resnet_learns_on_a_batch_and_its_checkpoint_loads_back(tmp_path):
    """The learner step alone (no actors) on a made-up batch of 3 unrolls of 5 steps over 2 tasks."""
    torch.manual_seed(0)
    config = impala.IMPALAConfig(unroll_length=5, batch_size=3, architecture="impala")
    net = impala.IMPALANet(6, num_tasks=2, encoder="impala", popart=True, last_action_reward=True)
    optimizer = torch.optim.RMSprop(net.parameters(), lr=config.lr, alpha=0.99, eps=0.01)
    t, b = config.unroll_length, config.batch_size
    batch = {
        "obs": torch.randint(0, 256, (t + 1, b, 4, 84, 84), dtype=torch.uint8),
        "actions": torch.randint(0, 6, (t, b)),
        "logits": torch.randn(t, b, 6),
        "rewards": torch.ones(t, b),
        "dones": torch.zeros(t, b, dtype=torch.bool),
        "task": torch.tensor([0, 1, 1]),
        "last_action": torch.randint(0, 6, (t + 1, b)),
        "last_reward": torch.ones(t + 1, b),
    }
    before = {k: v.clone() for k, v in net.state_dict().items()}
    stats = impala.learn(net, optimizer, config, batch)
    assert all(torch.isfinite(torch.tensor(v)) for v in stats.values())
    assert not torch.equal(before["actor.weight"], net.actor.weight)
    assert (net.critic.mu > 0).all()  # both tasks' targets are positive returns
    path = tmp_path / "model_15.gz"
    checkpoints.save(
        path, net, algo="IMPALA", protocol="classic", games=["Pong", "Carnival"], seed=0, step=15, frames=60
    )
    loaded, meta = checkpoints.load_network(path)
    assert meta["architecture"]["encoder"] == "impala" and meta["game"] == "Pong+Carnival"
    obs = batch["obs"][0]
    for mine, theirs in zip(loaded(obs), net.eval()(obs), strict=True):
        torch.testing.assert_close(mine, theirs)
    shared, _ = checkpoints.load_network(path)  # the one loader evaluation and probing use
    for mine, theirs in zip(shared(obs), net(obs), strict=True):
        torch.testing.assert_close(mine, theirs)


def test_config_from_params():
    config = impala.config_from({"total_steps": 5000, "discount": 1, "games": ["Pong", "SpaceInvaders"]})
    assert config.discount == 1.0 and config.games == ("Pong", "SpaceInvaders") and config.buffers == 96
    assert impala.IMPALAConfig().buffers == 96 and impala.IMPALAConfig(num_actors=8, batch_size=32).buffers == 32
    # torchbeast's settings by default; the IMPALA paper's entropy and batch kept as alternatives.
    default = impala.IMPALAConfig()
    assert (default.batch_size, default.entropy_cost, default.num_actors) == (8, 0.0006, 48)
    assert default.last_action_reward and default.greedy_evaluation and default.popart_statistics == "torchbeast"
    with pytest.raises(UserError, match="unknown keys nope"):
        impala.config_from({"nope": 1})
    with pytest.raises(UserError, match="architecture must be one of nature, impala, not 'resnet'"):
        impala.config_from({"architecture": "resnet"})
    with pytest.raises(UserError, match="games must be a list"):
        impala.config_from({"games": "Pong"})
    with pytest.raises(UserError, match="total_steps must be at least one learner step"):
        impala.config_from({"total_steps": 100})
    assert impala.IMPALAConfig(checkpoint_every=1_000_000, total_steps=2_600_000).checkpoint_iterations() == [
        1563,
        3125,
        4062,
    ]  # 640 steps a learner step
    with pytest.raises(UserError, match="popart_statistics must be one of torchbeast, second_moment, not 'hessel'"):
        impala.config_from({"popart_statistics": "hessel"})
    with pytest.raises(UserError, match="reward_clipping must be one of auto, sign, none, not 'abs_one'"):
        impala.config_from({"reward_clipping": "abs_one"})
    with pytest.raises(
        UserError,
        match=r"^train_agent.impala.reward_clipping is 'none' in a single-game run: "
        r"unclipped rewards need PopArt",
    ):
        impala.config_from({"reward_clipping": "none", "games": ["Pong"]})


@pytest.mark.e2e
def test_the_train_agent_stage_runs_impala_on_its_game(tmp_path):
    """`train_agent.algo: IMPALA` through the stage script, as `dvc repro` runs it."""
    import subprocess
    import sys

    import yaml

    repo = Path(__file__).resolve().parents[2]
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump(
            {
                "seed": 0,
                "device": "cpu",
                "train_agent": {
                    "algo": "IMPALA",
                    "protocol": "classic",
                    "seeds": [0],
                    "ppo": {},
                    "impala": {
                        "total_steps": 192,
                        "unroll_length": 8,
                        "batch_size": 2,
                        "num_actors": 2,
                        "checkpoint_every": 96,
                    },
                },
            }
        )
    )
    out = "checkpoints/IMPALA_classic/Breakout/0"
    result = subprocess.run(
        [sys.executable, str(repo / "stages/train_agent.py"), "Breakout", "0", out, "log"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert [step for step, _ in checkpoints.list_run(tmp_path / out)] == [96, 192]
    network, meta = checkpoints.load_network(tmp_path / out / "model_192.gz")
    assert (meta["algo"], meta["game"], meta["seed"]) == ("IMPALA", "Breakout", 0) and network.num_actions == 4
