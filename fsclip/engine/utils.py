"""Small utilities shared by the engine (seeding, files, meters)."""

from __future__ import annotations

import errno
import os
import os.path as osp
import random
import tempfile
from collections import defaultdict
from typing import Any, Dict, List

import numpy as np
import torch

from ..errors import ConfigError
from .fileio import atomic_write_bytes, atomic_write_text, disk_full, is_disk_full  # noqa: F401  (re-exported)

_LOW_SPACE = 1 << 20  # bytes free under which a failed write is blamed on a full disk


def set_random_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) like Dassl."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def mkdir_if_missing(dirname: str) -> None:
    if not osp.exists(dirname):
        try:
            os.makedirs(dirname)
        except OSError as e:
            if e.errno != errno.EEXIST:
                raise


def require_folder(path: str, what: str, fix: str) -> None:
    """Raise ConfigError when ``path`` (or a parent of it) exists and is not a folder, so that it
    can neither be used nor created as one. ``what`` names the path ("The output folder
    (--output-dir)"), ``fix`` says what to do."""
    probe = osp.abspath(osp.expanduser(path))
    while True:
        if osp.exists(probe):
            if osp.isdir(probe):
                return
            where = "is a file" if probe == osp.abspath(osp.expanduser(path)) else f"is under the file {probe}"
            raise ConfigError(f"{what} {path} {where}, not a folder: {fix}")
        parent = osp.dirname(probe)
        if parent == probe:
            return
        probe = parent


def free_bytes(path: str) -> int:
    """Bytes an unprivileged process may still write on ``path``'s file system (-1: unknown)."""
    try:
        st = os.statvfs(path)
    except (OSError, AttributeError):
        return -1
    return st.f_bavail * st.f_frsize


def _reason(err: OSError) -> str:
    return {errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
            errno.EPERM: "permission denied"}.get(err.errno, err.strerror or type(err).__name__)


def require_writable_folder(path: str, what: str, fix: str) -> None:
    """``require_folder``, then create ``path`` if missing and check that files can be written
    there (permissions, read-only file system, name length, some free space); a ConfigError
    (DiskFullError with 0 bytes free) otherwise, before anything is written, and marked so
    that ``train.py`` does not try to put its error line in that folder."""
    require_folder(path, what, fix)
    try:
        _check_writable(osp.abspath(osp.expanduser(path)), path, what)
    except ConfigError as err:
        err.log_in_output_dir = False  # type: ignore[attr-defined]
        raise


def _check_writable(folder: str, path: str, what: str) -> None:
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        if err.errno == errno.ENAMETOOLONG:
            raise ConfigError(f"{what} {path}: the name is too long for the file system "
                              f"({err.strerror}); pass a shorter path") from None
        if is_disk_full(err):
            raise disk_full(folder) from None
        raise ConfigError(f"{what} {path} cannot be created ({_reason(err)}): pass a folder "
                          f"you can write to") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        ro = not os.access(folder, os.W_OK) and _read_only_fs(folder)
        raise ConfigError(f"{what} {path} is not writable ("
                          f"{'read-only file system' if ro else 'permission denied'}): "
                          f"pass a folder you can write to")
    if free_bytes(folder) == 0:
        raise disk_full(osp.join(folder, "log.txt"))


def _read_only_fs(folder: str) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def tolist_if_not(x: Any) -> list:
    return x if isinstance(x, list) else [x]


def count_num_param(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def atomic_torch_save(obj: Any, path: str) -> None:
    """torch.save to a temporary file next to ``path``, then rename it into place. A full disk
    (ENOSPC, or torch's zip-writer RuntimeError with no space left) raises DiskFullError naming
    ``path``, which is then untouched."""
    folder = osp.dirname(osp.abspath(path))
    tmp = ""
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix="-" + osp.basename(path), dir=folder)
        os.close(fd)
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException as err:
        full = is_disk_full(err) or (isinstance(err, RuntimeError) and _zip_write_failed(err)
                                     and 0 <= free_bytes(folder) < _LOW_SPACE)
        if tmp and osp.exists(tmp):
            os.unlink(tmp)
        if full:
            raise disk_full(path) from None
        raise


def _zip_write_failed(err: RuntimeError) -> bool:
    """torch's writer failing at the file system ("PytorchStreamWriter failed writing file ...")."""
    text = str(err)
    return "PytorchStreamWriter" in text or "inline_container" in text


class AverageMeter:
    """Running value and average of a scalar."""

    def __init__(self, ema: bool = False) -> None:
        self.ema = ema
        self.reset()

    def reset(self) -> None:
        self.val = 0.0
        self.avg = 0.0
        self.sum = 0.0
        self.count = 0

    def update(self, val: Any, n: int = 1) -> None:
        if isinstance(val, torch.Tensor):
            val = val.item()
        self.val = val
        self.sum += val * n
        self.count += n
        if self.ema:
            self.avg = self.avg * 0.9 + self.val * 0.1
        else:
            self.avg = self.sum / self.count


class MetricMeter:
    """A group of AverageMeters printed as ``name val (avg)`` joined by a space."""

    def __init__(self, delimiter: str = " ") -> None:
        self.meters: Dict[str, AverageMeter] = defaultdict(AverageMeter)
        self.delimiter = delimiter

    def update(self, input_dict: Dict[str, Any]) -> None:
        if input_dict is None:
            return
        if not isinstance(input_dict, dict):
            raise TypeError("Input to MetricMeter.update() must be a dictionary")
        for k, v in input_dict.items():
            if isinstance(v, torch.Tensor):
                v = v.item()
            self.meters[k].update(v)

    def __str__(self) -> str:
        parts: List[str] = [f"{name} {meter.val:.4f} ({meter.avg:.4f})" for name, meter in self.meters.items()]
        return self.delimiter.join(parts)
