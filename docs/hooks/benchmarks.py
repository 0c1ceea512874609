"""MkDocs hook: the benchmarks page's results, generated at build time from bench/results/*.json.

A page whose Markdown holds the marker `<!-- benchmarks -->` gets, in its place, one section per JSON file of
bench/results (sorted by name): the benchmark's name, the commit that last changed the file (from git, unless the
file names its own commit), its context fields (machine, date, commit, game, seed, threads, versions,
settings) when present, and its results as compact tables. Nested objects are flattened to dotted keys; sibling
objects of the same shape (one per game, or the two loops of one comparison) are drawn side by side in one table.
Nothing is written to disk: the JSON files stay the record.

mkdocs.yml names it under `hooks:`; `mkdocs serve` rebuilds when a file of bench/results changes (`watch:`).
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
from pathlib import Path

MARKER = "<!-- benchmarks -->"
HEADING = "###"  # one section per file, under the page's own "## Results" heading
RESULTS = Path("bench") / "results"
# Top-level keys that describe the run rather than measure it, shown above the tables (in this order).
CONTEXT_KEYS = (
    "machine",
    "device",
    "gpu",
    "date",
    "commit",
    "game",
    "seed",
    "cpu_count",
    "torch_threads",
    "ale_threads",
    "python",
    "torch",
    "cuda",
    "settings",
)
NAME_KEYS = ("benchmark", "name")

log = logging.getLogger("mkdocs.hooks.benchmarks")


def _results_dir(config) -> Path:
    return Path(config["config_file_path"]).parent / RESULTS


def _flatten(value, prefix: str = "") -> list[tuple[str, object]]:
    """(dotted key, leaf) pairs of a JSON value, in the file's order; lists of scalars stay one leaf."""
    if isinstance(value, dict):
        pairs: list[tuple[str, object]] = []
        for key, item in value.items():
            pairs.extend(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return pairs
    if isinstance(value, list) and any(isinstance(item, (dict, list)) for item in value):
        pairs = []
        for index, item in enumerate(value):
            pairs.extend(_flatten(item, f"{prefix}[{index}]"))
        return pairs
    return [(prefix, value)]


def _number(value: float) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return str(value)
    magnitude = abs(value)
    if magnitude == 0:
        return "0"
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.1f}"
    if magnitude >= 0.01:
        return f"{value:.4g}"
    return f"{value:.3g}"


def _cell(value) -> str:
    if isinstance(value, (int, float)):
        text = _number(value)
    elif isinstance(value, list):
        text = ", ".join(_cell(item) for item in value)
    elif value is None:
        text = "-"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _comparison(records: dict[str, dict]) -> str:
    """Sibling objects with the same (flattened) keys side by side: a row per record when they have few keys,
    else a row per key and a column per record."""
    flat = {name: dict(_flatten(record)) for name, record in records.items()}
    keys = list(next(iter(flat.values())))
    names = list(flat)
    if len(keys) <= 6:
        lines = ["| | " + " | ".join(f"`{k}`" for k in keys) + " |", "|:--|" + "--:|" * len(keys)]
        lines += [f"| {_cell(n)} | " + " | ".join(_cell(flat[n][k]) for k in keys) + " |" for n in names]
    else:
        lines = ["| | " + " | ".join(f"`{n}`" for n in names) + " |", "|:--|" + "--:|" * len(names)]
        lines += [f"| `{k}` | " + " | ".join(_cell(flat[n][k]) for n in names) + " |" for k in keys]
    return "\n".join(lines)


def _key_value_table(pairs: list[tuple[str, object]]) -> str:
    lines = ["| result | value |", "|:--|--:|"]
    lines += [f"| `{key}` | {_cell(value)} |" for key, value in pairs]
    return "\n".join(lines)


def _blocks(data: dict, path: str = "", depth: int = 0) -> list[str]:
    """Markdown blocks for one JSON object: its scalars as one table; sibling objects of the same shape side by
    side; any other object under its own bold dotted label (one level deep, then flattened)."""
    blocks: list[str] = []
    scalars = [(k, v) for k, v in data.items() if not isinstance(v, dict)]
    objects = {k: v for k, v in data.items() if isinstance(v, dict) and v}
    shapes: dict[tuple[str, ...], list[str]] = {}
    for key, value in objects.items():
        shapes.setdefault(tuple(k for k, _ in _flatten(value)), []).append(key)
    label = f"**{path}**\n\n" if path else ""
    grouped = {key for keys in shapes.values() if len(keys) > 1 for key in keys}
    if scalars:
        blocks.append(label + _key_value_table(_flatten(dict(scalars))))
        label = ""
    for keys in shapes.values():
        if len(keys) > 1:
            blocks.append(label + _comparison({k: objects[k] for k in keys}))
            label = ""
    for key, value in objects.items():
        if key in grouped:
            continue
        dotted = f"{path}.{key}" if path else key
        if depth == 0:
            blocks.extend(_blocks(value, dotted, depth + 1))
        else:
            blocks.append(f"**{dotted}**\n\n" + _key_value_table(_flatten(value)))
    if label and not blocks:
        blocks.append(label.strip())
    return blocks


def _context(data: dict) -> str:
    """The run's context in two short lines: its scalar fields, then each nested one (settings)."""
    scalars, nested = [], []
    for key in CONTEXT_KEYS:
        if key not in data:
            continue
        value = data[key]
        if isinstance(value, dict):
            nested.append(f"**{key}**: " + ", ".join(f"{k} {_cell(v)}" for k, v in _flatten(value)))
        else:
            scalars.append(f"{key} {_cell(value)}")
    lines = ([f"**run**: {', '.join(scalars)}"] if scalars else []) + nested
    return "  \n".join(lines)


def _committed(path: Path) -> str | None:
    """`commit (date)` of the last commit that touched `path`, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "log", "-1", "--format=%h (%cs)", "--", path.name],
            cwd=path.parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out or None


def _section(path: Path, root: Path) -> str:
    relative = path.relative_to(root.parent.parent).as_posix()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        log.warning("bench result %s is not readable JSON: %s", relative, err)
        return f"{HEADING} {path.stem}\n\n`{relative}` could not be read ({type(err).__name__}).\n"
    if not isinstance(data, dict):
        data = {"value": data}
    name = next((str(data[k]) for k in NAME_KEYS if isinstance(data.get(k), str)), None)
    parts = [f"{HEADING} {path.stem}", ""]
    line = f"File `{relative}`" + (f", benchmark `{name}`" if name and name != path.stem else "")
    committed = None if data.get("commit") else _committed(path)  # null: bench/report.py ran outside a checkout
    parts.append(line + (f", committed in {committed}." if committed else "."))
    parts.append("")
    context = _context(data)
    if context:
        parts += [context, ""]
    results = {k: v for k, v in data.items() if k not in CONTEXT_KEYS and k not in NAME_KEYS}
    parts += [block + "\n" for block in _blocks(results)]
    return "\n".join(parts)


def render(root: Path) -> str:
    """The generated Markdown for every JSON file of `root` (bench/results)."""
    files = sorted(root.glob("*.json"))
    if not files:
        return "No results yet: `bench/results/` holds no JSON file.\n"
    return "\n".join(_section(path, root) for path in files)


def on_page_markdown(markdown: str, page, config, files, **kwargs) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, render(_results_dir(config)))
