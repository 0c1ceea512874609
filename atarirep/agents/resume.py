"""The resume file of a training run (PPO, IMPALA): one torch-saved dict beside the run's output while it trains.

A file of another format or made with other settings (its `fingerprint`), or a damaged one, is ignored with a
line saying so: the run starts over rather than stops.
"""
from __future__ import annotations

import io
from pathlib import Path

import torch

from atarirep.io import write_bytes


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
