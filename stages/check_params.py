"""check_params: validate the whole params.yaml before any stage that writes data runs."""

from atarirep.plumbing import atomic, checks
from atarirep.plumbing.errors import UserError, run_stage

RESTORE = (
    "(after a failed `dvc exp run -S ...`, `git checkout HEAD -- params.yaml && dvc checkout` restores the workspace)"
)


def main(out_path: str) -> None:
    try:
        checks.check("params.yaml")
    except UserError as err:
        raise UserError(f"{err} {RESTORE}") from None
    # Constant content: downstream stages depend on this file for their order, not for its value.
    atomic.write_bytes(out_path, b"params.yaml passed atarirep.plumbing.checks.check\n")


if __name__ == "__main__":
    run_stage(main)
