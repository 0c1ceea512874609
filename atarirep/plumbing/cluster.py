"""The stage graph on a Dask cluster: every stage whose upstream stages are done runs at once, one per worker.

    python -m atarirep.plumbing.cluster repro [TARGET ...] [--local N | --scheduler tcp://HOST:8786] [--remote NAME]

Why not several `dvc repro` at once: DVC 3 has no parallel executor, and it locks the repository while it
reproduces (`.dvc/tmp/lock`, and a read/write lock on every dependency and output), so two `dvc repro`
in one workspace wait for each other or fail. dask4dvc ran stages in copies of the repository; so does
this, on DVC's own API, with the DVC remote as the only thing the machines share:

    head (this process, the workspace)                    worker (a Dask task per stage, own scratch folder)
    ----------------------------------                    ---------------------------------------------------
    dvc push: the remote holds every cached output
    DVC's graph; which stages' own deps changed
    submit a stage once its upstream stages are done -->  unpack the project (code, dvc.yaml, params.yaml,
      with the project's files, dvc.lock as updated       dvc.lock so far, uncached outputs), dvc pull the
      so far and the uncached outputs made so far         upstream stages' outputs, dvc repro --single-item
                                                          STAGE (runs it if it changed), dvc push its outputs
    collect each stage's dvc.lock entry and uncached  <--  -> its dvc.lock entry, uncached outputs (metrics,
      outputs                                              plots, reports), timings, the end of its log
    at the end, all at once: dvc.lock entries, uncached outputs, dvc pull of the cached ones, .gitignore

The workspace ends as a serial `dvc repro` leaves it: the same outputs and the same dvc.lock entries, so
the next `dvc repro` does nothing. Until every stage has succeeded the workspace is not touched, so a
failure (a stage's error, an unreachable scheduler, no remote, a worker without the project) ends with one
line and the workspace as it was. A worker that dies mid-stage has the stage rerun on another (Dask
reschedules its tasks); a half-run stage never reaches the remote or the workspace.

A stage that wants a GPU (it reads the `device` param and `device` is not cpu) asks for the Dask resource
"GPU" when some worker offers one (`dask worker --resources GPU=1`); CPU stages ask for nothing. Stage
processes get the head's OMP/MKL/OpenBLAS thread settings, not the Dask nanny's (it sets 1), so a stage
computes what it computes under `dvc repro` on the same kind of machine. Workers need the project installed
(the same environment) and the remote's credentials in their environment, as `dvc pull` would.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings
from concurrent.futures import CancelledError
from pathlib import Path
from typing import Any

from atarirep.plumbing.errors import UserError

CONNECT_TIMEOUT_S = 10  # a scheduler that does not answer in this time is reported, not waited for
WORKERS_TIMEOUT_S = 60  # a scheduler without workers after this long is reported
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
LOG_TAIL = 20  # lines of a stage's log the head keeps


# -- the head --------------------------------------------------------------------------------------
@contextlib.contextmanager
def _inside(folder: Path):
    """DVC's API resolves targets (and runs stages) against the working directory, not the Repo's root."""
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def project_archive(root: Path) -> bytes:
    """A tar.gz of the workspace as git sees it: tracked and untracked files that are not ignored (code, DVC
    files, params, uncached outputs), and .dvc/config; not the DVC cache or any cached output."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=root,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
        for name in sorted({*filter(None, listed), ".dvc/config"}):
            if (root / name).is_file():
                tar.add(root / name, arcname=name, recursive=False)
    return buffer.getvalue()


def _plan(repo, targets: list[str]) -> tuple[list[str], dict[str, list[str]], set[str], set[str]]:
    """(stages in DVC's order, upstream stages of each, the stages whose own deps or outs changed, the stages
    that read the `device` param)."""
    import networkx as nx
    from dvc.dependency.param import ParamsDependency
    from dvc.repo.reproduce import get_subgraph

    graph = repo.index.graph  # edges point from a stage to the stages it depends on
    stages = None
    if targets:
        stages = [info.stage for target in targets for info in repo.stage.collect_granular(target)]
    order = list(nx.dfs_postorder_nodes(get_subgraph(graph, stages)))  # what `dvc repro` walks, in its order
    upstream = {s.addressing: [u.addressing for u in graph.successors(s)] for s in order}
    changed = {name.split(":")[-1] for name in repo.status(targets=[s.addressing for s in order])}
    devices = {
        s.addressing for s in order if any(isinstance(d, ParamsDependency) and "device" in d.params for d in s.deps)
    }
    return [s.addressing for s in order], upstream, changed, devices


