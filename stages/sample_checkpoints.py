"""sample_checkpoints: keep `keep` of a run's checkpoints by the geometric rule, as their own output."""

import os
import shutil
from pathlib import Path

from atarirep.agents import checkpoints
from atarirep.plumbing import params
from atarirep.plumbing.atomic import atomic_dir
from atarirep.plumbing.errors import run_stage


def main(run_dir: str, out_dir: str) -> None:
    keep = params.load("sample_checkpoints").keep
    found = checkpoints.list_run(run_dir)
    indices = checkpoints.geometric_indices(len(found), keep)
    with atomic_dir(out_dir) as tmp:
        for index in indices:
            source = found[index - 1][1]
            checkpoints.read(source)  # a damaged file stops here, not in a later stage
            try:
                os.link(source, tmp / source.name)  # same bytes: a hard link where the filesystem allows
            except OSError:
                shutil.copy2(source, tmp / source.name)
    print(f"kept {len(indices)} of {len(found)} checkpoints of {run_dir} in {Path(out_dir)}")


if __name__ == "__main__":
    run_stage(main)
