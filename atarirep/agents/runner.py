"""What PPO's and IMPALA's training runs share around their rollouts and losses.

A run's fingerprint (what its resume file must have been made with), its work folder from start to finish
(the resume file, the checkpoints and the dvclive log, kept in a hidden folder beside the output until the
run ends), the checkpoint schedule, the learning-rate schedule and the one-line refusal of a config value out
of range. The algorithms' own loops stay in atarirep.agents.ppo and atarirep.agents.impala.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from atarirep.agents import checkpoints
from atarirep.plumbing import resume
from atarirep.plumbing.atomic import atomic_dir
from atarirep.plumbing.errors import UserError
from atarirep.plumbing.live import StageLive, drop_rows_after

RESUME_FILE = "resume.pt"


def fingerprint(config: Any, **run: Any) -> str:
    """The run (game or games, seed, study_seed, algo) and every field of its config (a dataclass), as one text."""
    return resume.fingerprint({**run, **asdict(config)})


def out_of_range(config: Any, where: str, name: str, rule: str, fix: str | None = None) -> UserError:
    """The one line refusing `config.name`: "<where>.<name> must be <rule>, not <value>; set it to <fix>" (by
    default the dataclass's default, the reference's value)."""
    value = getattr(config, name)
    fix = repr(getattr(type(config), name)) if fix is None else fix
    return UserError(f"{where}.{name} must be {rule}, not {value!r}; set it to {fix}")


def checkpoint_iterations(total_steps: int, checkpoint_every: int, steps_per_iteration: int) -> list[int]:
    """The iterations after which a checkpoint is written: the first to reach each multiple of
    `checkpoint_every` agent steps, and always the last."""
    iterations = total_steps // steps_per_iteration
    marks = {
        math.ceil(k * checkpoint_every / steps_per_iteration) for k in range(1, total_steps // checkpoint_every + 1)
    }
    return sorted({m for m in marks if m < iterations} | {iterations})


def annealed(lr: float, iteration: int, iterations: int) -> float:
    """The learning rate of `iteration` (from 1) decaying linearly from `lr` toward 0 over `iterations`."""
    return (1.0 - (iteration - 1.0) / iterations) * lr


def log(live: StageLive, step: int, metrics: dict[str, float]) -> None:
    """One row of the dvclive log at agent step `step`."""
    live.step = step
    for name, value in metrics.items():
        live.log_metric(name, value)
    live.next_step()


class WorkFolder:
    """Where a run keeps its state until it finishes: `.<name>.partial` beside `out_dir`, holding resume.pt,
    checkpoints/ and live/; `finish` moves the checkpoints and the log to the stage's outputs whole."""

    def __init__(self, out_dir: str | os.PathLike, log_dir: str | os.PathLike, fmt: str, fingerprint: str):
        self.out_dir, self.log_dir = Path(out_dir), Path(log_dir)
        self.path = resume.beside(self.out_dir, ".partial")
        self.fmt, self.fingerprint = fmt, fingerprint

    def resume(self) -> dict | None:
        """The state saved by the last checkpoint of a run with this fingerprint; None (the folder emptied,
        with its checkpoints/ folder) when there is none to resume from."""
        saved = resume.read(self.path / RESUME_FILE, self.fmt, self.fingerprint)
        if saved is None:
            shutil.rmtree(self.path, ignore_errors=True)
            (self.path / "checkpoints").mkdir(parents=True)
        return saved

    def live(self, resumed_step: int | None) -> StageLive:
        """The run's dvclive log; on a resume, its rows after `resumed_step` go (the resumed run logs them again)."""
        if resumed_step is not None:
            drop_rows_after(self.path / "live", resumed_step)
        return StageLive(str(self.path / "live"), resume=resumed_step is not None)

    def checkpoint(self, step: int) -> Path:
        """Where the checkpoint at agent step `step` is written."""
        return self.path / "checkpoints" / checkpoints.file_name(step)

    def save(self, state: dict) -> None:
        """Replace the resume file with `state` (tagged with the run's format and fingerprint)."""
        resume.write(self.path / RESUME_FILE, self.fmt, self.fingerprint, state)

    def finish(self) -> None:
        """The finished run's dvclive log and checkpoints replace the stage's outputs whole; the folder goes."""
        with atomic_dir(self.log_dir) as tmp:
            shutil.copytree(self.path / "live", tmp, dirs_exist_ok=True)
        with atomic_dir(self.out_dir) as tmp:
            for path in (self.path / "checkpoints").iterdir():
                os.replace(path, tmp / path.name)
        shutil.rmtree(self.path, ignore_errors=True)
