"""User-facing errors: one line naming what is wrong and how to fix it, exit code 2, no traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn


class UserError(Exception):
    """A problem the user can fix (a bad param, a missing or corrupt artifact, an unknown game).

    The message is the whole report: what is wrong and what to do, on one line.
    """


def fail(message: str) -> NoReturn:
    """Print `error: <message>` on stderr and exit with code 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def run_stage(main: Callable[..., object], argv: list[str] | None = None) -> None:
    """Run a stage's `main(*argv)`; a UserError becomes one line on stderr and exit code 2.

    Bugs (any other exception) keep their traceback.
    """
    args = sys.argv[1:] if argv is None else argv
    try:
        main(*args)
    except UserError as err:
        fail(str(err))
    except KeyboardInterrupt:
        fail("interrupted; nothing was written as finished, run the stage again to redo it")
