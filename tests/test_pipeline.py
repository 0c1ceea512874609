"""The pipeline as users drive it: `dvc repro`, `dvc exp run -S`, bad params, stale results, plots, and push
and pull to a local remote (tests/plumbing/test_remote.py: an S3-compatible server).

One tiny `dvc repro` runs once per session (the `built_repo` fixture in conftest.py); each test gets its own copy
of that repository (git, DVC cache, outputs), so no test depends on another or on their order."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from atarirep.plumbing import deps, params

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
AGENT_STAGES = {
    "train_agent@Breakout-0",
    "sample_checkpoints@Breakout-0",
    "evaluate_agent@Breakout",
    "probe_checkpoints@Breakout",
    "saliency@Breakout",
    "report_agents",
}
MULTITASK_STAGES = {
    "train_multitask@0",
    "sample_multitask@0",
    "evaluate_multitask@Pong",
    "evaluate_multitask@SpaceInvaders",
    "saliency_multitask@Pong",
    "saliency_multitask@SpaceInvaders",
}


def run(args, cwd, check=True, **kwargs):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(cwd)}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def _merge(base: dict, update: dict) -> dict:
    return {**base, **{k: _merge(base.get(k, {}), v) if isinstance(v, dict) else v for k, v in update.items()}}


def ran_stages(stdout: str) -> set[str]:
    return {line.split("'")[1] for line in stdout.splitlines() if line.startswith("Running stage")}


def test_committed_params_equal_the_composed_default_profile():
    assert yaml.safe_load((REPO / "params.yaml").read_text()) == params.compose(REPO / "conf")


def test_default_games_follow_env_and_paper_profile_is_the_22_game_reference():
    assert params.compose(REPO / "conf", ["env=Breakout"])["games"] == ["Breakout"]
    assert params.compose(REPO / "conf", ["games=[Breakout,MsPacman]"])["games"] == ["Breakout", "MsPacman"]
    paper = params.compose(REPO / "conf", ["profile=paper"])
    paper_tables = yaml.safe_load((REPO / "atarirep/resources/paper_tables.yaml").read_text())
    assert paper["games"] == [g for g in paper_tables["f1_by_game"] if g != "mean"] and len(paper["games"]) == 22
    assert paper["annotations"] == "paper"
    assert paper["pretrain"]["methods"] == [
        "random_cnn",
        "stdim",
        "global_local_stdim",
        "global_t_dim",
        "jsd_stdim",
        "static_dim",
        "vae",
        "pixel_pred",
        "cpc",
        "tokenizer",
    ]
    assert paper["probe"]["baselines"] == ["majority", "supervised"]
    assert paper["report"] == {
        "methods": paper["pretrain"]["methods"],
        "baselines": ["majority", "supervised"],
        "rl_agent": True,
    }
    assert paper["train_agent"]["ppo"]["total_steps"] == 10_000_000 and paper["sample_checkpoints"]["keep"] == 51
    assert (
        paper["train_agent"]["ppo"]["checkpoint_every"],
        paper["evaluate_agent"]["epsilon"],
        paper["evaluate_agent"]["protocols"],
    ) == (50_000, 0.001, ["classic", "modern"])
    impala_ = paper["train_agent"]["impala"]  # torchbeast's monobeast settings; the multi-task runs on the ResNet
    assert (
        impala_["batch_size"],
        impala_["entropy_cost"],
        impala_["num_actors"],
        impala_["last_action_reward"],
        impala_["popart_statistics"],
        impala_["popart_beta"],
    ) == (8, 0.0006, 48, True, "torchbeast", 0.0004)
    assert paper["multitask"]["impala"] == {"total_steps": 300_000_000, "num_actors": 48, "architecture": "impala"}
    assert paper["collect"]["pretrain"] == {"steps": 100000, "splits": {"train": 0.8, "val": 0.2}}
    assert paper["collect"]["probe"] == {"steps": 50000, "splits": {"train": 0.7, "val": 0.1, "test": 0.2}}
    assert (
        paper["collect"]["num_envs"],
        paper["collect"]["min_episode_length"],
        paper["collect"]["entropy_threshold"],
        paper["collect"]["random_actions"],
    ) == (8, 64, 0.6, "nonzero")
    assert (
        paper["pretrain"]["epochs"],
        paper["pretrain"]["patience"],
        paper["probe"]["epochs"],
        paper["probe"]["patience"],
        paper["probe"]["lr"],
        paper["probe"]["supervised_per_variable"],
    ) == (100, 15, 100, 15, 0.0003, True)


def test_default_profile_shows_all_seven_columns_of_table_2():
    default = params.compose(REPO / "conf")
    assert set(default["pretrain"]["methods"]) | set(default["probe"]["baselines"]) >= {
        "majority",
        "random_cnn",
        "vae",
        "pixel_pred",
        "cpc",
        "stdim",
        "supervised",
    }


def test_every_stage_depends_on_exactly_the_code_it_reads_and_declares_the_params_it_loads():
    """dvc.yaml's code deps are what `atarirep deps --write` computes from each script's imports: nothing
    missing (a change would not rerun the stage), nothing extra (a change would rerun it for nothing)."""
    problems = deps.check(REPO)
    assert not problems, "\n".join([*problems, "run `atarirep deps --write`"])


def test_the_sampling_keep_and_precision_params_rerun_the_stages_that_pass_them():
    """A param a stage passes on but does not declare would leave its old outputs in place when it changes."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    passed = {
        "pretrain": ["pretrain.sampling", "pretrain.precision"],
        **{name: ["probe.sampling", "probe.keep"] for name in ("probe", "probe_baseline", "probe_checkpoints")},
    }
    for name, keys in passed.items():
        script = (REPO / stages[name]["cmd"].split()[1]).read_text()
        assert all(f"p.{key.split('.')[1]}" in script for key in keys)  # the script passes them on
        assert set(keys) <= set(stages[name]["params"]), f"stage {name} does not declare {keys}"


