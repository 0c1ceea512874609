"""Several games as queued DVC experiments, gathered into one report without running anything.

Each experiment studies its own game(s) in its own commit (`dvc exp run --queue -S env=Pong`, ...,
`dvc queue start -j 2`); this module reads the finished ones and writes the report stage's multi-game
tables for all their games:

    python -m atarirep.plumbing.experiments report [--out reports/experiments] [EXP ...]

Without EXP it takes every experiment of the workspace's baseline commit (HEAD), as `dvc exp show` lists
them; with EXP, those named (a name or a commit prefix). Per experiment it reads, at the experiment's
commit through DVC's API, the committed params.yaml (its games and the report's methods) and the probe
stage's per-variable scores (`data/probes/<game>/<method>/scores.csv`, from the local DVC cache, where the
experiment's outputs were stored), then builds every table with atarirep.reports.probes exactly as the `report`
stage does (`load_results`, `tables`, `figures`, `summary`, `save`). `experiments.json` beside them says
which experiment gave which game, its params that differ from the baseline's and its commit.

A game covered by two of the experiments taken is refused (name the one to keep), as is an experiment that
is still queued or running, or failed; nothing is half-written (the folder is replaced whole).
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from atarirep.plumbing.errors import UserError, run_stage

DEFAULT_OUT = "reports/experiments"
_ABSENT = object()


@dataclass(frozen=True)
class Experiment:
    """One experiment of the baseline commit, as `dvc exp show` lists it."""

    name: str
    rev: str  # the experiment's commit (a queued or failed one: its queue entry)
    state: str  # success, queued, running or failed


def baseline_and_experiments(repo) -> tuple[str, list[Experiment]]:
    """(the baseline commit, its experiments, newest first) of an open dvc.repo.Repo."""
    from dvc.exceptions import DvcException

    try:
        states = repo.experiments.show(hide_workspace=True)  # HEAD and its experiments, queued and failed too
    except DvcException as err:
        raise UserError(
            f"cannot list the experiments ({err}); run from the project's git + DVC folder with at least one commit"
        ) from None
    if not states:
        raise UserError("the project has no git commit to run experiments from; commit it first (git commit)")
    baseline = states[0]
    found = []
    for exp_range in baseline.experiments or []:
        head = exp_range.revs[0]
        # `dvc exp save` and workspace runs have no executor: finished unless DVC could not read them
        state = exp_range.executor.state if exp_range.executor else ("failed" if head.error else "success")
        found.append(Experiment(name=exp_range.name or head.name or head.rev[:7], rev=head.rev, state=state))
    return baseline.rev, found


def select(experiments: list[Experiment], names: list[str], baseline: str) -> list[Experiment]:
    """The experiments to report: all of them, or those `names` gives (by name or commit prefix), each
    finished; otherwise a UserError naming the fix."""
    known = ", ".join(e.name for e in experiments) or "none"
    if not names:
        if not experiments:
            raise UserError(
                f"the baseline commit {baseline[:7]} has no experiments; queue one per game "
                "(dvc exp run --queue -S env=Pong), run them (dvc queue start -j 2), then report"
            )
        picked = experiments
    else:
        picked = []
        for name in dict.fromkeys(names):
            match = [e for e in experiments if e.name == name or (len(name) >= 4 and e.rev.startswith(name))]
            if not match:
                raise UserError(
                    f"no experiment {name!r} of the baseline commit {baseline[:7]} (it has: {known}); "
                    "name one that `dvc exp show` lists, or check out its baseline commit first"
                )
            picked += [e for e in match[:1] if e not in picked]
    fix = "or name the finished ones (python -m atarirep.plumbing.experiments report EXP ...)"
    for exp in picked:
        if exp.state in ("queued", "running"):
            raise UserError(
                f"experiment {exp.name} is still {exp.state}; wait until `dvc queue status` shows it Success, {fix}"
            )
        if exp.state != "success":
            raise UserError(
                f"experiment {exp.name} {exp.state} (`dvc queue logs {exp.name}` says why); remove it "
                f"(dvc queue remove {exp.name}) {fix}"
            )
    return picked


def flatten(tree: dict, prefix: str = "") -> dict:
    """Nested params as {"section.key": value}, lists kept whole (as `dvc exp show` names them)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def differences(params: dict, baseline: dict) -> dict:
    """The params of `params` whose value differs from the baseline's (a key it lacks: None)."""
    ours, theirs = flatten(params), flatten(baseline)
    return {
        key: ours.get(key)
        for key in [*ours, *(k for k in theirs if k not in ours)]
        if ours.get(key, _ABSENT) != theirs.get(key, _ABSENT)
    }


