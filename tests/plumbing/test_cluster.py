"""The stage graph on Dask (atarirep.plumbing.cluster): two local worker processes, each stage in its own scratch
copy of the project, sharing only an S3 object store (SeaweedFS, the DVC remote), leave the repository as a serial
`dvc repro` does; a worker killed mid-stage has its stage rerun elsewhere; bad input ends in one line with the
workspace untouched."""

import json
import os
import shutil
import sys

import pytest
import yaml

from atarirep.plumbing import cluster
from tests.conftest import BUCKET, KEY, SECRET, _free_ports, s3_client

pytestmark = pytest.mark.e2e  # a Dask cluster over the built repository (one `dvc repro`)

# On its first run under a Dask worker, the report stage kills that worker (a machine lost mid-stage); under
# `dvc repro` (no Dask worker among its ancestors) it does nothing.
KILL_ONCE = """import os, pathlib, time
import psutil
_marker = os.environ.get("ATAREP_TEST_KILL_WORKER_ONCE")
_worker = next((p for p in psutil.Process().parents() if "spawn_main" in " ".join(p.cmdline())), None)
if _marker and _worker and not pathlib.Path(_marker).exists():
    pathlib.Path(_marker).touch()
    _worker.kill()
    time.sleep(120)
"""


def _dvc(args, cwd, check=True):
    import subprocess

    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )
    if check and result.returncode != 0:
        raise AssertionError(f"dvc {args} failed:\n{result.stdout}\n{result.stderr}")
    return result


def _cli(args, cwd):
    import subprocess

    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "atarirep.plumbing.cluster", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _change(root) -> None:
    """The probe stage's and the report stage's code changed: the three probes (in parallel) and the report rerun."""
    probe = root / "stages/probe.py"
    probe.write_text(probe.read_text() + "# changed\n")
    script = root / "stages/report.py"
    script.write_text(KILL_ONCE + script.read_text())


def _lock(root) -> dict:
    return yaml.safe_load((root / "dvc.lock").read_text())["stages"]


def test_two_workers_leave_the_repository_as_serial_repro_does_even_when_one_dies(
    repo, tmp_path, monkeypatch, s3_server
):
    serial = tmp_path / "serial" / "repo"
    shutil.copytree(repo, serial, symlinks=True)
    for root in (repo, serial):
        _change(root)
    _dvc(["repro"], serial)

    # The head and the workers share only the S3 store (SeaweedFS), the key in their environment.
    _dvc(["remote", "add", "-d", "shared", f"s3://{BUCKET}/cluster"], repo)
    _dvc(["remote", "modify", "shared", "endpointurl", s3_server], repo)
    for name, value in {
        "AWS_ACCESS_KEY_ID": KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.setenv("ATAREP_TEST_KILL_WORKER_ONCE", str(tmp_path / "killed"))
    environment = dict(os.environ)
    summary = cluster.repro(repo, [], local=2, log=lambda line: None)
    assert dict(os.environ) == environment  # the nannies' OMP_NUM_THREADS=1 did not stay in this process

    assert s3_client(s3_server).list_objects_v2(Bucket=BUCKET, Prefix="cluster/")["KeyCount"] > 0
    assert (tmp_path / "killed").exists()  # a worker died in the report stage ...
    assert summary["stages"]["report"]["ran"]  # ... which ran again elsewhere
    ran = {name for name, s in summary["stages"].items() if s["ran"]}
    assert ran == {"probe@Breakout-random_cnn", "probe@Breakout-stdim", "probe_baseline@Breakout-majority", "report"}
    assert len({s["worker"] for s in summary["stages"].values()}) >= 2  # both workers took stages
    assert _lock(repo) == _lock(serial)  # every hash, dep, param and output the same
    assert json.loads(_dvc(["status", "--json"], repo).stdout) == {}
    assert "Running stage" not in _dvc(["repro"], repo).stdout  # the next `dvc repro` is a no-op
    for path in ("reports/probe/tables/f1_by_game.csv", "data/probes/Breakout/stdim/metrics.json"):
        assert (repo / path).read_bytes() == (serial / path).read_bytes()
    overheads = [s["seconds"]["overhead"] for s in summary["stages"].values()]
    assert max(overheads) < 120  # sanity; bench/bench_cluster.py measures it


def _unchanged(repo, run):
    lock, params = (repo / "dvc.lock").read_bytes(), (repo / "params.yaml").read_bytes()
    result = run()
    assert (repo / "dvc.lock").read_bytes() == lock and (repo / "params.yaml").read_bytes() == params
    return result


def test_a_scheduler_that_does_not_answer_is_one_line(repo, monkeypatch, capsys):
    _change(repo)
    monkeypatch.chdir(repo)
    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT_S", 2)
    address = f"tcp://127.0.0.1:{_free_ports(1)[0]}"
    assert _unchanged(repo, lambda: cluster.main(["repro", "--scheduler", address])) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: the Dask scheduler at {address} did not answer in 2 s (OSError); start one (`dask scheduler`, "
        f"workers with `dask worker {address}`) or run on this machine with --local N"
    ]


def test_a_scheduler_without_workers_is_one_line(repo, monkeypatch, capsys):
    from distributed import LocalCluster

    _change(repo)
    monkeypatch.chdir(repo)
    monkeypatch.setattr(cluster, "WORKERS_TIMEOUT_S", 1)
    with LocalCluster(n_workers=0, processes=False, dashboard_address=None) as empty:
        assert _unchanged(repo, lambda: cluster.main(["repro", "--scheduler", empty.scheduler_address])) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: the Dask scheduler at {empty.scheduler_address} has no workers after 1 s; start some "
        f"(`dask worker {empty.scheduler_address}`, or dask-jobqueue on Slurm/PBS) and run again"
    ]