def _outputs(stage: dict) -> list[str]:
    """A stage's outs, metrics and plots, as paths."""
    return [
        next(iter(entry)) if isinstance(entry, dict) else entry
        for kind in ("outs", "metrics", "plots")
        for entry in stage.get(kind, [])
    ]


def test_every_data_path_a_stage_command_names_is_a_dep_or_an_out():
    """A file a stage reads but does not declare would not rerun it when it changes (the probe stage once read
    its encoder undeclared), and would not order it after the stage that writes it. A command may name an
    output's folder (it writes below it), but what it reads must be a dep or lie inside one."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        deps, outputs = [Path(p) for p in stage.get("deps", [])], [Path(p) for p in _outputs(stage)]
        for token in stage["cmd"].split():
            if token.startswith(("data/", "reports/")):
                path = Path(token)
                assert any(path == d or d in path.parents for d in deps + outputs) or any(
                    path in d.parents for d in outputs
                ), f"stage {name} names {token} in its command but not among its deps or outs"


@pytest.mark.e2e
def test_dvc_repro_runs_the_whole_chain_then_is_a_no_op(repo, built_repo):
    first = built_repo[1]
    assert ran_stages(first) == {
        "check_params",
        "collect_policy@Breakout",
        "collect@Breakout-pretrain",
        "collect@Breakout-probe",
        "pretrain@Breakout-random_cnn",
        "pretrain@Breakout-stdim",
        "probe@Breakout-random_cnn",
        "probe@Breakout-stdim",
        "probe_baseline@Breakout-majority",
        "report",
        *AGENT_STAGES,
        *MULTITASK_STAGES,
    }
    assert first.index("Running stage 'check_params'") < first.index("Running stage 'collect@")
    summary = json.loads((repo / "reports/collect/Breakout/probe.json").read_text())
    assert summary["game"] == "Breakout" and summary["test_frames"] > 0
    table = (repo / "reports/probe/tables/f1_by_game.csv").read_text()
    assert table.splitlines()[0].split(",")[1:] == ["majority", "random_cnn", "stdim", "rl_agent"]  # paper's order
    assert (repo / "reports/probe/tables/f1_by_game.md").read_text().splitlines()[0] == (
        "| game | majority | random-CNN | ST-DIM | RL agent (PPO) |"
    )  # and its names, then ours
    second = run(["dvc", "repro"], repo)
    assert "didn't change" in second.stdout and "Running stage" not in second.stdout
    metrics = run(["dvc", "metrics", "show", "--json"], repo)
    assert "train_frames" in metrics.stdout and "across_categories" in metrics.stdout


@pytest.mark.e2e
def test_the_multi_task_run_is_sampled_evaluated_and_shown_per_game(repo):
    from atarirep.agents import checkpoints
    from atarirep.agents.network import OneGame

    sampled = repo / "data/checkpoints_sampled/IMPALA_PopArt_classic/multitask"
    assert [step for step, _ in checkpoints.list_run(sampled / "0")] == [320, 640]
    for task, game in enumerate(["Pong", "SpaceInvaders"]):
        network, meta = checkpoints.load_for_game(sampled / "0/model_640.gz", game)
        assert isinstance(network, OneGame) and network.task == task and meta["algo"] == "IMPALA_PopArt"
        assert meta["games"] == ["Pong", "SpaceInvaders"] and network.network.popart
        returns = (repo / f"data/multitask/evaluations/{game}/returns.csv").read_text().splitlines()
        assert len(returns) == 1 + 2  # 2 checkpoints x 1 protocol x 1 game
        assert (repo / f"data/multitask/saliency/{game}/0/model_640/episode.gif").is_file()
    logs = repo / "data/multitask/agents/0/train/plots/metrics"
    assert (logs / "popart/sigma/Pong.tsv").is_file() and (logs / "popart/sigma/SpaceInvaders.tsv").is_file()
    table = (repo / "reports/agents/multitask_returns_by_game.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in table[1:]] == ["Pong", "SpaceInvaders"]
    assert json.loads((repo / "reports/agents/multitask_aggregate.json").read_text())["classic"]["games"] == 2


@pytest.mark.e2e
def test_changing_a_probe_param_reruns_only_probe_and_report(repo):
    result = run(["dvc", "exp", "run", "-S", "probe.lr=0.002"], repo, timeout=600)
    assert ran_stages(result.stdout) == {
        "check_params",
        "probe@Breakout-random_cnn",
        "probe@Breakout-stdim",
        "probe_baseline@Breakout-majority",
        "probe_checkpoints@Breakout",
        "report_agents",
        "report",
    }  # report_agents draws the probes' curve


@pytest.mark.e2e
def test_retraining_the_agent_keeps_the_random_agents_episodes_and_encoders(repo):
    """collect_policy's output does not change in random mode, so collect and pretrain do not rerun."""
    result = run(["dvc", "exp", "run", "-S", "train_agent.ppo.lr=0.0005"], repo, timeout=600)
    ran = ran_stages(result.stdout)
    # (report_agents reruns only when some return changed: 200-step Breakout games of two near-uniform
    # policies may well end alike)
    assert AGENT_STAGES - {"report_agents"} | {"collect_policy@Breakout", "report"} <= ran
    assert not any(stage.startswith(("collect@", "pretrain@", "probe@", "probe_baseline@")) for stage in ran)
    assert (repo / "data/checkpoints_sampled/PPO_classic/Breakout/0/model_1024.gz").exists()
    curve = (repo / "data/agent_probes/Breakout/f1_by_category.csv").read_text().splitlines()
    assert len(curve) == 1 + 2  # a row per sampled checkpoint
    assert json.loads((repo / "reports/agents/aggregate.json").read_text())


