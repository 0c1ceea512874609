"""What every bench writes around its results: where and when it was measured, and the JSON file itself.

Each bench's JSON (kept as bench/results/<bench>.json) carries its run's context, the date, the commit and the
machine, so that the docs' benchmarks page, generated from bench/results/*.json (docs/hooks/benchmarks.py), can
say where and when each figure was measured. The bench scripts import this module by name (`import report`):
they run as `python bench/X.py`, with bench/ on sys.path.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from pathlib import Path

NAME_KEY = "benchmark"  # a result's name, kept first


def _git(*args: str) -> str | None:
    """`git ARGS` in this file's repository: its stdout, or None without git or outside a checkout."""
    try:
        out = subprocess.run(
            ["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def commit() -> str | None:
    """The checkout's short commit, with "+dirty" where a tracked file differs from it; None outside git."""
    head = _git("rev-parse", "--short", "HEAD")
    if not head:
        return None
    return head + ("+dirty" if _git("status", "--porcelain", "--untracked-files=no") else "")


def context() -> dict:
    """The run's context: UTC date and time, commit, and the machine (CPU, platform, Python, torch, CUDA)."""
    import torch  # here, not at the top: some benches (the log readers) do not need it otherwise

    machine = {
        "cpu_count": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        machine["cuda"] = torch.cuda.get_device_name()
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return {"date": date, "commit": commit(), "machine": machine}


def write_json(data: dict, path: Path | None) -> str:
    """`data` as indented JSON in its own key order; written (with a trailing newline) to `path` when given,
    atomically (atarirep.plumbing.atomic), so the file is never half-written."""
    text = json.dumps(data, indent=2, default=str)
    if path is not None:
        from atarirep.plumbing import (
            atomic,  # here: bench/ is on sys.path, the checkout (or the installed package) after it
        )

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic.write_bytes(path, (text + "\n").encode())
    return text


def finish(result: dict, json_path: Path | None, fig=None, png: Path | None = None) -> None:
    """A bench's last step: save `fig` to `png` when given, put the run's context in front of `result` (after its
    name; a key `result` already has keeps its value), write the JSON to `json_path` when given, and print it."""
    if fig is not None:
        Path(png).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(png, dpi=120, metadata={"Software": None})
    head = {NAME_KEY: result[NAME_KEY]} if NAME_KEY in result else {}
    print(write_json({**head, **context(), **result}, json_path))
