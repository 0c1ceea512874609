"""Several games as queued DVC experiments (`dvc exp run --queue -S env=<game>`, `dvc queue start -j 2`),
gathered by `python -m atarirep.plumbing.experiments report` into the report stage's multi-game tables without
rerunning them; and its refusals (no experiments, a game twice, a queued, failed or unknown experiment).

Each test works on its own copy of the tiny Breakout repository (`repo` in conftest.py). What the experiments run:
- `pong` (`-S env=Pong` and SHRINK): Pong's whole chain at tiny scale: check_params, collect_policy, collect x2
  (800/1200 steps), pretrain and probe random_cnn, the majority baseline, PPO for 512 steps (2 checkpoints, both
  kept), evaluate_agent, probe_checkpoints (the rl_agent column), saliency, report_agents, report.
- `breakout` (`-S env=Breakout`): the baseline's own game and params, so DVC finds every stage up to date and runs
  none (the cheapest second game: a second fresh chain doubles the test's time on 2 cores).
- `bad` (`-S games=[NoSuchGame]`): check_params refuses the game, so the experiment fails. (`-S env=NoSuchGame`
  is refused before it is queued: conf/env/ has no such file.)
"""

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from atarirep import annotations

pytestmark = pytest.mark.e2e  # queued `dvc exp run`s of whole chains

BIN = Path(sys.executable).parent
SHRINK = [
    "-S",
    "pretrain.methods=[random_cnn]",
    "-S",
    "probe.epochs=1",
    "-S",
    "train_agent.ppo.total_steps=512",
    "-S",
    "train_agent.ppo.num_steps=64",
    "-S",
    "train_agent.ppo.checkpoint_every=256",
]
QUEUE_TIMEOUT = 900  # seconds for the queued runs (about 2-6 min on a loaded 2-core box)


def run(args, cwd, check=True, timeout=300):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(cwd)}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def report(repo, *args, check=True):
    return run([sys.executable, "-m", "atarirep.plumbing.experiments", "report", *args], repo, check=check)


def refused(repo, *args) -> str:
    """The one error line of a refused report (exit code 2)."""
    result = report(repo, *args, check=False)
    assert result.returncode == 2 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, (
        result.stderr
    )
    return result.stderr


def exp_refs(repo) -> dict[str, str]:
    """{experiment name: commit} from git's experiment refs."""
    out = run(["git", "for-each-ref", "--format=%(refname) %(objectname)", "refs/exps"], repo).stdout
    return {line.split()[0].rsplit("/", 1)[1]: line.split()[1] for line in out.splitlines()}


def wait_for_queue(repo, expected: set[str], deadline: float) -> dict[str, str]:
    """{task name: state} from `dvc queue status` once no task is queued or running; fails past `deadline`.

    Asks `dvc queue status` (half a CPU second, taken from the runs) every 20 s, or at once when git has refs
    for all the `expected` experiments (a few milliseconds to check)."""
    asked = -math.inf
    while True:
        if time.monotonic() - asked > 20 or expected <= set(exp_refs(repo)):
            asked, status = time.monotonic(), run(["dvc", "queue", "status"], repo).stdout
            rows = [line.split() for line in status.splitlines()[1:] if line.strip() and not line.startswith("Worker")]
            states = {row[1]: row[-1] for row in rows}  # Task, Name, Created (2 words), Status
            if states and not {"Queued", "Running"} & set(states.values()):
                return states
            if time.monotonic() > deadline:
                raise AssertionError(f"queued experiments still unfinished after {QUEUE_TIMEOUT} s:\n{status}")
        time.sleep(2)


def git_status(repo) -> list[str]:
    return run(["git", "status", "--porcelain", "--untracked-files=all"], repo).stdout.splitlines()


def table(text: str) -> dict[str, dict[str, str]]:
    """A Markdown table as {row name: {column: printed cell}}."""
    lines = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()]
    header = lines[0]
    return {row[0]: dict(zip(header[1:], row[1:], strict=True)) for row in lines[2:]}


def own_table(repo, rev: str, name: str) -> str:
    """An experiment's own report-stage table, from its commit (reports/probe is committed with it)."""
    return run(["git", "show", f"{rev}:reports/probe/tables/{name}"], repo).stdout


