"""``setup_logger``: copy stdout to ``OUTPUT_DIR/log.txt`` (Dassl's behaviour)."""

from __future__ import annotations

import os
import os.path as osp
import platform
import sys
import time
from typing import Optional, TextIO


class Logger:
    """A stdout replacement writing to the console and a file."""

    def __init__(self, fpath: Optional[str] = None, console: Optional[TextIO] = None) -> None:
        self.console = console or sys.stdout
        self.file = None
        self.fpath = fpath
        if fpath is not None:
            os.makedirs(osp.dirname(osp.abspath(fpath)), exist_ok=True)
            self.file = open(fpath, "w", encoding="utf-8", buffering=1)  # line-buffered: a crash keeps the log

    def write(self, msg: str) -> None:
        self.console.write(msg)
        if self.file is not None:
            self.file.write(msg)

    def flush(self) -> None:
        self.console.flush()
        if self.file is not None:
            self.file.flush()
            os.fsync(self.file.fileno())

    def isatty(self) -> bool:
        return False

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    def __getattr__(self, name: str):
        return getattr(self.console, name)


def setup_logger(output: Optional[str] = None) -> Optional[str]:
    """Tee stdout to ``output/log.txt`` (or to ``output`` if it ends in .txt/.log).

    An existing log file is never overwritten: the new log gets a ``-YYYY-MM-DD-HH-MM-SS``
    suffix, as in Dassl. Returns the path written to.
    """
    if output is None:
        return None
    fpath = output if output.endswith((".txt", ".log")) else osp.join(output, "log.txt")
    if osp.exists(fpath):
        fpath += time.strftime("-%Y-%m-%d-%H-%M-%S")
    previous = sys.stdout
    if isinstance(previous, Logger):
        previous.close()
        previous = previous.console
    sys.stdout = Logger(fpath, console=previous)
    return fpath


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
