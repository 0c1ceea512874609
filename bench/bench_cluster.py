"""The default profile's stage graph on a local Dask cluster (atarirep.cluster, --local N) against a serial
`dvc repro`, same machine, same run. Prints one JSON object.

Two fresh copies of the project (code, conf/, dvc.yaml; no outputs, no cache), each a git + DVC repository
with its own directory remote: one runs `dvc repro`, the other `atarirep.cluster.repro(local=N)`. Reported:
both wall times and the speed-up; the critical path (the longest chain of stage commands, from the cluster
run's own command times: no executor can beat it); per stage, its command's seconds and the executor's
overhead around it (unpacking the project, pulling inputs, DVC's checks, pushing outputs; goal under 2 s);
and whether both runs wrote the same dvc.lock (IMPALA's stages aside: its asynchronous actors make every run
differ, serial or not).

Usage: python bench/bench_cluster.py [--workers 2] [--tiny]
  --tiny: the test suite's tiny amounts (tests/conftest.py TINY) instead of the default profile's.
On 2 cores expect no gain (the stages already use both cores); on more cores or GPUs the gain is bounded by
the critical path.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from atarirep import cluster, params  # noqa: E402

PROJECT = ("atarirep", "stages", "conf", "dvc.yaml", ".dvcignore", "pyproject.toml")
NONDETERMINISTIC = ("train_multitask@", "sample_multitask@", "evaluate_multitask@", "saliency_multitask@",
                    "report_agents")   # IMPALA's actors are asynchronous: no two runs are alike


def _run(args, cwd) -> None:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{args} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")


def make_project(root: Path, tiny: bool) -> None:
    root.mkdir(parents=True)
    for name in PROJECT:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, root / name)
    if tiny:
        sys.path.insert(0, str(REPO / "tests"))
        from conftest import TINY, _merge

        default = yaml.safe_load((root / "conf/profile/default.yaml").read_text())
        (root / "conf/profile/default.yaml").write_text("# @package _global_\n" + yaml.safe_dump(_merge(default, TINY)))
    (root / "params.yaml").write_text(yaml.safe_dump(params.compose(root / "conf"), sort_keys=False))
    for args in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"],
                 [sys.executable, "-m", "dvc", "remote", "add", "-d", "local", "../remote"]):
        _run(args, root)


def _difference(serial: dict, parallel: dict | None) -> list[str]:
    """Where two dvc.lock entries of one stage differ: the paths (deps, outs) or keys (cmd, params) that do."""
    if parallel is None:
        return ["missing in the cluster's lock"]
    found = []
    for kind in ("deps", "outs"):
        a = {entry["path"]: entry for entry in serial.get(kind, [])}
        b = {entry["path"]: entry for entry in parallel.get(kind, [])}
        found += [f"{kind}: {path}" for path in sorted(set(a) | set(b)) if a.get(path) != b.get(path)]
    found += [key for key in ("cmd", "params") if serial.get(key) != parallel.get(key)]
    return found


def critical_path(root: Path, seconds: dict[str, float]) -> float:
    """The longest chain of command seconds through the stage graph."""
    from dvc.repo import Repo
    import networkx as nx

    with cluster._inside(root), Repo(str(root)) as repo:
        graph = repo.index.graph
        longest = {}
        for stage in nx.dfs_postorder_nodes(graph):     # dependencies first
            before = [longest[u.addressing] for u in graph.successors(stage)]
            longest[stage.addressing] = seconds.get(stage.addressing, 0.0) + max(before, default=0.0)
    return max(longest.values(), default=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        serial, parallel = Path(tmp) / "serial" / "repo", Path(tmp) / "cluster" / "repo"
        for root in (serial, parallel):
            make_project(root, args.tiny)
        started = time.perf_counter()
        _run([sys.executable, "-m", "dvc", "repro"], serial)
        serial_s = time.perf_counter() - started
        os.environ["DVC_NO_ANALYTICS"] = "1"
        summary = cluster.repro(parallel, [], local=args.workers, log=lambda line: None)
        stages = summary["stages"]
        commands = {name: s["seconds"]["command"] for name, s in stages.items()}
        overheads = sorted(s["seconds"]["overhead"] for s in stages.values())
        locks = [yaml.safe_load((root / "dvc.lock").read_text())["stages"] for root in (serial, parallel)]
        differ = sorted(name for name in locks[0] if locks[0][name] != locks[1].get(name))
        report = {
            "machine": {"cpus": os.cpu_count()}, "profile": "tiny" if args.tiny else "default",
            "workers": args.workers, "stages": len(stages),
            "serial_dvc_repro_s": round(serial_s, 1), "cluster_s": round(summary["wall_s"], 1),
            "speedup": round(serial_s / summary["wall_s"], 2),
            "critical_path_s": round(critical_path(parallel, commands), 1),
            "sum_of_commands_s": round(sum(commands.values()), 1),
            "overhead_per_stage_s": {"median": overheads[len(overheads) // 2], "max": overheads[-1],
                                     "under_2s": sum(o < 2 for o in overheads)},
            "same_dvc_lock": not [n for n in differ if not n.startswith(NONDETERMINISTIC)],
            "lock_entries_that_differ": {name: _difference(locks[0][name], locks[1].get(name)) for name in differ},
            "per_stage": {name: {"worker": s["worker"], **s["seconds"]} for name, s in stages.items()},
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