def test_queued_games_are_gathered_into_one_report_without_rerunning(repo):
    assert {"pong", "breakout"} <= set(annotations.annotated_games("latest"))  # both have RAM labels
    unknown = run(["dvc", "exp", "run", "--queue", "-n", "bad", "-S", "env=NoSuchGame"], repo, check=False)
    assert unknown.returncode != 0 and "Could not find 'env/NoSuchGame'" in unknown.stderr  # not even queued
    run(["dvc", "exp", "run", "--queue", "-n", "bad", "-S", "games=[NoSuchGame]"], repo)  # first: fails at once
    run(["dvc", "exp", "run", "--queue", "-n", "pong", "-S", "env=Pong", *SHRINK], repo)
    run(["dvc", "exp", "run", "--queue", "-n", "breakout", "-S", "env=Breakout"], repo)
    try:
        run(["dvc", "queue", "start", "-j", "2"], repo)
        states = wait_for_queue(repo, {"pong", "breakout"}, time.monotonic() + QUEUE_TIMEOUT)
    finally:
        run(["dvc", "queue", "stop", "--kill"], repo, check=False)  # no worker outlives the test
    assert states == {"bad": "Failed", "pong": "Success", "breakout": "Success"}, "\n".join(
        run(["dvc", "queue", "logs", name], repo, check=False).stdout[-3000:] for name in ("pong", "breakout")
    )

    refs, before = exp_refs(repo), set(git_status(repo))
    line = refused(repo)  # all of the baseline's experiments: one failed
    assert "experiment bad failed" in line and "dvc queue remove bad" in line
    done = report(repo, "pong", "breakout")
    assert "Breakout (breakout)" in done.stdout and "Pong (pong)" in done.stdout
    # nothing ran: the same experiments, the same workspace but for the new report folder
    assert exp_refs(repo) == refs and "Running stage" not in done.stdout + done.stderr
    assert all(change.startswith("?? reports/experiments/") for change in set(git_status(repo)) - before)

    out = repo / "reports/experiments"
    for name in ("f1_by_game.md", "accuracy_by_game.md"):
        ours = table((out / "tables" / name).read_text())
        assert list(ours) == ["Breakout", "Pong", "mean"]
        for game, exp in (("Pong", "pong"), ("Breakout", "breakout")):
            theirs = table(own_table(repo, refs[exp], name))[game]
            assert {m: ours[game][m] for m in theirs} == theirs  # to the printed digits
        assert ours["Pong"]["ST-DIM"] == "-" and ours["mean"]["ST-DIM"] == "-"  # pong did not pretrain ST-DIM
    for game, exp in (("Pong", "pong"), ("Breakout", "breakout")):
        assert (out / f"tables/f1_by_variable_{game}.md").read_text() == own_table(
            repo, refs[exp], f"f1_by_variable_{game}.md"
        )
    by_game = pd.read_csv(out / "tables/f1_by_game.csv", index_col="game")
    assert by_game.loc["mean", "majority"] == pytest.approx(
        by_game.loc[["Breakout", "Pong"], "majority"].mean(), abs=1e-6
    )
    by_category = pd.read_csv(out / "tables/f1_by_category.csv", index_col="category")
    assert by_category.loc["across_categories", "majority"] == by_game.loc["mean", "majority"]
    assert {p.name for p in (out / "figures").iterdir()} >= {"f1_by_game.png", "f1_by_category.png"}

    record = json.loads((out / "experiments.json").read_text())
    assert record["games"] == {"Breakout": "breakout", "Pong": "pong"}
    experiments = {e["name"]: e for e in record["experiments"]}
    assert experiments["pong"]["rev"] == refs["pong"] and experiments["breakout"]["rev"] == refs["breakout"]
    assert experiments["breakout"]["params"] == {}
    assert experiments["pong"]["params"] == {
        "env": "Pong",
        "games": ["Pong"],
        "pretrain.methods": ["random_cnn"],
        "probe.epochs": 1,
        "report.methods": ["random_cnn"],
        "train_agent.ppo.checkpoint_every": 256,
        "train_agent.ppo.num_steps": 64,
        "train_agent.ppo.total_steps": 512,
    }
    assert record["baseline"] == run(["git", "rev-parse", "HEAD"], repo).stdout.strip()


def test_refusals_and_the_report_stages_own_numbers(repo):
    out = repo / "reports/experiments"
    assert "has no experiments" in refused(repo) and not out.exists()  # nothing half-written
    # `dvc exp save` records the workspace as an experiment (nothing runs): the baseline's Breakout study
    run(["dvc", "exp", "save", "-n", "first"], repo)
    report(repo)
    # the same numbers as the report stage: every table and summary.json byte for byte
    stage = repo / "reports/probe"
    assert sorted(p.name for p in (out / "tables").iterdir()) == sorted(p.name for p in (stage / "tables").iterdir())
    for path in (stage / "tables").iterdir():
        assert (out / "tables" / path.name).read_bytes() == path.read_bytes(), path.name
    assert (out / "summary.json").read_bytes() == (stage / "summary.json").read_bytes()
    written = (out / "experiments.json").read_text()

    run(["dvc", "exp", "save", "-n", "second"], repo)
    line = refused(repo)
    assert "first" in line and "second" in line and "Breakout" in line
    assert (out / "experiments.json").read_text() == written  # the last good report is left whole
    report(repo, "second")
    assert json.loads((out / "experiments.json").read_text())["games"] == {"Breakout": "second"}

    run(["dvc", "exp", "run", "--queue", "-n", "later", "-S", "env=Boxing"], repo)  # no worker: it stays queued
    assert "still queued" in refused(repo, "first", "later")
    assert "no experiment 'nosuch'" in refused(repo, "nosuch")
    run(["dvc", "queue", "remove", "later"], repo)
