"""One run at a time per output folder: ``OUTPUT_DIR/run.lock``.

``train.py`` takes the lock before it opens its log and holds it until it ends; a second run into
the same folder is refused (:class:`RunLockedError`, one line naming the folder and the pid that
holds it) instead of both writing logs and checkpoints there. The lock is an ``flock`` on the
file, which the system releases when its process dies, so a killed run never blocks the folder;
the file says which process holds it (``<pid> <host>``) and is removed when the lock is released.
On a file system without ``flock`` the pid in the file decides: a lock whose process is gone is
taken over.

Standard library only (cheap to import).
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import os
import os.path as osp
import socket
from typing import List, Optional, Tuple

from fsclip.errors import UserFacingError

LOCK_FILE = "run.lock"
_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS)


class RunLockedError(UserFacingError):
    """Another run holds the output folder. Its message is not written into that folder's logs."""

    log_in_output_dir = False  # cli.report_error: the folder belongs to the other run


def _holder(path: str) -> Tuple[Optional[int], str]:
    """(pid, host) written in a lock file, (None, "") when unreadable."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            parts = f.read().split()
        return int(parts[0]), (parts[1] if len(parts) > 1 else "")
    except (OSError, ValueError, IndexError):
        return None, ""


def _alive(pid: int, host: str) -> bool:
    if host and host != socket.gethostname():
        return True  # another machine's process: it cannot be checked from here
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


class RunLock:
    """The lock of one output folder, held from :meth:`acquire` to :meth:`release`."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.path = osp.join(folder, LOCK_FILE)
        self._fd: Optional[int] = None

    def _refuse(self, pid: Optional[int], host: str) -> RunLockedError:
        who = f"pid {pid}" if pid is not None else "a process whose pid is unknown"
        if host and host != socket.gethostname():
            who += f" on {host}"
        return RunLockedError(
            f"The output folder {self.folder} is in use by another run ({who}, lock file {self.path}): "
            f"wait for that run to end or stop it, or pass another --output-dir")

    def acquire(self) -> "RunLock":
        """Take the lock or raise RunLockedError (the folder must exist)."""
        for _ in range(100):  # retried only when a releasing run removed the file meanwhile
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self._refuse(*_holder(self.path)) from None
            except OSError as err:
                if err.errno not in _NO_FLOCK:
                    os.close(fd)
                    raise
                pid, host = _holder(self.path)  # no flock here: the pid in the file decides
                if pid is not None and pid != os.getpid() and _alive(pid, host):
                    os.close(fd)
                    raise self._refuse(pid, host) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # we locked a file the previous holder had just removed
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
            self._fd = fd
            _HELD.append(self)
            return self
        raise self._refuse(*_holder(self.path))  # pragma: no cover - a file removed 100 times

    def release(self) -> None:
        """Remove the lock file and drop the lock (no-op when not held)."""
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self._fd)  # closing drops the flock
        self._fd = None
        if self in _HELD:
            _HELD.remove(self)


_HELD: List[RunLock] = []


def lock_output_dir(folder: str) -> RunLock:
    """Take ``folder``'s run lock for this process; :func:`release_all` (train.py's main does, at
    the end of every run) or the process's exit drops it."""
    return RunLock(folder).acquire()


def holder(folder: str) -> Optional[int]:
    """The pid of the run holding ``folder``'s lock now, or None (for tools that would move a
    run's files, e.g. the rerun rule setting a crashed log aside)."""
    path = osp.join(folder, LOCK_FILE)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder(path)[0] or -1
    except OSError:
        pid, host = _holder(path)
        return pid if pid is not None and _alive(pid, host) else None
    finally:
        os.close(fd)
    return None


def release_all() -> None:
    for lock in list(_HELD):
        lock.release()


atexit.register(release_all)