def _read_lock(root: Path) -> dict:
    """dvc.lock as DVC reads it for an update (an empty lock if there is none); read once per run, as the
    workspace's lock does not change until the end."""
    from dvc.utils.serialize import parse_yaml_for_update

    path = root / "dvc.lock"
    return (parse_yaml_for_update(path.read_text(), str(path)) if path.exists() else None) or {"schema": "2.0"}


def _lock_text(lock: dict, entries: dict[str, dict]) -> str:
    """`lock` with `entries` put in (existing stages in place, new ones at the end, as DVC writes it)."""
    from dvc.utils.serialize import dumps_yaml

    return dumps_yaml({**lock, "stages": {**(lock.get("stages") or {}), **entries}})


def _connect(scheduler: str | None, local: int | None, scratch: str):
    from dask import config
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, timeout=CONNECT_TIMEOUT_S), None
        except (OSError, TimeoutError) as err:
            raise UserError(
                f"the Dask scheduler at {scheduler} did not answer in {CONNECT_TIMEOUT_S} s "
                f"({type(err).__name__}); start one (`dask scheduler`, workers with `dask worker "
                f"{scheduler}`) or run on this machine with --local N"
            ) from None
    # The head reports a failed stage in one line; the local workers' own logs (they inherit this process's
    # stderr) would repeat it with a traceback. (repro restores this process's environment afterwards.)
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "critical")
    with config.set({"distributed.worker.daemon": False, "logging.distributed": "critical"}):
        cluster = LocalCluster(
            n_workers=local, threads_per_worker=1, processes=True, dashboard_address=None, local_directory=scratch
        )
    return Client(cluster), cluster


def _check_workers(client) -> None:
    """UserError naming a worker that cannot import the project (it could not run a stage)."""
    try:
        client.wait_for_workers(1, timeout=WORKERS_TIMEOUT_S)
    except TimeoutError:
        address = client.scheduler.address
        raise UserError(
            f"the Dask scheduler at {address} has no workers after {WORKERS_TIMEOUT_S} s; start some "
            f"(`dask worker {address}`, or dask-jobqueue on Slurm/PBS) and run again"
        ) from None
    try:
        versions = client.run(importlib.metadata.version, "atarirep", on_error="return")
    except OSError as err:
        raise UserError(f"the Dask workers did not answer ({err}); check them with `dask worker --help`") from None
    for worker, version in versions.items():
        if isinstance(version, BaseException):
            raise UserError(
                f"Dask worker {worker} does not have atarirep installed ({type(version).__name__}: "
                f"{version}); install the project in the workers' environment (`pip install -e .` "
                "from a checkout) and start them again"
            )


def _remote(repo, name: str | None) -> tuple[str, str]:
    """(the remote's name, its URL as workers must see it: a local directory made absolute)."""
    config = repo.config
    name = name or config["core"].get("remote")
    if not name:
        raise UserError(
            "no DVC remote to exchange outputs through: add one with `dvc remote add -d shared "
            "<url>` (an S3 bucket or a directory every machine sees), or pass --remote NAME"
        )
    if name not in config["remote"]:
        raise UserError(
            f"DVC remote {name!r} is not configured (known: {', '.join(config['remote']) or 'none'}); "
            f"add it with `dvc remote add {name} <url>`"
        )
    url = config["remote"][name]["url"]
    if "://" not in url:
        url = os.path.abspath(os.path.join(repo.root_dir, ".dvc", url)) if not os.path.isabs(url) else url
    return name, url


