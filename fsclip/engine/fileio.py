"""Atomic file writes (standard library only, so torch-free tools such as fsclip.results use
them without importing torch). ``fsclip.engine.utils`` re-exports both.

The file gets the permissions a plain ``open(path, "w")`` would give (0666 minus the umask),
not the 0600 of the temporary file it is written through.
"""

from __future__ import annotations

import errno
import os
import os.path as osp
import tempfile

from fsclip.errors import UserFacingError

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(UserFacingError, OSError):
    """No space left while writing a file; the message names it (``disk full writing PATH``)."""

    log_in_output_dir = False  # cli.report_error: no new log file for it on that full disk


def disk_full(path: str) -> DiskFullError:
    """The error for a write of ``path`` that found its disk full."""
    err = DiskFullError(f"disk full writing {path}: free space on that disk, or pass another "
                        f"--output-dir, and rerun")
    err.errno = errno.ENOSPC
    return err


def is_disk_full(err: BaseException) -> bool:
    """An OSError saying ENOSPC/EDQUOT (or a DiskFullError)."""
    return isinstance(err, DiskFullError) or (isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS)


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once, at import (os.umask can only be read by setting it)


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder + os.replace
    (a full disk raises DiskFullError naming ``path``; ``path`` is then untouched)."""
    folder = osp.dirname(osp.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix="-" + osp.basename(path), dir=folder)
    except OSError as err:
        if is_disk_full(err):
            raise disk_full(path) from None
        raise
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException as err:
        if osp.exists(tmp):
            os.unlink(tmp)
        if is_disk_full(err):
            raise disk_full(path) from None
        raise


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
