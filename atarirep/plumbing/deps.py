"""`atarirep deps --check | --write`: each dvc.yaml stage's code deps, computed from the imports of its script.

A stage's deps are its data deps (kept as written, in order), then its script, then every atarirep file the
script imports, directly or through other modules, sorted. Imports anywhere in a file count (inside functions
too), and so does a string naming an atarirep module (`importlib.import_module`, `resources.files`, a lazy
table); a package's `__init__.py` counts when something under it is imported, and a package holding data files
(atarirep/resources) counts as its folder. The top-level `atarirep/__init__.py` is left out: it only re-exports
lazily, for users (tests/test_imports.py keeps it free of eager imports). `--write` edits the deps blocks as
text, so dvc.yaml keeps its comments and layout.

Each stage's params are checked against the params sections its script loads (`params.load("section")`): a
section it reads more than shared keys of must be declared (whole, or some of its keys). `--keys` also lists
each `p.<key>` read off a loaded section and not declared, as advice: a key passed on may matter only to some
of a matrix's items, and a section passed on whole hides which keys are read.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "atarirep"
CODE = ("stages/", f"{PACKAGE}/")
_STAGE = re.compile(r"^  ([A-Za-z_][\w-]*):\s*(#.*)?$")
_ITEM = re.compile(r"^      - (\S+)")


def imported_modules(path: Path) -> set[str]:
    """Dotted atarirep names a file imports anywhere, or names in a string constant."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == PACKAGE}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == PACKAGE:
            found |= {node.module or "", *(f"{node.module}.{a.name}" for a in node.names)}
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if re.fullmatch(rf"{PACKAGE}(\.\w+)+", node.value):
                found.add(node.value)
    return found


def _data_package(folder: Path) -> bool:
    return folder.is_dir() and any(f.is_file() and f.suffix != ".py" for f in folder.iterdir())


def _files_of(name: str, root: Path) -> list[Path]:
    """The files importing `name` reads: each enclosing package's __init__.py below the top level, then the
    module itself (a data package: its folder)."""
    parts, files = name.split("."), []
    for i in range(2, len(parts) + 1):
        path = root.joinpath(*parts[:i])
        if _data_package(path):
            files.append(path)
        else:
            files += [p for p in (path / "__init__.py", path.with_suffix(".py")) if p.is_file()][:1]
    return files


def code_read_by(script: Path, root: Path = ROOT) -> set[Path]:
    """The script and every atarirep file (or data folder) it reads, transitively."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        if path.is_file():
            for name in imported_modules(path):
                todo += _files_of(name, root)
    return seen


def script_of(stage: dict) -> str:
    """The stage script its command runs (`python SCRIPT ...`)."""
    return stage["cmd"].split()[1]


def expected_deps(stage: dict, root: Path = ROOT) -> list[str]:
    """The stage's deps as they should be: data deps as written, the script, then its code, sorted."""
    data = [d for d in stage.get("deps", []) if not d.startswith(CODE)]
    script = script_of(stage)
    code = sorted(str(p.relative_to(root)) for p in code_read_by(root / script, root) if p != root / script)
    return [*data, script, *code]


def _section_loaded(node: ast.AST) -> str | None:
    """ "x" for a `params.load("x")` call, else None."""
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "load"
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "params"
        and node.args
        and isinstance(node.args[0], ast.Constant)
    ):
        return str(node.args[0].value)
    return None


def _loaded_sections(script: Path) -> dict[str, set[str] | None]:
    """Section -> the keys the script reads off it (None: the section is passed on whole, keys unknown)."""
    tree = ast.parse(script.read_text())
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    names: dict[str, str] = {}  # variable -> the section assigned to it (`p = params.load("probe")`, tuples too)
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
            pairs = (
                zip(target.elts, value.elts, strict=False)
                if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple)
                else [(target, value)]
            )
            for name, loaded in pairs:
                if isinstance(name, ast.Name) and (section := _section_loaded(loaded)) is not None:
                    names[name.id] = section
    sections: dict[str, set[str] | None] = {}
    for node in ast.walk(tree):
        section = _section_loaded(node)
        if section is None and isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            section = names.get(node.id)
        if section is None:
            continue
        keys, parent = sections.setdefault(section, set()), parents.get(node)
        if isinstance(parent, ast.Attribute):
            if keys is not None:
                keys.add(parent.attr)
        elif not isinstance(parent, (ast.Assign, ast.Tuple)):
            sections[section] = None  # passed on whole: `f(p)`, `f(params.load("x"))`
    return sections


