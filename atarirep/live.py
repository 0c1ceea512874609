"""dvclive for stage outputs: the training logs of pretrain and train_agent (curves for `dvc plots`, summaries
for `dvc exp show`)."""
from __future__ import annotations

from dvclive import Live


class StageLive(Live):
    """dvclive's Live, writing only its own folder: without Live._init_dvc, which opens the DVC repo around the
    working directory or creates one in an enclosing git repo (dvclive.dvc.get_dvc_repo), fails in a git repo
    without commits, and under `dvc exp run` git-adds the folder's untracked files; and without DVC Studio
    posts. The log is a stage output like any other (dvc.yaml declares it); no experiment, dvc.yaml or git
    change belongs to it."""

    def __init__(self, dir: str, resume: bool = False):   # noqa: A002 (dvclive's own name)
        super().__init__(dir=dir, resume=resume, save_dvc_exp=False, dvcyaml=None)

    def _init_dvc(self):
        self._dvc_file = "dvc.yaml"   # what Live._init_dvc_file gives for dvcyaml=None; never written

    def _init_studio(self):
        self._studio_events_to_skip.update(("start", "data", "done"))