def repro(
    root: str | os.PathLike,
    targets: list[str],
    *,
    scheduler: str | None = None,
    local: int | None = None,
    remote: str | None = None,
    log=print,
) -> dict:
    """Run the changed stages of `targets` (every stage by default) on the cluster and leave the workspace at
    `root` as a serial `dvc repro` would. Returns a summary: per stage its worker, whether it ran, and the
    seconds of its command and of everything around it (the executor's overhead)."""
    from distributed import wait
    from dvc.repo import Repo

    root = Path(root).resolve()
    started = time.perf_counter()
    with _inside(root), Repo(str(root)) as repo:
        remote_name, remote_url = _remote(repo, remote)
        order, upstream, changed, uses_device = _plan(repo, targets)
    if not changed:
        log("every stage is up to date")
        return {"stages": {}, "wall_s": time.perf_counter() - started}

    scratch = tempfile.mkdtemp(prefix="atarirep-cluster-")
    client, cluster = None, None
    environment = dict(os.environ)  # a local cluster's nannies set OMP_NUM_THREADS=1 and more in this process
    try:
        client, cluster = _connect(scheduler, local, scratch)
        _check_workers(client)
        with _inside(root), Repo(str(root)) as repo:  # every cached output the workers may need, in the remote
            pushed = repo.push(remote=remote_name)
        log(f"pushed {pushed} files to remote {remote_name}; {len(changed)} of {len(order)} stages changed")
        params = _params(root)
        gpu = any("GPU" in (w.get("resources") or {}) for w in client.scheduler_info()["workers"].values())
        # Sent with each task, not scattered once: a scattered copy dies with its worker, and Dask then cancels
        # the tasks that need it instead of rerunning them elsewhere (about 2 MB here).
        project = project_archive(root)
        # The threads the stages run with: as in this process before the local cluster's nannies set them to 1
        # (floating-point sums split over other thread counts round differently: other encoder bytes)
        threads = {key: environment.get(key) for key in THREAD_VARS}

        lock = _read_lock(root)
        before = lock.get("stages") or {}
        results: dict[str, dict] = {}
        ran: dict[str, dict] = {}
        new_outputs: set[str] = set()  # stages that ran and wrote outputs other than the lock's
        waiting = list(order)
        running: dict[Any, str] = {}  # the futures submitted -> their stages
        while waiting or running:
            for name in list(waiting):
                if any(u in waiting or u in running.values() for u in upstream[name]):
                    continue
                waiting.remove(name)
                if name not in changed and not any(u in new_outputs for u in upstream[name]):
                    continue  # unchanged, and no output it depends on changed: serial repro skips it too
                # What the stages that ran changed, over the project as it was: uncached outputs and lock entries.
                overlay = {out: None for r in ran.values() for out in r["uncached_outs"]}
                overlay.update({path: data for r in ran.values() for path, data in r["uncached"].items()})
                lock_so_far = _lock_text(lock, {n: r["entry"] for n, r in ran.items()})
                wants_gpu = gpu and name in uses_device and params.get("device") != "cpu"
                with warnings.catch_warnings():  # "large object in the task graph": the project, on purpose
                    warnings.simplefilter("ignore", UserWarning)
                    future = client.submit(
                        run_stage,
                        name,
                        project,
                        overlay,
                        lock_so_far,
                        upstream[name],
                        remote_name,
                        remote_url,
                        threads,
                        name in changed,
                        key=f"stage-{name}-{time.time_ns()}",
                        pure=False,
                        resources={"GPU": 1} if wants_gpu else None,
                    )
                running[future] = name
                log(f"submitted {name}")
            try:
                done, _ = wait(list(running), return_when="FIRST_COMPLETED")
            except CancelledError:  # Dask gave up on a task (it killed more workers than allowed-failures)
                done = [future for future in running if future.done()]
            for future in done:
                name = running.pop(future)
                try:
                    result = future.result()
                except (Exception, CancelledError) as err:  # the stage's own error (a dead worker's task is rerun)
                    for other in running:
                        other.cancel()
                    raise UserError(
                        f"stage {name} failed on the cluster: {err}; the workspace is unchanged; "
                        "fix it and run again (stages that finished are in the remote's cache)"
                    ) from None
                results[name] = result
                if result["ran"]:
                    ran[name] = result
                    if (result["entry"] or {}).get("outs") != (before.get(name) or {}).get("outs"):
                        new_outputs.add(name)
                log(
                    f"{name}: {'ran' if result['ran'] else 'unchanged'} on {result['worker']} "
                    f"({result['seconds']['command']:.1f} s command, {result['seconds']['overhead']:.1f} s around it)"
                )
        _apply(root, lock, ran, remote_name, order)
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
        shutil.rmtree(scratch, ignore_errors=True)
        os.environ.clear()
        os.environ.update(environment)
    return {
        "stages": {
            name: {k: v for k, v in r.items() if k in ("worker", "ran", "seconds")} for name, r in results.items()
        },
        "wall_s": time.perf_counter() - started,
    }