def _declared(stage: dict) -> list[str]:
    return [p if isinstance(p, str) else next(iter(p)) for p in stage.get("params", [])]


def _covers(declared: list[str], key: str) -> bool:
    """Whether a declared param is `key`, a section above it, or a part of it (`x.y.${item.z}`)."""
    return any(d == key or key.startswith(f"{d}.") or d.startswith(f"{key}.") for d in declared)


def params_problems(name: str, stage: dict, root: Path = ROOT) -> list[str]:
    """Sections the stage's script loads and reads more than shared keys of, that its `params:` leaves out."""
    from atarirep.plumbing import params

    declared, problems = _declared(stage), []
    for section, keys in sorted(_loaded_sections(root / script_of(stage)).items()):
        if section not in params.SECTIONS or section == "study":
            continue  # study: the shared keys alone
        if keys is not None and keys <= set(params.SHARED_KEYS):
            continue
        if not _covers(declared, section):
            problems.append(f"stage {name} loads params section {section!r} but declares none of it")
    return problems


def unread_keys(name: str, stage: dict, root: Path = ROOT) -> list[str]:
    """Keys the script reads off a loaded section that `params:` does not declare. Advice, not a failure: a key
    passed on may matter only to some matrix items (probe's supervised settings, only to the supervised one)."""
    from atarirep.plumbing import params

    declared, notes = _declared(stage), []
    composed = yaml.safe_load((root / "params.yaml").read_text())
    for section, keys in sorted(_loaded_sections(root / script_of(stage)).items()):
        own = composed.get(section) or {}
        for key in sorted(keys or ()):
            wanted = key if key in params.SHARED_KEYS and key not in own else f"{section}.{key}"
            if not _covers(declared, wanted):
                notes.append(f"stage {name} reads {wanted} but does not declare it")
    return notes


def _stages(dvc_text: str) -> dict[str, dict]:
    return yaml.safe_load(dvc_text)["stages"]


def check(root: Path = ROOT) -> list[str]:
    """One line per stage whose deps or params are not what its script reads; empty when all are."""
    problems = []
    for name, stage in _stages((root / "dvc.yaml").read_text()).items():
        have, want = stage.get("deps", []), expected_deps(stage, root)
        missing = [d for d in want if d not in have]
        extra = [d for d in have if d not in want]
        if missing or extra:
            problems.append(
                f"stage {name}: deps missing {', '.join(missing) or 'nothing'}; extra {', '.join(extra) or 'nothing'}"
            )
        elif have != want:
            problems.append(f"stage {name}: deps out of order (data, script, then code sorted)")
        problems += params_problems(name, stage, root)
    return problems


def rewrite(dvc_text: str, root: Path = ROOT) -> str:
    """dvc.yaml's text with each stage's code deps replaced by the computed ones; everything else as it was."""
    stages = _stages(dvc_text)
    lines = dvc_text.splitlines(keepends=True)
    out: list[str] = []
    stage: str | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.rstrip("\n") == "stages:":
            stage = ""
        elif stage is not None and not line.startswith(" ") and line.strip():
            stage = None
        elif stage is not None and (match := _STAGE.match(line.rstrip("\n"))):
            stage = match.group(1)
        if stage and line.rstrip("\n") == "    deps:":
            out.append(line)
            i += 1
            block = []
            while i < len(lines) and _ITEM.match(lines[i]):
                block.append(lines[i])
                i += 1
            data = [b for b in block if not _ITEM.match(b).group(1).startswith(CODE)]  # type: ignore[union-attr]
            code = expected_deps(stages[stage], root)[len(data) :]
            out += data + [f"      - {d}\n" for d in code]
            continue
        out.append(line)
        i += 1
    return "".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="atarirep deps",
        description="Check or write each dvc.yaml stage's code deps, computed from its script's imports.",
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="exit 1, one line per stage, if any list is off")
    mode.add_argument("--write", action="store_true", help="rewrite the deps lists in dvc.yaml")
    parser.add_argument("--keys", action="store_true", help="also list keys a script reads but does not declare")
    args = parser.parse_args(argv)
    root = Path.cwd()  # the repository it runs in
    path = root / "dvc.yaml"
    if args.write:
        path.write_text(rewrite(path.read_text(), root))
    problems = check(root)
    for problem in problems:
        print(problem, file=sys.stderr)
    if args.keys:
        for name, stage in _stages(path.read_text()).items():
            for note in unread_keys(name, stage, root):
                print(f"note: {note}")
    if problems and args.check:
        sys.exit(1)


if __name__ == "__main__":
    main()
