"""The collect stage as users drive it: the stage script, `dvc repro`, `dvc exp run -S`, push and pull
to a local remote and to an S3-compatible server (moto's, started from the registry package)."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from atarirep import params

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = {"env": "Breakout",
        "collect": {"num_envs": 4, "num_workers": 2, "min_episode_length": 16,
                    "pretrain": {"steps": 800}, "probe": {"steps": 1200}},
        "pretrain": {"methods": ["random_cnn", "stdim"], "epochs": 1, "batch_size": 16},
        "probe": {"baselines": ["majority"], "epochs": 2, "patience": 1}}


def run(args, cwd, check=True, **kwargs):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
           "PYTHONPATH": str(cwd)}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def _merge(base: dict, update: dict) -> dict:
    return {**base, **{k: _merge(base.get(k, {}), v) if isinstance(v, dict) else v for k, v in update.items()}}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A fresh git + DVC copy of this project with tiny default-profile amounts."""
    root = tmp_path_factory.mktemp("repo")
    for name in ("atarirep", "stages", "conf", "dvc.yaml", ".dvcignore", "pyproject.toml"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, root / name)
    default = yaml.safe_load((root / "conf/profile/default.yaml").read_text())
    (root / "conf/profile/default.yaml").write_text("# @package _global_\n" + yaml.safe_dump(_merge(default, TINY)))
    (root / "params.yaml").write_text(yaml.safe_dump(params.compose(root / "conf"), sort_keys=False))
    run(["git", "init", "-q"], root)
    run(["dvc", "init", "-q"], root)
    run(["dvc", "config", "core.analytics", "false"], root)
    run(["dvc", "config", "hydra.enabled", "true"], root)
    shutil.copytree(REPO / ".dvc/plots", root / ".dvc/plots")  # the offline plots page
    run(["dvc", "config", "plots.html_template", "plots/offline.html"], root)
    run(["dvc", "remote", "add", "-d", "local", str(tmp_path_factory.mktemp("remote"))], root)
    run(["git", "add", "-A"], root)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], root)
    return root


def test_committed_params_equal_the_composed_default_profile():
    assert yaml.safe_load((REPO / "params.yaml").read_text()) == params.compose(REPO / "conf")


def test_paper_profile_is_the_reference_protocol():
    paper = params.compose(REPO / "conf", ["profile=paper"])
    assert paper["collect"]["pretrain"] == {"steps": 100000, "splits": {"train": 0.8, "val": 0.2}}
    assert paper["collect"]["probe"] == {"steps": 50000, "splits": {"train": 0.7, "val": 0.1, "test": 0.2}}
    assert (paper["collect"]["num_envs"], paper["collect"]["min_episode_length"],
            paper["collect"]["entropy_threshold"], paper["collect"]["random_actions"]) == (8, 64, 0.6, "nonzero")


def test_dvc_repro_runs_the_whole_chain_then_is_a_no_op(repo):
    first = run(["dvc", "repro"], repo, timeout=600)
    for stage in ("collect", "pretrain@stdim", "probe@stdim", "probe@random_cnn", "probe_baseline@majority", "report"):
        assert f"Running stage '{stage}'" in first.stdout
    summary = json.loads((repo / "reports/collect.json").read_text())
    assert summary["probe"]["game"] == "Breakout" and summary["probe"]["test_frames"] > 0
    table = (repo / "reports/probe/tables/f1_by_game.csv").read_text()
    assert table.splitlines()[0].split(",")[1:] == ["majority", "random_cnn", "stdim"]
    second = run(["dvc", "repro"], repo)
    assert "didn't change" in second.stdout and "Running stage" not in second.stdout
    metrics = run(["dvc", "metrics", "show", "--json"], repo)
    assert "train_frames" in metrics.stdout and "across_categories" in metrics.stdout


def test_changing_a_probe_param_reruns_only_probe_and_report(repo):
    run(["dvc", "repro"], repo, timeout=600)
    result = run(["dvc", "exp", "run", "-S", "probe.lr=0.002"], repo, timeout=600)
    ran = {line.split("'")[1] for line in result.stdout.splitlines() if line.startswith("Running stage")}
    assert ran == {"probe@random_cnn", "probe@stdim", "probe_baseline@majority", "report"}


def test_plots_page_renders_offline(repo):
    run(["dvc", "repro"], repo, timeout=600)
    run(["dvc", "plots", "show", "-o", "plots_page"], repo)
    page = (repo / "plots_page/index.html").read_text()
    assert "cdn.jsdelivr" not in page and "vegaEmbed" in page and "f1_by_category" in page