@pytest.mark.e2e
def test_changing_one_datasets_steps_recollects_only_that_dataset(repo):
    result = run(["dvc", "status", "--json"], repo)
    assert json.loads(result.stdout) == {}
    params_yaml = yaml.safe_load((repo / "params.yaml").read_text())
    params_yaml["collect"]["probe"]["steps"] += 8
    (repo / "params.yaml").write_text(yaml.safe_dump(params_yaml, sort_keys=False))
    changed = set(json.loads(run(["dvc", "status", "--json"], repo).stdout))
    assert "collect@Breakout-probe" in changed and "collect@Breakout-pretrain" not in changed
    assert not any(stage.startswith("pretrain@") for stage in changed)


@pytest.mark.e2e
def test_a_category_rule_change_reruns_the_probes_and_the_report(repo):
    path = repo / "atarirep/annotations.py"
    path.write_text(path.read_text().replace('_MISC = ("count",', '_MISC = ("count", "score",'))
    changed = set(json.loads(run(["dvc", "status", "--json"], repo).stdout))
    assert {"probe@Breakout-stdim", "probe_baseline@Breakout-majority", "report"} <= changed


@pytest.mark.e2e
def test_the_chain_follows_the_games_list_and_the_report_shows_exactly_the_methods_in_params(repo):
    both = run(
        ["dvc", "exp", "run", "-S", "games=[Breakout,SpaceInvaders]", "-S", "pretrain.methods=[stdim]"],
        repo,
        timeout=900,
    )  # (one method: random_cnn leaves the pipeline, nothing of Breakout's reruns)
    ran = ran_stages(both.stdout)
    assert {
        "collect@SpaceInvaders-probe",
        "pretrain@SpaceInvaders-stdim",
        "probe@SpaceInvaders-stdim",
        "probe_baseline@SpaceInvaders-majority",
        "report",
    } <= ran
    assert not {name for name in ran if "@Breakout" in name}  # Breakout's chain is reused whole
    table = (repo / "reports/probe/tables/f1_by_game.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in table] == ["game", "Breakout", "SpaceInvaders", "mean"]
    assert (repo / "reports/probe/tables/f1_by_variable_SpaceInvaders.md").exists()
    assert "SpaceInvaders" in run(["dvc", "exp", "show", "--json"], repo).stdout
    # (`-S env=<game>` alone: tests/plumbing/test_experiments.py queues such runs)
    assert (repo / "data/probes/Breakout/random_cnn/scores.csv").exists()  # an old result left on disk...
    assert table[0] == "game,majority,stdim,rl_agent"  # ...is not shown
    assert set(json.loads((repo / "reports/probe/summary.json").read_text())["f1"]) == {"majority", "stdim", "rl_agent"}


RESTORE = (
    "(after a failed `dvc exp run -S ...`, `git checkout HEAD -- params.yaml && dvc checkout` restores the workspace)"
)


@pytest.mark.e2e
@pytest.mark.parametrize(
    "change, line",
    [
        (
            {"env": "Pongg", "games": ["Pongg"]},
            "error: params.yaml env has 'Pongg', which has no RAM annotations in "
            "the 'latest' set; use one of Asteroids, BattleZone,",
        ),
        ({"pretrain": {"methods": ["stdim", "simclr"]}}, "error: pretraining method 'simclr' is unknown; use one of"),
        ({"collect": {"num_envs": "eight"}}, "error: params.yaml collect.num_envs='eight' must be of type int"),
        ({"games": ["Breakout", "Breakout"]}, "error: params.yaml games lists Breakout more than once; list each once"),
        ({"probe": {"epochs": 0}}, "error: params.yaml probe.epochs=0 must be at least 1"),
        (
            {"sample_checkpoints": {"keep": 3}},
            "error: params.yaml sample_checkpoints.keep=3 must be between 1 and the 2 checkpoints a run makes",
        ),
        ({"train_agent": {"algo": "DQN"}}, "error: params.yaml train_agent.algo='DQN' is unknown; use one of PPO"),
        ({"evaluate_agent": {"protocols": ["classic", "sticky"]}}, "error: protocol 'sticky' is unknown"),
        ({"saliency": {"stride": 0}}, "error: params.yaml saliency.stride=0 must be at least 1"),
    ],
)
def test_bad_params_stop_dvc_repro_before_any_output_is_touched(repo, change, line):
    before = {p: p.stat().st_mtime_ns for p in (repo / "data").rglob("*") if p.is_file() and p.name != "params.ok"}
    lock = (repo / "dvc.lock").read_text()
    bad = _merge(yaml.safe_load((repo / "params.yaml").read_text()), change)
    (repo / "params.yaml").write_text(yaml.safe_dump(bad, sort_keys=False))
    result = run(["dvc", "repro"], repo, check=False, timeout=600)
    assert result.returncode != 0
    errors = [err for err in result.stderr.splitlines() if err.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(line) and errors[0].endswith(RESTORE)
    assert "Running stage 'check_params'" in result.stdout and ran_stages(result.stdout) == {"check_params"}
    after = {p: p.stat().st_mtime_ns for p in (repo / "data").rglob("*") if p.is_file() and p.name != "params.ok"}
    assert after == before and (repo / "dvc.lock").read_text() == lock


MINIMAL_DVC_YAML = """\
stages:
  game:
    cmd: python -c "import yaml; print(yaml.safe_load(open('params.yaml'))['games'])" > game.txt
    params: [env, games]
    outs: [game.txt]
"""


@pytest.mark.e2e
def test_an_unknown_env_stops_exp_run_at_composition_and_a_known_one_runs(tmp_path):
    """`env` is a config group (conf/env/): a typo stops Hydra's composition, naming the games, before DVC writes
    params.yaml or checks anything out; a known game composes and runs."""
    shutil.copytree(REPO / "conf", tmp_path / "conf")
    shutil.copy(REPO / "params.yaml", tmp_path)
    (tmp_path / "dvc.yaml").write_text(MINIMAL_DVC_YAML)
    for args in (
        ["git", "init", "-q"],
        ["dvc", "init", "-q"],
        ["dvc", "config", "hydra.enabled", "true"],
        ["dvc", "repro", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "minimal"],
    ):
        run(args, tmp_path)
    params_yaml, game = (tmp_path / "params.yaml").read_text(), (tmp_path / "game.txt").read_text()
    bad = run(["dvc", "exp", "run", "-S", "env=NotAGame"], tmp_path, check=False, timeout=300)
    assert bad.returncode != 0 and "Could not find 'env/NotAGame'" in bad.stderr, bad.stderr
    assert "Available options in 'env'" in bad.stderr and "\tBreakout\n" in bad.stderr
    assert ran_stages(bad.stdout) == set()
    assert (tmp_path / "params.yaml").read_text() == params_yaml and (tmp_path / "game.txt").read_text() == game
    assert run(["git", "status", "--porcelain"], tmp_path).stdout == ""
    run(["dvc", "exp", "run", "-S", "env=Breakout"], tmp_path, timeout=300)
    assert (tmp_path / "game.txt").read_text() == "['Breakout']\n"


@pytest.mark.e2e
def test_a_bad_game_in_exp_run_says_how_to_restore_and_the_restore_works(repo):
    result = run(["dvc", "exp", "run", "-S", "games=[Breakoutt]"], repo, check=False, timeout=600)
    assert result.returncode != 0 and ran_stages(result.stdout) == {"check_params"}
    assert any(
        err.startswith("error: params.yaml games has 'Breakoutt'") and err.endswith(RESTORE)
        for err in result.stderr.splitlines()
    )
    # (`dvc exp run` has removed Breakout's outputs from the workspace: its stages left the pipeline)
    run(["git", "checkout", "HEAD", "--", "params.yaml"], repo)
    run(["dvc", "checkout"], repo)
    assert (repo / "data/episodes/Breakout/probe/frames.bin").exists()
    assert json.loads(run(["dvc", "status", "--json"], repo).stdout) == {}


@pytest.mark.e2e
def test_plots_page_renders_offline(repo):
    run(["dvc", "plots", "show", "-o", "plots_page"], repo)
    page = (repo / "plots_page/index.html").read_text()
    assert "cdn.jsdelivr" not in page and "vegaEmbed" in page and "f1_by_category" in page
    assert "data/encoders/Breakout/stdim/live/plots/metrics/train/loss.tsv" in page  # pretraining's dvclive curve


@pytest.mark.e2e
def test_push_and_pull_through_the_local_remote(repo):
    run(["dvc", "push"], repo)
    assert any((repo.parent / "remote").rglob("*"))
    before = (repo / "data/episodes/Breakout/probe/frames.bin").read_bytes()
    shutil.rmtree(repo / "data/episodes")
    shutil.rmtree(repo / ".dvc/cache")
    run(["dvc", "pull"], repo)
    assert (repo / "data/episodes/Breakout/probe/frames.bin").read_bytes() == before
    assert json.loads(run(["dvc", "status", "--json"], repo).stdout) == {}
