"""dvclive for stage outputs: the training logs of pretrain and train_agent (curves for `dvc plots`, summaries
for `dvc exp show`)."""

from __future__ import annotations

from pathlib import Path

from dvclive import Live


class StageLive(Live):
    """dvclive's Live, writing only its own folder: without Live._init_dvc, which opens the DVC repo around the
    working directory or creates one in an enclosing git repo (dvclive.dvc.get_dvc_repo), fails in a git repo
    without commits, and under `dvc exp run` git-adds the folder's untracked files; and without DVC Studio
    posts. The log is a stage output like any other (dvc.yaml declares it); no experiment, dvc.yaml or git
    change belongs to it."""

    def __init__(self, dir: str, resume: bool = False):  # noqa: A002 (dvclive's own name)
        super().__init__(dir=dir, resume=resume, save_dvc_exp=False, dvcyaml=None)

    def _init_dvc(self):
        self._dvc_file = "dvc.yaml"  # what Live._init_dvc_file gives for dvcyaml=None; never written

    def _init_studio(self):
        self._studio_events_to_skip.update(("start", "data", "done"))


def drop_rows_after(live_dir: Path, last_step: int) -> None:
    """Cut dvclive's step logs back to the resumed checkpoint's step (rows logged after the last
    checkpoint are logged again by the resumed run)."""
    for tsv in (live_dir / "plots").rglob("*.tsv"):
        lines = tsv.read_text().splitlines()
        header, rows = lines[0], lines[1:]
        step_col = header.split("\t").index("step")
        kept = [r for r in rows if int(r.split("\t")[step_col]) <= last_step]
        tsv.write_text("\n".join([header, *kept]) + "\n")
