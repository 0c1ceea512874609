"""The default profile's stage graph on a local Dask cluster (atarirep.plumbing.cluster, --local N) against a serial
`dvc repro`, same machine, same run. Prints one JSON object.

Two fresh copies of the project (code, conf/, dvc.yaml; no outputs, no cache), each a git + DVC repository
with its own directory remote: one runs `dvc repro`, the other `atarirep.plumbing.cluster.repro(local=N)`. Reported:
both wall times and the speed-up; the critical path (the longest chain of stage commands, from the cluster
run's own command times: no executor can beat it); per stage, its command's seconds and the executor's
overhead around it (unpacking the project, pulling inputs, DVC's checks, pushing outputs; goal under 2 s);
and whether both runs wrote the same dvc.lock: where an entry differs, which files of which outputs differ and in
what (JSON keys, TSV columns), and whether the runs computed the same results, leaving aside figures of seconds
(steps per second, saliency's seconds per frame: no two runs agree on them, serial or not) and IMPALA's stages
(its asynchronous actors make every run differ).

Usage: python bench/bench_cluster.py [--workers 2] [--tiny] [--json out.json]
  --tiny: the test suite's tiny amounts (tests/conftest.py TINY) instead of the default profile's.
On 2 cores expect no gain (the stages already use both cores); on more cores or GPUs the gain is bounded by
the critical path.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from report import finish

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from atarirep.plumbing import cluster, params  # noqa: E402

PROJECT = ("atarirep", "stages", "conf", "dvc.yaml", ".dvcignore", "pyproject.toml")
NONDETERMINISTIC = (
    "train_multitask@",
    "sample_multitask@",
    "evaluate_multitask@",
    "saliency_multitask@",
    "report_agents",
)  # IMPALA's actors are asynchronous: no two runs are alike


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
    for args in (
        ["git", "init", "-q"],
        [sys.executable, "-m", "dvc", "init", "-q"],
        [sys.executable, "-m", "dvc", "remote", "add", "-d", "local", "../remote"],
    ):
        _run(args, root)


# Figures of how long a stage took, which differ between any two runs (serial ones too); the rest of an output
# holds what the stage computed.
WALL_CLOCK = {"steps_per_s", "samples_per_s", "seconds", "seconds_per_frame", "learner_utilisation"}


def _leaves(value, prefix=""):
    if isinstance(value, (dict, list)):
        items = value.items() if isinstance(value, dict) else enumerate(value)
        return {k: v for key, item in items for k, v in _leaves(item, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): value}


def _file_difference(a: Path, b: Path) -> set[str]:
    """The names of what differs between two versions of one file: JSON keys (leaves), TSV columns (dvclive
    plots), else the file's name."""
    if not (a.is_file() and b.is_file()):
        return {"(missing)"}
    if a.read_bytes() == b.read_bytes():
        return set()
    if a.suffix == ".json":
        x, y = _leaves(json.loads(a.read_text())), _leaves(json.loads(b.read_text()))
        return {key for key in set(x) | set(y) if x.get(key) != y.get(key)}
    if a.suffix == ".tsv":
        x, y = ([line.split("\t") for line in p.read_text().splitlines()] for p in (a, b))
        if len(x) == len(y) and x and x[0] == y[0]:
            return {x[0][i] for i in range(len(x[0])) if [r[i] for r in x[1:]] != [r[i] for r in y[1:]]}
    return {a.name}