def _params(root: Path) -> dict:
    import yaml

    path = root / "params.yaml"
    return (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}


def _apply(root: Path, lock: dict, ran: dict[str, dict], remote: str, order: list[str]) -> None:
    """Put every stage that ran into the workspace at once: its uncached outputs, its dvc.lock entry, its cached
    outputs from the remote (dvc pull) and their .gitignore lines, as `dvc repro` would have left them."""
    from dvc.repo import Repo

    names = [name for name in order if name in ran]
    for name in names:
        for out in ran[name]["uncached_outs"]:  # an uncached output is replaced whole, as a stage rewrites it
            path = root / out
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        for rel, data in ran[name]["uncached"].items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
    text = _lock_text(lock, {name: ran[name]["entry"] for name in names})
    (root / "dvc.lock.cluster").write_text(text)
    os.replace(root / "dvc.lock.cluster", root / "dvc.lock")
    with _inside(root), Repo(str(root)) as repo:
        repo.pull(targets=names, remote=remote)
        with repo.scm_context:
            for name in names:
                for info in repo.stage.collect_granular(name):
                    info.stage.ignore_outs()


# -- a worker --------------------------------------------------------------------------------------
def run_stage(
    name: str,
    project: bytes,
    overlay: dict[str, bytes | None],
    lock: str,
    upstream: list[str],
    remote: str,
    remote_url: str,
    threads: dict[str, str | None],
    force: bool,
) -> dict:
    """Run stage `name` in a scratch copy of the project (a Dask task): its upstream stages' outputs pulled from
    `remote`, `dvc repro --single-item` if it changed (`force`: the head saw it changed), its outputs pushed.
    Returns its dvc.lock entry, its uncached outputs' bytes, whether it ran, the worker and timings; raises
    RuntimeError with the end of its log on failure."""
    from dvc.repo import Repo
    from dvc.utils.serialize import load_yaml

    started = time.perf_counter()
    base = _worker_directory()
    scratch = Path(tempfile.mkdtemp(prefix="stage-", dir=base))
    log_path = scratch.with_suffix(".log")
    saved_env = {key: os.environ.get(key) for key in (*THREAD_VARS, "PYTHONPATH")}
    try:
        with tarfile.open(fileobj=io.BytesIO(project), mode="r:gz") as tar:
            tar.extractall(scratch, filter="data")
        for rel, data in overlay.items():  # None: an uncached output rewritten by a stage, removed first
            path = scratch / rel
            if data is None:
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
        (scratch / "dvc.lock").write_text(lock)
        subprocess.run(["git", "init", "-q"], cwd=scratch, check=True)
        # The stage runs the project's code as shipped (its deps' hashes are of it) with the head's threads.
        for key, value in threads.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(scratch), saved_env["PYTHONPATH"]]))
        with _output_to(log_path), _inside(scratch), Repo(str(scratch)) as repo:
            with repo.config.edit("local") as local:  # a directory remote's path as this machine sees it
                local.setdefault("remote", {}).setdefault(remote, {})["url"] = remote_url
            if upstream:
                repo.pull(targets=upstream, remote=remote)
                # ... with the .gitignore lines `dvc repro` writes beside each output: they are part of a
                # directory dep's hash (data/probes holds data/probes/GAME/METHOD/.gitignore)
                with repo.scm_context:
                    for info in (i for up in upstream for i in repo.stage.collect_granular(up)):
                        info.stage.ignore_outs()
            ready = time.perf_counter()
            stage = next(iter(info.stage for info in repo.stage.collect_granular(name)))
            uncached_outs = [out.def_path for out in stage.outs if not out.use_cache]
            # Its own outputs are not here (only the head has them): missing outputs do not make it run, as
            # they would under `dvc repro`; changed deps, command or params do, and whatever the head saw.
            with repo.lock:  # DVC checks a stage's status under the repository's lock
                changed = force or stage.changed(allow_missing=True)
            stages = repo.reproduce(name, single_item=True, force=True) if changed else []
            command = time.perf_counter() - ready
            if stages:
                repo.push(targets=[name], remote=remote)
        entry = (load_yaml(scratch / "dvc.lock") or {}).get("stages", {}).get(name)
        uncached = {}
        for out in uncached_outs:
            path = scratch / out
            files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path] if path.exists() else []
            uncached.update({str(p.relative_to(scratch)): p.read_bytes() for p in files})
        total = time.perf_counter() - started
        return {
            "name": name,
            "ran": bool(stages),
            "entry": entry,
            "uncached": uncached,
            "uncached_outs": uncached_outs,
            "worker": f"{os.uname().nodename}:{os.getpid()}",
            "seconds": {"command": round(command, 3), "overhead": round(total - command, 3)},
        }
    except Exception as err:
        tail = _tail(log_path)
        raise RuntimeError(f"{type(err).__name__}: {err}" + (f" (its log ends: {tail})" if tail else "")) from None
    finally:
        for key, value in saved_env.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
        shutil.rmtree(scratch, ignore_errors=True)
        log_path.unlink(missing_ok=True)


