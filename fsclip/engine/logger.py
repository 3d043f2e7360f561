"""``setup_logger``: copy stdout to ``OUTPUT_DIR/log.txt`` (Dassl's behaviour)."""

from __future__ import annotations

import io
import os
import os.path as osp
import platform
import sys
import time
from typing import Optional, TextIO

from .fileio import disk_full, is_disk_full


class Logger:
    """A stdout replacement writing to the console and a file.

    With ``buffer=True`` and no file yet, what is written is also kept in memory until
    ``setup_logger`` opens the log file, which then starts with it: lines printed before the
    output folder is known (and an error that stops the run there) still reach log.txt.

    When the file cannot be written (a full disk), it is closed, removed if it stayed empty, and
    the error raised (DiskFullError, ``disk full writing <path>``); later lines go to the console
    only (``broken``), so the run's error line can still be printed.
    """

    def __init__(self, fpath: Optional[str] = None, console: Optional[TextIO] = None,
                 buffer: bool = False, pending: str = "") -> None:
        self.console = console or sys.stdout
        self.file = None
        self.fpath = fpath
        self.pending: Optional[io.StringIO] = io.StringIO() if buffer and fpath is None else None
        self.broken = False
        if fpath is not None:
            os.makedirs(osp.dirname(osp.abspath(fpath)), exist_ok=True)
            # "x": a log file is never overwritten, even by a run started in the same second
            self.file = open(fpath, "x", encoding="utf-8", buffering=1)  # line-buffered: a crash keeps the log
            try:
                self.file.write(pending)
            except OSError as err:
                self._failed(err)

    def _failed(self, err: OSError) -> None:
        """The log file could not be written: stop writing it (drop it if empty) and raise."""
        self.broken = True
        try:
            self.file.close()
        except OSError:
            pass
        self.file = None
        try:
            if osp.getsize(self.fpath) == 0:
                os.unlink(self.fpath)
        except OSError:
            pass
        if is_disk_full(err):
            raise disk_full(self.fpath) from None
        raise err

    def write(self, msg: str) -> None:
        self.console.write(msg)
        if self.file is not None:
            try:
                self.file.write(msg)
            except OSError as err:
                if not msg.endswith("\n"):
                    self.console.write("\n")  # print's newline will not come: end the line here
                self._failed(err)
        elif self.pending is not None:
            self.pending.write(msg)

    def flush(self) -> None:
        self.console.flush()
        if self.file is not None:
            try:
                self.file.flush()
                os.fsync(self.file.fileno())
            except OSError as err:
                self._failed(err)

    def isatty(self) -> bool:
        return False

    def close(self) -> None:
        if self.file is not None:
            try:
                self.file.close()
            except OSError:  # what was still buffered did not fit: the log ends earlier
                self.broken = True
            self.file = None

    def __getattr__(self, name: str):
        return getattr(self.console, name)


def start_buffered_log() -> Logger:
    """Keep everything printed from now on, for the log file ``setup_logger`` opens later."""
    logger = Logger(console=sys.stdout, buffer=True)
    sys.stdout = logger
    return logger


def log_file() -> Optional[str]:
    """The log file stdout is copied to, if any."""
    out = sys.stdout
    return out.fpath if isinstance(out, Logger) and out.file is not None else None


def setup_logger(output: Optional[str] = None) -> Optional[str]:
    """Tee stdout to ``output/log.txt`` (or to ``output`` if it ends in .txt/.log).

    An existing log file is never overwritten: the new log gets a ``-YYYY-MM-DD-HH-MM-SS``
    suffix, as in Dassl (and ``-1``, ``-2``, ... after that if the name is taken). Text kept by
    a buffering logger (``start_buffered_log``) is written first. Returns the path written to.
    """
    if output is None:
        return None
    base = output if output.endswith((".txt", ".log")) else osp.join(output, "log.txt")
    previous = sys.stdout
    pending = ""
    if isinstance(previous, Logger):
        if previous.pending is not None:
            pending = previous.pending.getvalue()
        previous.close()
        previous = previous.console
    for i in range(1000):
        fpath = base
        if i or osp.exists(base):
            fpath = base + time.strftime("-%Y-%m-%d-%H-%M-%S") + (f"-{i}" if i > 1 else "")
        try:
            sys.stdout = Logger(fpath, console=previous, pending=pending)
            return fpath
        except FileExistsError:
            continue
    raise FileExistsError(f"no free log file name next to {base}")


def collect_env_info() -> str:
    """A short description of the software environment (cheap, no subprocesses)."""
    import PIL
    import torch
    import torchvision

    lines = [
        f"Python: {platform.python_version()} ({platform.platform()})",
        f"PyTorch: {torch.__version__}",
        f"torchvision: {torchvision.__version__}",
        f"Pillow: {PIL.__version__}",
        f"CUDA available: {torch.cuda.is_available()}",
    ]
    if torch.cuda.is_available():
        lines.append(f"GPU: {torch.cuda.get_device_name(0)}")
    lines.append(f"CPU threads: {torch.get_num_threads()}")
    return "\n".join(lines)
