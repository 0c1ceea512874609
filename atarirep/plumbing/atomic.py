"""Atomic artifact writing: everything lands under a temporary name next to its target, then os.replace.

A killed stage therefore leaves either the old artifact or nothing, never a half-written one that
DVC could take as finished. This module does not decide formats; callers write bytes or folders.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from atarirep.plumbing.errors import UserError


def _check_parent_writable(target: Path) -> None:
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(
            f"cannot create folder {parent} for output {target} ({err.strerror}); choose a writable output path"
        ) from None
    if not os.access(parent, os.W_OK):
        raise UserError(f"output folder {parent} is not writable; choose a writable output path or fix its permissions")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_tree(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary folder beside `target`; on success it replaces `target` whole.

    On any exception the temporary folder is removed and `target` is left as it was.
    """
    target = Path(target)
    _check_parent_writable(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; a finished artifact gets the usual mode
        _fsync_tree(tmp)
        if target.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, trash / target.name)
            os.replace(tmp, target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_bytes(target: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `target` atomically (temporary file, fsync, os.replace)."""
    target = Path(target)
    _check_parent_writable(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a finished artifact gets the usual mode
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(target: str | os.PathLike, obj: object) -> None:
    """Write `obj` as stable JSON (sorted keys, 2-space indent, trailing newline), atomically."""
    write_bytes(target, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())
