"""Agent evaluation: the protocols' behaviour, evaluate(), human-normalised scores, aggregates, and the
evaluate_agent and report_agents stages on tiny checkpoints (real ALE games, small settings)."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from atarirep import annotations
from atarirep.agents import checkpoints, evaluation, vector_env
from atarirep.agents.network import ActorCritic, IMPALANet
from atarirep.agents.vector_env import AgentEnvs
from atarirep.games import PROTOCOLS
from atarirep.plumbing.errors import UserError
from atarirep.reports import returns as agent_returns

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def one_torch_thread():
    # Batches of a few frames: on a shared 2-core machine thread hand-offs cost more than they save.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _network(num_actions: int, seed: int = 0) -> ActorCritic:
    torch.manual_seed(seed)
    return ActorCritic(num_actions).eval()


def _play(envs: AgentEnvs, seed: int, actions: np.ndarray) -> np.ndarray:
    """The observation after a fixed action sequence (the same action in every env) from reset(seed)."""
    obs = envs.reset(seed)
    for action in actions:
        obs = envs.step(np.full(envs.num_envs, action)).obs
    return obs


# -- protocols ---------------------------------------------------------------------------------------
def test_modern_protocol_has_sticky_actions_and_no_noops():
    envs = AgentEnvs("Breakout", 3, "modern", training=False)
    assert (envs.protocol.sticky_action_prob, envs.protocol.noop_max, envs.protocol.fire_on_reset) == (0.25, 0, False)
    # No no-ops and no FIRE: every game starts on the same frame, whatever the seed.
    first = [envs.reset(seed) for seed in (0, 1)]
    assert all((obs == first[0][0]).all() for obs in np.concatenate(first))
    # Sticky actions: the same actions lead to different frames for different seeds (and envs), the same for one seed.
    actions = np.random.default_rng(0).integers(envs.num_actions, size=60)
    a, b, again = _play(envs, 0, actions), _play(envs, 1, actions), _play(envs, 0, actions)
    envs.close()
    assert (a != b).any() and (a[0] != a[1]).any()
    assert (a == again).all()


def test_classic_protocol_varies_starts_by_noops_only():
    envs = AgentEnvs("Breakout", 4, "classic", training=False)
    assert (envs.protocol.sticky_action_prob, envs.protocol.noop_max, envs.protocol.fire_on_reset) == (0.0, 30, True)
    starts = np.concatenate([envs.reset(seed) for seed in (0, 1)])
    envs.close()
    assert len({obs.tobytes() for obs in starts}) > 1  # 1-30 random no-ops: different first frames
    # The same protocol without its no-ops is deterministic: no sticky actions, so one frame for all seeds.
    no_noops = AgentEnvs("Breakout", 2, dataclasses.replace(PROTOCOLS["classic"], noop_max=0), training=False)
    actions = np.random.default_rng(0).integers(no_noops.num_actions, size=60)
    a, b = _play(no_noops, 0, actions), _play(no_noops, 1, actions)
    no_noops.close()
    assert (a == b).all() and (a[0] == a[1]).all()


# -- evaluate ----------------------------------------------------------------------------------------
class Recorder(AgentEnvs):
    """AgentEnvs that remembers its steps: actions, clipped rewards, and each env's finished games."""

    last = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.actions, self.rewards, self.finished = [], [], [[] for _ in range(self.num_envs)]
        Recorder.last = self

    def step(self, actions):
        step = super().step(actions)
        self.actions.append(np.array(actions))
        self.rewards.append(step.reward)
        for env, value in zip(np.flatnonzero(step.terminated | step.truncated), step.finished_returns, strict=True):
            self.finished[env].append(value)
        return step


@pytest.fixture
def recorder(monkeypatch):
    monkeypatch.setattr(vector_env, "AgentEnvs", Recorder)  # acting.agent_envs opens them
    return Recorder


def test_evaluate_plays_exactly_episodes_whole_games_and_is_deterministic(recorder):
    network = _network(4)
    kwargs = dict(episodes=3, epsilon=0.001, max_steps=10_000)
    returns = evaluation.evaluate(network, "Breakout", "classic", seed=0, **kwargs)
    envs = recorder.last
    assert len(returns) == 3
    assert returns == [games[0] for games in envs.finished]  # each env's first whole game (all 5 lives)
    assert min(len(games) for games in envs.finished) == 1  # it stopped once the last first game ended
    assert evaluation.evaluate(network, "Breakout", "classic", seed=0, **kwargs) == returns
    assert evaluation.evaluate(network, "Breakout", "classic", seed=1, **kwargs) != returns


