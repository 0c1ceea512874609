"""A training run's work folder (PPO, IMPALA): its resume file, checkpoints and logs while it trains.

Until a run finishes, everything lives in a hidden folder beside its output (`work_folder`); `finish`
moves the logs and the checkpoints to the stage's outputs whole. The resume file is one torch-saved dict
there. A file of another format or made with other settings (its `fingerprint`), or a damaged one, is
ignored with a line saying so: the run starts over rather than stops.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import torch

from atarirep.plumbing.atomic import atomic_dir, write_bytes


def work_folder(out_dir: Path) -> Path:
    """The hidden folder beside `out_dir` where a run keeps its state until it finishes."""
    return out_dir.with_name(f".{out_dir.name}.partial")


def start_over(work: Path) -> None:
    """An empty work folder with its checkpoints/ folder (whatever was there is removed)."""
    shutil.rmtree(work, ignore_errors=True)
    (work / "checkpoints").mkdir(parents=True)


def finish(work: Path, out_dir: Path, log_dir: Path) -> None:
    """The finished run's dvclive logs (work/live) and checkpoints replace the stage's outputs whole."""
    with atomic_dir(log_dir) as tmp:
        shutil.copytree(work / "live", tmp, dirs_exist_ok=True)
    with atomic_dir(out_dir) as tmp:
        for path in (work / "checkpoints").iterdir():
            os.replace(path, tmp / path.name)
    shutil.rmtree(work, ignore_errors=True)


def write(work: Path, state: dict) -> None:
    """Write `state` (with its "format" and "fingerprint") to work/resume.pt, atomically."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes(work / "resume.pt", buffer.getvalue())


def read(work: Path, fmt: str, fingerprint: str) -> dict | None:
    """work/resume.pt's state if it is of format `fmt` and made with `fingerprint`, else None."""
    path = work / "resume.pt"
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state["format"] != fmt or state["fingerprint"] != fingerprint:
            print(f"ignoring {path}: made with other settings; starting from step 0")
            return None
    except Exception as err:  # a damaged file: start over rather than stop
        print(f"ignoring {path}: unreadable ({type(err).__name__}); starting from step 0")
        return None
    return state