def _worker_directory() -> str:
    try:
        from distributed import get_worker

        return get_worker().local_directory
    except ValueError:  # called outside a worker (tests)
        return tempfile.gettempdir()


class _output_to:
    """Send this process's stdout and stderr (file descriptors 1 and 2, so the stage's own process too) to a file."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        sys.stdout.flush(), sys.stderr.flush()
        self.file = open(self.path, "ab")
        self.saved = os.dup(1), os.dup(2)
        os.dup2(self.file.fileno(), 1)
        os.dup2(self.file.fileno(), 2)

    def __exit__(self, *exc):
        sys.stdout.flush(), sys.stderr.flush()
        os.dup2(self.saved[0], 1)
        os.dup2(self.saved[1], 2)
        os.close(self.saved[0])
        os.close(self.saved[1])
        self.file.close()


def _tail(path: Path) -> str:
    if not path.exists():
        return ""
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("error:", "ERROR"))]
    return " | ".join(errors[-2:] or lines[-3:])


# -- the command -----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m atarirep.plumbing.cluster", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("repro", help="run the changed stages on a Dask cluster")
    run.add_argument("targets", nargs="*", help="stages (and their upstream) to bring up to date; default: all")
    where = run.add_mutually_exclusive_group()
    where.add_argument("--scheduler", help="a running Dask scheduler, e.g. tcp://host:8786")
    where.add_argument("--local", type=int, metavar="N", help="start N worker processes on this machine")
    run.add_argument("--remote", help="the DVC remote the workers exchange outputs through (default: the default)")
    args = parser.parse_args(argv)
    local = args.local if args.local is not None or args.scheduler else (os.cpu_count() or 1)
    if local is not None and local < 1:
        parser.error("--local needs at least 1 worker")
    from dvc.exceptions import DvcException

    try:
        summary = repro(".", args.targets, scheduler=args.scheduler, local=local, remote=args.remote)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except DvcException as err:  # the project itself: not a DVC repository, a broken dvc.yaml, ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"error: DVC: {first}; fix it (`dvc repro --dry` shows the same) and run again", file=sys.stderr)
        return 2
    ran = [name for name, s in summary["stages"].items() if s["ran"]]
    print(
        f"ran {len(ran)} stages on the cluster in {summary['wall_s']:.1f} s; the workspace is as `dvc repro` leaves it"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