def test_no_remote_is_one_line(repo):
    _dvc(["remote", "remove", "local"], repo)
    result = _unchanged(repo, lambda: _cli(["repro", "--local", "1"], repo))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: no DVC remote to exchange outputs through: add one with `dvc remote add -d shared <url>` (an S3 "
        "bucket or a directory every machine sees), or pass --remote NAME"
    ]


def test_a_worker_without_the_project_is_one_line(repo, tmp_path):
    """A real scheduler and a worker whose environment lacks atarirep: every package of this environment except
    the project's editable install and metadata, as on a machine where only dask was installed."""
    import subprocess
    import sysconfig
    from pathlib import Path

    _change(repo)
    packages = tmp_path / "site-packages"
    packages.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if "atarirep" not in entry.name:
            (packages / entry.name).symlink_to(entry)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    address = f"tcp://127.0.0.1:{_free_ports(1)[0]}"
    started = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "distributed.cli.dask_scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                address.rsplit(":", 1)[1],
                "--no-dashboard",
            ],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    try:
        started.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-S",
                    "-c",
                    f"import site, sys; site.addsitedir({str(packages)!r}); "
                    "from distributed.cli.dask_worker import main; sys.argv[0] = 'dask worker'; main()",
                    address,
                    "--nworkers",
                    "1",
                    "--nthreads",
                    "1",
                    "--no-dashboard",
                ],
                env=env,
                cwd=tmp_path,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        result = _unchanged(repo, lambda: _cli(["repro", "--scheduler", address], repo))
    finally:
        for process in reversed(started):
            process.kill()
            process.wait()
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: Dask worker tcp://127.0.0.1:") and "does not have atarirep installed" in line
    assert line.endswith(
        "install the project in the workers' environment (`pip install -e .` from a checkout) and start them again"
    )


def test_a_stage_that_fails_on_a_worker_leaves_the_workspace_as_it_was(repo):
    script = repo / "stages/report.py"
    script.write_text("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n" + script.read_text())
    before = {p: p.read_bytes() for p in (repo / "reports/probe").rglob("*") if p.is_file()}
    result = _unchanged(repo, lambda: _cli(["repro", "--local", "1"], repo))
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(
        "error: stage report failed on the cluster: ReproductionError: failed to reproduce 'report'"
    )
    assert result.stderr.rstrip().endswith(
        "the workspace is unchanged; fix it and run again (stages that finished are in the remote's cache)"
    )
    assert {p: p.read_bytes() for p in (repo / "reports/probe").rglob("*") if p.is_file()} == before


def test_a_stage_without_changes_does_not_start_a_cluster(repo):
    result = _cli(["repro", "--local", "1", "report"], repo)
    assert result.returncode == 0 and "every stage is up to date" in result.stdout
