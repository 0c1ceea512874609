"""Resume state: one torch-saved file per run, tagged with its format and the fingerprint of what made it.

Pretraining (a file beside its output, written by DDP rank 0) and the agents (resume.pt in their work
folder, atarirep.agents.runner) resume through it. `write` saves {"format", "fingerprint", **state}
atomically; `read` gives the state back only when both match. A file of another format, made with other
settings or data, or damaged is ignored with a line saying so: the run starts over rather than stops.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch

from atarirep.plumbing.atomic import write_bytes


def beside(out: str | os.PathLike, suffix: str) -> Path:
    """The hidden path `.<name><suffix>` beside `out`, where a run keeps what it resumes from until it is done."""
    out = Path(out)
    return out.with_name(f".{out.name}{suffix}")


def fingerprint(fields: dict) -> str:
    """What made a run, as the text a resume file must match (keys sorted, so the order they come in is free)."""
    return json.dumps(fields, sort_keys=True, default=str)


def write(path: str | os.PathLike, fmt: str, fingerprint: str, state: dict) -> None:
    """Write {"format": fmt, "fingerprint": fingerprint, **state} to `path`, atomically."""
    buffer = io.BytesIO()
    torch.save({"format": fmt, "fingerprint": fingerprint, **state}, buffer)
    write_bytes(path, buffer.getvalue())


def read(
    path: str | os.PathLike, fmt: str, fingerprint: str, *, start: str = "step 0", log: Callable[[str], None] = print
) -> dict | None:
    """The state at `path` if it is of format `fmt` and made with `fingerprint`; else None, after logging why
    and that the run starts from `start`."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        found = state["format"]
        made_with = state["fingerprint"]
    except Exception as err:  # torch raises many types for a foreign or damaged file
        log(f"ignoring {path}: unreadable ({type(err).__name__}); starting from {start}")
        return None
    if found != fmt:
        log(f"ignoring {path}: of format {found!r}, not {fmt!r}; starting from {start}")
        return None
    if made_with != fingerprint:
        log(f"ignoring {path}: made with other settings or data; starting from {start}")
        return None
    return state