def _difference(serial: dict, parallel: dict | None, roots: tuple[Path, Path]) -> tuple[list[str], bool]:
    """Where two dvc.lock entries of one stage differ (the deps, outs or keys that do; for an output, its files
    that differ and in what), and whether only wall-clock figures do."""
    if parallel is None:
        return ["missing in the cluster's lock"], False
    found, wall_clock_only = [], True
    for kind in ("deps", "outs"):
        a = {entry["path"]: entry for entry in serial.get(kind, [])}
        b = {entry["path"]: entry for entry in parallel.get(kind, [])}
        for path in sorted(set(a) | set(b)):
            if a.get(path) == b.get(path):
                continue
            files = (
                [path]
                if (roots[0] / path).is_file()
                else sorted(str(f.relative_to(roots[0])) for f in (roots[0] / path).rglob("*") if f.is_file())
            )
            what = {f: _file_difference(roots[0] / f, roots[1] / f) for f in files}
            what = {f: names for f, names in what.items() if names}
            wall_clock_only &= bool(what) and all(
                name.rsplit(".", 1)[-1] in WALL_CLOCK for names in what.values() for name in names
            )
            found.append(
                f"{kind}: {path}: "
                + ("; ".join(f"{f} ({', '.join(sorted(names))})" for f, names in what.items()) or "same files")
            )
    keys = [key for key in ("cmd", "params") if serial.get(key) != parallel.get(key)]
    return found + keys, wall_clock_only and not keys


def critical_path(root: Path, seconds: dict[str, float]) -> float:
    """The longest chain of command seconds through the stage graph."""
    import networkx as nx
    from dvc.repo import Repo

    with cluster._inside(root), Repo(str(root)) as repo:
        graph = repo.index.graph
        longest = {}
        for stage in nx.dfs_postorder_nodes(graph):  # dependencies first
            before = [longest[u.addressing] for u in graph.successors(stage)]
            longest[stage.addressing] = seconds.get(stage.addressing, 0.0) + max(before, default=0.0)
    return max(longest.values(), default=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the JSON here (bench/results/NAME.json)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        serial, parallel = Path(tmp) / "serial" / "repo", Path(tmp) / "cluster" / "repo"
        for root in (serial, parallel):
            make_project(root, args.tiny)
        started = time.perf_counter()
        _run([sys.executable, "-m", "dvc", "repro"], serial)
        serial_s = time.perf_counter() - started
        os.environ["DVC_NO_ANALYTICS"] = "1"
        with contextlib.redirect_stdout(sys.stderr):  # DVC's "to track the changes with git" hint
            summary = cluster.repro(parallel, [], local=args.workers, log=lambda line: None)
        stages = summary["stages"]
        commands = {name: s["seconds"]["command"] for name, s in stages.items()}
        overheads = sorted(s["seconds"]["overhead"] for s in stages.values())
        locks = [yaml.safe_load((root / "dvc.lock").read_text())["stages"] for root in (serial, parallel)]
        differ = {
            name: _difference(locks[0][name], locks[1].get(name), (serial, parallel))
            for name in sorted(locks[0])
            if locks[0][name] != locks[1].get(name)
        }
        computed_differently = sorted(
            name for name, (_, wall_clock) in differ.items() if not wall_clock and not name.startswith(NONDETERMINISTIC)
        )
        report = {
            "profile": "tiny" if args.tiny else "default",
            "workers": args.workers,
            "stages": len(stages),
            "serial_dvc_repro_s": round(serial_s, 1),
            "cluster_s": round(summary["wall_s"], 1),
            "speedup": round(serial_s / summary["wall_s"], 2),
            "critical_path_s": round(critical_path(parallel, commands), 1),
            "sum_of_commands_s": round(sum(commands.values()), 1),
            "overhead_per_stage_s": {
                "median": overheads[len(overheads) // 2],
                "max": overheads[-1],
                "under_2s": sum(o < 2 for o in overheads),
            },
            "same_dvc_lock": not differ,
            # but for IMPALA's stages and figures of seconds: the same results as the serial run
            "same_results": not computed_differently,
            "computed_differently": computed_differently,
            "lock_entries_that_differ": {
                name: {"wall_clock_only": wall_clock, "where": where} for name, (where, wall_clock) in differ.items()
            },
            "per_stage": {name: {"worker": s["worker"], **s["seconds"]} for name, s in stages.items()},
        }
    finish(report, args.json)


if __name__ == "__main__":
    main()