def test_push_and_pull_through_the_local_remote(repo):
    run(["dvc", "repro"], repo)
    run(["dvc", "push"], repo)
    before = (repo / "data/episodes/probe/frames.bin").read_bytes()
    shutil.rmtree(repo / "data/episodes")
    shutil.rmtree(repo / ".dvc/cache")
    run(["dvc", "pull"], repo)
    assert (repo / "data/episodes/probe/frames.bin").read_bytes() == before


def test_exp_run_switches_the_game(repo):
    result = run(["dvc", "exp", "run", "-S", "env=SpaceInvaders", "-S", "collect.probe.steps=1600"], repo,
                 timeout=600)
    assert "Running stage 'collect'" in result.stdout
    assert json.loads((repo / "reports/collect.json").read_text())["probe"]["game"] == "SpaceInvaders"
    shown = run(["dvc", "exp", "show", "--json"], repo)
    assert "SpaceInvaders" in shown.stdout


@pytest.mark.parametrize("change, line", [
    ({"env": "Pongg"}, "error: game 'Pongg' has no RAM annotations in the 'latest' set; use one of asteroids"),
    ({"annotations": "newest"}, "error: annotation set 'newest' is unknown; use one of latest, paper"),
    ({"collect": {"probe": {"steps": -5}}}, "error: steps must be a positive integer, got -5"),
    ({"collect": {"probe": {"splits": {"train": 0.7, "val": 0.1, "test": 0.1}}}},
     "error: split fractions {'train': 0.7, 'val': 0.1, 'test': 0.1} must be positive and sum to 1"),
    ({"collect": {"num_env": 3}}, "error: params.yaml collect has unknown keys num_env"),
])
def test_stage_fails_on_bad_params_with_one_line_and_no_output(tmp_path, change, line):
    shutil.copytree(REPO / "stages", tmp_path / "stages")
    shutil.copytree(REPO / "atarirep", tmp_path / "atarirep")
    bad = _merge(yaml.safe_load((REPO / "params.yaml").read_text()), change)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(bad))
    result = run([sys.executable, "stages/collect.py", "out/pretrain", "out/probe", "out/summary.json"],
                 tmp_path, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().startswith(line) and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3_server():
    """moto's S3-compatible server on a loopback port, for the life of one test."""
    port = _free_port()
    server = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_push_and_pull_through_an_s3_compatible_server(repo, s3_server, monkeypatch):
    import boto3
    creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    for key, value in creds.items():
        monkeypatch.setenv(key, value)
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="atarirep")
    run(["dvc", "repro"], repo)
    run(["dvc", "remote", "add", "-f", "s3", "s3://atarirep/cache"], repo)
    run(["dvc", "remote", "modify", "s3", "endpointurl", s3_server], repo)
    run(["dvc", "push", "-r", "s3"], repo)
    listed = boto3.client("s3", endpoint_url=s3_server).list_objects_v2(Bucket="atarirep")
    assert listed["KeyCount"] > 0
    before = (repo / "data/episodes/pretrain/steps.csv.gz").read_bytes()
    shutil.rmtree(repo / "data/episodes")
    shutil.rmtree(repo / ".dvc/cache")
    run(["dvc", "pull", "-r", "s3"], repo)
    assert (repo / "data/episodes/pretrain/steps.csv.gz").read_bytes() == before


def test_games_list_adds_games_to_the_tables(repo):
    result = run(["dvc", "exp", "run", "-S", "games=[SpaceInvaders]", "-S", "collect.probe.steps=1600"], repo,
                 timeout=900)
    assert "Running stage 'probe_game@SpaceInvaders-stdim'" in result.stdout
    rows = [line.split(",")[0] for line in (repo / "reports/probe/tables/f1_by_game.csv").read_text().splitlines()]
    assert rows == ["game", "Breakout", "SpaceInvaders", "mean"]
    assert (repo / "reports/probe/tables/f1_by_variable_SpaceInvaders.md").exists()


def test_env_listed_again_in_games_is_refused(repo):
    result = run(["dvc", "exp", "run", "-S", "games=[breakout]"], repo, check=False, timeout=900)
    assert result.returncode != 0
    assert "error: params.yaml games repeats Breakout, breakout (env='Breakout' is always probed)" in result.stderr
    assert "Running stage 'pretrain_game" not in result.stdout  # refused by the chain's first stage