def test_evaluate_cuts_games_at_max_steps_and_counts_their_returns(recorder):
    returns = evaluation.evaluate(_network(6), "Pong", "classic", episodes=2, epsilon=0.001, max_steps=100, seed=0)
    envs = recorder.last
    assert len(envs.actions) == 100 and envs.finished == [[], []]  # a Pong game lasts far longer
    # Pong's rewards are -1/+1, so the clipped rewards sum to the raw return so far.
    assert returns == np.sum(envs.rewards, axis=0).tolist()
    assert min(returns) < 0


def test_epsilon_one_gives_uniformly_random_actions(recorder):
    network = _network(6)
    with torch.no_grad():  # a policy that always picks action 2
        network.actor.bias.fill_(-1e4)
        network.actor.bias[2] = 0.0
    evaluation.evaluate(network, "Pong", "classic", episodes=4, epsilon=0.0, max_steps=50, seed=0)
    assert (np.concatenate(recorder.last.actions) == 2).all()
    evaluation.evaluate(network, "Pong", "classic", episodes=4, epsilon=1.0, max_steps=150, seed=0)
    counts = np.bincount(np.concatenate(recorder.last.actions), minlength=6)
    assert counts.sum() == 600
    chi2 = ((counts - 100) ** 2 / 100).sum()
    assert chi2 < 20.5, counts  # uniform at p = 0.001 (5 degrees of freedom)


def test_evaluate_refuses_a_network_of_another_game():
    with pytest.raises(UserError, match="the network has 6 actions but Breakout has 4"):
        evaluation.evaluate(_network(6), "Breakout", "classic", episodes=1, epsilon=0.0, max_steps=1, seed=0)


# -- scores ------------------------------------------------------------------------------------------
def test_reference_scores_cover_the_annotated_games():
    scores = agent_returns.reference_scores()
    assert len(scores) == 57 and "AirRaid" not in scores and "Carnival" not in scores
    assert scores["NameThisGame"] == (2292.3, 8049.0)
    ale_names = {name.lower(): name for name in scores}
    for game in annotations.annotated_games("latest"):
        assert game in ale_names, game
    assert [scores[g] for g in ("Pong", "Breakout", "Boxing", "MsPacman", "Freeway")] == [
        (-20.7, 14.6),
        (1.7, 30.5),
        (0.1, 12.1),
        (307.3, 6951.6),
        (0.0, 29.6),
    ]


def test_human_normalized():
    assert agent_returns.human_normalized("Pong", -20.7) == 0.0
    assert agent_returns.human_normalized("Pong", 14.6) == pytest.approx(1.0)
    assert agent_returns.human_normalized("Breakout", 16.1) == pytest.approx(0.5)  # (16.1 - 1.7) / 28.8
    np.testing.assert_allclose(agent_returns.human_normalized("MsPacman", np.array([307.3, 6951.6])), [0.0, 1.0])
    with pytest.raises(UserError, match="'AirRaid' has no random and human reference scores"):
        agent_returns.human_normalized("AirRaid", 100.0)


def test_aggregate_matches_hand_computed_iqm():
    scores = np.array([[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 100.0]])  # 2 runs x 4 games
    result = agent_returns.aggregate({"classic": scores}, reps=500, seed=0)["classic"]
    assert result["iqm"]["value"] == pytest.approx((2 + 3 + 4 + 5) / 4)  # the middle half of the 8 scores
    assert result["median"]["value"] == pytest.approx(3.5)
    assert result["mean"]["value"] == pytest.approx(121 / 8)
    for metric in ("iqm", "median", "mean"):
        assert result[metric]["ci_low"] <= result[metric]["value"] <= result[metric]["ci_high"]
    assert result["iqm"]["ci_low"] < result["iqm"]["ci_high"]
    assert (result["runs"], result["games"]) == (2, 4)
    np.random.seed(1)  # rliable resamples with numpy's global generator: aggregate seeds it itself
    both = agent_returns.aggregate({"classic": scores, "modern": scores + 1}, reps=500, seed=0)
    assert both["classic"] == result  # each key resampled on its own
    assert np.random.get_state()[1][:4].tolist() == np.random.RandomState(1).get_state()[1][:4].tolist()