def _read(fs, path: str, exp: Experiment) -> bytes:
    from dvc.exceptions import DvcException

    if not fs.exists(path):
        raise UserError(
            f"experiment {exp.name} has no {path}, which its report showed; its pipeline did not "
            f"finish: remove it (dvc exp remove {exp.name}) or name the others"
        )
    try:
        return fs.read_bytes(path)
    except (FileNotFoundError, DvcException):
        # A committed output whose data is not in this clone's cache (an experiment pulled with --no-cache, gc)
        raise UserError(
            f"experiment {exp.name} has no {path} in the local DVC cache; fetch it "
            f"(dvc exp pull <git remote> {exp.name}) or report the experiments run here"
        ) from None


def gather(root: str | Path, experiments: list[Experiment], baseline_rev: str, work: Path):
    """(probe results of every game of `experiments`, the record of who gave what), read at each experiment's
    commit; every (game, method) the experiment's report showed, by `reports.load_results`'s rules."""
    import pandas as pd
    from dvc.api import DVCFileSystem

    from atarirep import reports
    from atarirep.plumbing import params

    def params_at(rev: str, where: Path) -> dict:
        fs = DVCFileSystem(str(root), rev=rev)
        try:
            where.mkdir(parents=True)
            (where / "params.yaml").write_bytes(fs.read_bytes("params.yaml"))
        finally:
            fs.close()
        return yaml.safe_load((where / "params.yaml").read_text())

    baseline = params_at(baseline_rev, work / "baseline")
    by_game: dict[str, str] = {}  # game -> the experiment that covers it
    parts, record, sets = [], [], set()
    for i, exp in enumerate(experiments):
        folder = work / f"exp{i}"
        exp_params = params_at(exp.rev, folder)
        try:
            shown = params.load("report", folder / "params.yaml")
        except UserError as err:  # it names the temporary copy: say whose params these are
            raise UserError(f"experiment {exp.name}'s params.yaml: {err}") from None
        sets.add(shown.annotations)
        for game in shown.games:
            if game in by_game:
                raise UserError(
                    f"experiments {by_game[game]} and {exp.name} both cover game {game}; name the one "
                    f"to report, with the others (python -m atarirep.plumbing.experiments report "
                    f"{by_game[game]} ...), or remove the other (dvc exp remove {exp.name})"
                )
            by_game[game] = exp.name
        methods = reports.shown_methods(shown)  # the report stage's columns for this experiment
        fs = DVCFileSystem(str(root), rev=exp.rev)
        try:
            for game in shown.games:
                for method in methods:
                    path = reports.scores_path("data/probes", game, method)
                    (folder / path).parent.mkdir(parents=True)
                    (folder / path).write_bytes(_read(fs, path.as_posix(), exp))
        finally:
            fs.close()
        parts.append(reports.load_results(folder / "data/probes", shown.games, methods))
        record.append(
            {"name": exp.name, "rev": exp.rev, "games": shown.games, "params": differences(exp_params, baseline)}
        )
    if len(sets) > 1:
        raise UserError(
            f"the experiments were probed with different annotation sets ({', '.join(sorted(sets))}); "
            "name experiments of one set"
        )
    results = pd.concat(parts, ignore_index=True)
    return results, {"baseline": baseline_rev, "games": by_game, "experiments": record, "annotations": sets.pop()}


def report(out_dir: str | Path = DEFAULT_OUT, names: list[str] | None = None, root: str | Path = ".") -> str:
    """Write the multi-game report of the finished experiments (all of the baseline commit's, or `names`) into
    `out_dir`: tables/, figures/, summary.json as the report stage writes them, and experiments.json.
    Runs no stage and no experiment. Returns one line saying what was written."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    from atarirep import reports

    try:
        repo = Repo(str(root))
    except NotDvcRepoError:
        raise UserError(
            f"{Path(root).resolve()} is not in a DVC repository; run this from the project's folder"
        ) from None
    with repo:
        baseline, experiments = baseline_and_experiments(repo)
        picked = select(experiments, list(names or []), baseline)
        with tempfile.TemporaryDirectory(prefix="atarirep-experiments-") as work:
            results, record = gather(repo.root_dir, picked, baseline, Path(work))
    annotation_set = record["annotations"]
    reports.save(
        out_dir,
        reports.tables(results, annotation_set=annotation_set),
        reports.figures(results),
        reports.summary(results, annotation_set=annotation_set),
        extra_json={"experiments.json": record},
    )
    games = ", ".join(f"{game} ({name})" for game, name in record["games"].items())
    return f"reported {len(record['games'])} game(s) from {len(picked)} experiment(s) in {out_dir}: {games}"


def main(*argv: str) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m atarirep.plumbing.experiments", description="The multi-game report of finished DVC experiments."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    cmd = commands.add_parser("report", help="tables of every game of the finished experiments, none rerun")
    cmd.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    cmd.add_argument(
        "experiments",
        nargs="*",
        metavar="EXP",
        help="experiment names or commit prefixes (default: all of the baseline commit's)",
    )
    args = parser.parse_args(argv)
    print(report(args.out, args.experiments))


if __name__ == "__main__":
    run_stage(main)