# -- stages ------------------------------------------------------------------------------------------
PARAMS = {
    "seed": 0,
    "device": "cpu",
    "games": ["Breakout"],
    "annotations": "latest",
    "evaluate_agent": {"protocols": ["classic", "modern"], "episodes": 2, "epsilon": 0.001, "max_steps": 30},
    "report": {"methods": [], "baselines": [], "rl_agent": False},
    # AirRaid (6 actions, no reference scores) beside Breakout (4): one network on ALE's 18 actions
    "multitask": {
        "algo": "IMPALA_PopArt",
        "games": ["Breakout", "AirRaid"],
        "seeds": [0],
        "full_action_space": True,
        "impala": {},
    },
}


def _layout(root: Path, params: dict = PARAMS) -> Path:
    """A study folder: params.yaml and 2 seeds x 2 tiny Breakout checkpoints; returns the game's sampled root."""
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    sampled = root / "sampled" / "Breakout"
    for seed in (0, 1):
        for step in (100, 200):
            checkpoints.save(
                sampled / str(seed) / checkpoints.file_name(step),
                _network(4, seed + step),
                algo="PPO",
                protocol="classic",
                game="Breakout",
                seed=seed,
                step=step,
                frames=4 * step,
            )
    return sampled


def _stage(name: str, *args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(REPO / "stages" / f"{name}.py"), *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    _layout(root)
    result = _stage("evaluate_agent", "Breakout", "sampled/Breakout", "evaluations/Breakout", cwd=root)
    assert result.returncode == 0, result.stderr
    torch.manual_seed(0)
    network = IMPALANet(18, 2, popart=True, full_action_space=True, last_action_reward=True, acts_greedily=True)
    checkpoints.save(
        root / "multitask/0/model_100.gz",
        network,
        algo="IMPALA_PopArt",
        protocol="classic",
        games=["Breakout", "AirRaid"],
        seed=0,
        step=100,
        frames=400,
    )
    for game in ("Breakout", "AirRaid"):
        played = _stage("evaluate_agent", game, "multitask", f"multitask_evaluations/{game}", cwd=root)
        assert played.returncode == 0, played.stderr
    return root, result


def test_evaluate_agent_stage_writes_returns_metrics_and_curve(evaluated):
    root, result = evaluated
    out = root / "evaluations" / "Breakout"
    rows = pd.read_csv(out / "returns.csv")
    assert list(rows.columns) == agent_returns.ROW_COLUMNS
    assert len(rows) == 2 * 2 * 2 * 2  # seeds x checkpoints x protocols x episodes
    assert set(rows["frames"]) == {400, 800} and set(rows["protocol"]) == {"classic", "modern"}
    assert len(result.stdout.splitlines()) >= 8  # a progress line per checkpoint and protocol
    metrics = json.loads((out / "metrics.json").read_text())
    final = rows[rows["step"] == 200]
    for protocol in ("classic", "modern"):
        mean = final[final["protocol"] == protocol]["return"].mean()
        assert metrics[protocol]["mean_return"] == pytest.approx(mean)
        assert metrics[protocol]["human_normalized"] == pytest.approx((mean - 1.7) / 28.8)
        assert (metrics[protocol]["seeds"], metrics[protocol]["episodes"]) == (2, 4)
    assert (out / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_agents_stage_writes_tables_aggregates_and_curves(evaluated):
    root, _ = evaluated
    curve = root / "agent_probes" / "Breakout" / "f1_by_category.csv"  # as probe_checkpoints writes it
    missing = _stage(
        "report_agents", "evaluations", "agent_probes", "multitask_evaluations", "reports/agents", cwd=root
    )
    assert (
        missing.returncode == 2
        and missing.stderr
        == f"error: {curve.relative_to(root)} is missing; run `dvc repro` for probe_checkpoints@Breakout\n"
        and not (root / "reports" / "agents").exists()
    )
    curve.parent.mkdir(parents=True)
    curve.write_text(
        "seed,step,frames,agent,across_categories\n0,100,400,0.2,0.2\n0,200,800,0.3,0.3\n"
        "1,100,400,0.4,0.4\n1,200,800,0.5,0.5\n"
    )
    result = _stage("report_agents", "evaluations", "agent_probes", "multitask_evaluations", "reports/agents", cwd=root)
    assert result.returncode == 0, result.stderr
    out = root / "reports" / "agents"
    table = pd.read_csv(out / "returns_by_game.csv", index_col="game")
    metrics = json.loads((root / "evaluations" / "Breakout" / "metrics.json").read_text())
    assert table.loc["Breakout", "classic_return"] == pytest.approx(metrics["classic"]["mean_return"], abs=1e-6)
    assert table.loc["Breakout", "modern_human_normalized"] == pytest.approx(
        metrics["modern"]["human_normalized"], abs=1e-6
    )
    summary = json.loads((out / "aggregate.json").read_text())
    assert set(summary) == {"classic", "modern"}
    assert (summary["classic"]["runs"], summary["classic"]["games"]) == (2, 1)
    # One game: the IQM, median and mean of 2 seeds' scores are all their mean.
    assert summary["classic"]["iqm"]["value"] == pytest.approx(metrics["classic"]["human_normalized"])
    assert (
        "| classic |" in (out / "aggregate.md").read_text()
        and "| Breakout |" in (out / "returns_by_game.md").read_text()
    )
    assert (out / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "training_Breakout.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The multi-task run: each game's own return; AirRaid has no reference scores, so the aggregate is Breakout's
    # alone and says so; beside Breakout's, the single-task agent's return.
    multitask = pd.read_csv(out / "multitask_returns_by_game.csv", index_col="game")
    air_raid = json.loads((root / "multitask_evaluations/AirRaid/metrics.json").read_text())
    assert air_raid["classic"]["human_normalized"] is None
    assert multitask.loc["AirRaid", "classic_return"] == pytest.approx(air_raid["classic"]["mean_return"], abs=1e-6)
    assert np.isnan(multitask.loc["AirRaid", "classic_human_normalized"])
    assert multitask.loc["Breakout", "classic_return_single_task"] == table.loc["Breakout", "classic_return"]
    assert json.loads((out / "multitask_aggregate.json").read_text())["modern"]["games"] == 1
    assert "AirRaid left out (no random and human reference scores)" in (out / "multitask_aggregate.md").read_text()
    assert (out / "multitask_learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The reference's comparison per multi-task game: single-task where it was run (Breakout), multi-task
    # PopArt (this study's multitask.algo); the clipped multi-task model was not run and the caption says so.
    compared = pd.read_csv(out / "comparison.csv", index_col="game")
    assert list(compared.index) == ["Breakout", "AirRaid"]
    assert list(compared.columns) == [
        "classic_single_task",
        "classic_multitask_popart",
        "modern_single_task",
        "modern_multitask_popart",
    ]
    assert compared.loc["Breakout", "classic_single_task"] == pytest.approx(table.loc["Breakout", "classic_return"])
    assert np.isnan(compared.loc["AirRaid", "classic_single_task"])
    assert compared.loc["AirRaid", "modern_multitask_popart"] == pytest.approx(
        multitask.loc["AirRaid", "modern_return"]
    )
    assert "not run here: multi-task (clipped)" in (out / "comparison.md").read_text()


def _truncate(sampled: Path) -> str:
    path = sampled / "1" / "model_200.gz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return "error: checkpoint sampled/Breakout/1/model_200.gz is truncated or corrupt"


def _foreign(sampled: Path) -> str:
    checkpoints.save(
        sampled / "0" / "model_200.gz",
        _network(6),
        algo="PPO",
        protocol="classic",
        game="Pong",
        seed=0,
        step=200,
        frames=800,
    )
    return "error: checkpoint sampled/Breakout/0/model_200.gz was trained on Pong, not Breakout"


@pytest.mark.parametrize(
    "damage, params",
    [
        (_truncate, PARAMS),
        (_foreign, PARAMS),
        (
            lambda sampled: "error: protocol 'sticky' is unknown; use one of atariari, classic, modern",
            {**PARAMS, "evaluate_agent": {**PARAMS["evaluate_agent"], "protocols": ["classic", "sticky"]}},
        ),
    ],
)
def test_evaluate_agent_stage_stops_on_bad_input_with_one_line(tmp_path, damage, params):
    expected = damage(_layout(tmp_path, params))
    result = _stage("evaluate_agent", "Breakout", "sampled/Breakout", "evaluations/Breakout", cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith(expected), result.stderr
    assert not (tmp_path / "evaluations" / "Breakout").exists()
