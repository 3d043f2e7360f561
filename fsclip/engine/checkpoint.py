"""Checkpoints in Dassl's layout, loadable with ``torch.load(weights_only=True)``.

Layout: ``<dir>/<model_name>/model.pth.tar-<epoch>`` (or ``model-best.pth.tar``) holding a dict
with keys ``state_dict``, ``epoch``, ``optimizer``, ``scheduler``, ``val_result``, plus a text
file ``<dir>/<model_name>/checkpoint`` naming the latest file.

Checkpoints written by Dassl/CoOp pickle a scheduler object (its warmup successor), which
``weights_only`` refuses. ``load_checkpoint`` then retries with every such object replaced by an
inert placeholder: no code from the file runs, and the tensors load intact. Placeholders are
accepted under ``scheduler`` only (the state nobody reads back from such files); a file that
pickles objects anywhere else (``val_result``, the weights, ...) or that torch's weights-only
loader refuses outright (a blocked module such as ``posix.system``) is not a plain checkpoint and
is refused for safety (:class:`CheckpointError`, one line naming the file).
"""

from __future__ import annotations

import os.path as osp
import re
import shutil
from collections import OrderedDict
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn
from torch.serialization import safe_globals

from ..errors import UserFacingError
from .utils import atomic_torch_save, atomic_write_text, disk_full, is_disk_full, mkdir_if_missing


def save_checkpoint(state: Dict[str, Any], save_dir: str, is_best: bool = False,
                    remove_module_from_keys: bool = True, model_name: str = "") -> str:
    """Save ``state`` to ``save_dir/model.pth.tar-<epoch>`` (atomically) and update the
    ``checkpoint`` pointer file. Returns the path written."""
    mkdir_if_missing(save_dir)
    if remove_module_from_keys:
        state = dict(state)
        state["state_dict"] = OrderedDict(
            (k[7:] if k.startswith("module.") else k, v) for k, v in state["state_dict"].items()
        )
    epoch = state["epoch"]
    if not model_name:
        model_name = f"model.pth.tar-{epoch}"
    fpath = osp.join(save_dir, model_name)
    atomic_torch_save(state, fpath)
    print(f"Checkpoint saved to {fpath}")
    atomic_write_text(osp.join(save_dir, "checkpoint"), f"{osp.basename(fpath)}\n")
    if is_best:
        best_fpath = osp.join(osp.dirname(fpath), "model-best.pth.tar")
        try:
            shutil.copy(fpath, best_fpath)
        except OSError as err:
            if is_disk_full(err):
                raise disk_full(best_fpath) from None
            raise
        print(f'Best checkpoint saved to "{best_fpath}"')
    return fpath


class CheckpointError(UserFacingError, RuntimeError):
    """A checkpoint file is corrupt, or not a plain checkpoint (refused for safety)."""


_SAFE_FOR = "Load only checkpoints written by train.py (fsclip), Dassl or CoOp"


def _not_plain(fpath: str, what: str) -> CheckpointError:
    return CheckpointError(f"Checkpoint {fpath} is not a plain checkpoint ({what}); it is refused "
                           f"for safety and nothing in it was run. {_SAFE_FOR}")


class _Inert:
    """Stands in for a class a legacy checkpoint names: stores what it is given, runs nothing."""

    def __new__(cls, *args: Any, **kwargs: Any) -> "_Inert":
        obj = object.__new__(cls)
        obj.__dict__["_args"] = args
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_state"] = state

    def __repr__(self) -> str:
        return f"<placeholder for {type(self).__qualname__}>"


_UNSUPPORTED = re.compile(r"Unsupported global: GLOBAL ([\w\.]+)")


def load_checkpoint(fpath: str) -> Dict[str, Any]:
    """Load a checkpoint on the CPU with ``weights_only=True``.

    Legacy Dassl/CoOp files that pickle objects are loaded with those objects replaced by
    inert placeholders (a note lists them); nothing in the file is executed.
    """
    if not fpath:
        raise ValueError("File path is empty")
    if not osp.exists(fpath):
        raise FileNotFoundError(f'No checkpoint file at "{fpath}"')
    placeholders: List[Any] = []
    names: List[str] = []
    for _ in range(64):
        try:
            with safe_globals(placeholders):
                ckpt = torch.load(fpath, map_location="cpu", weights_only=True)
            break
        except Exception as err:  # torch raises UnpicklingError wrapped in various types
            text = str(err)
            match = _UNSUPPORTED.search(text)
            if match is None or match.group(1) in names:
                raise _load_error(fpath, text) from None
            full_path = match.group(1)
            module, _, name = full_path.rpartition(".")
            stub = type(name, (_Inert,), {"__module__": module, "__qualname__": name})
            placeholders.append((stub, full_path))
            names.append(full_path)
    else:  # pragma: no cover - a file naming 64 distinct classes
        raise _not_plain(fpath, "it names over 64 classes")
    if names:
        outside = _placeholder_keys(ckpt)
        if outside:
            raise _not_plain(fpath, f"{', '.join(outside)} hold{'s' if len(outside) == 1 else ''} "
                                    f"pickled objects ({', '.join(names)}) instead of tensors and numbers")
        print(f"Note: {fpath} pickles objects {names}; they were replaced by inert placeholders "
              f"(weights are intact)")
    return ckpt


_GLOBAL = re.compile(r"GLOBAL ([\w\.]+)")


def _load_error(fpath: str, text: str) -> CheckpointError:
    """One line for a file torch cannot load: refused by the weights-only loader, or corrupt."""
    if "Weights only load failed" in text or "WeightsUnpickler" in text:
        match = _GLOBAL.search(text)
        if match:
            return _not_plain(fpath, f"it asks to call or build {match.group(1)}")
        detail = text.split("WeightsUnpickler error:")[-1].strip().splitlines()
        detail = detail[0].strip() if detail and "WeightsUnpickler error:" in text else "unreadable pickle"
        return CheckpointError(f"Checkpoint {fpath} is corrupt or not a plain checkpoint (torch's "
                               f"weights-only loader: {detail[:120]}); it is refused for safety and "
                               f"nothing in it was run. {_SAFE_FOR}")
    first = next((line.strip() for line in text.splitlines() if line.strip()), "").split(". ")[0]
    return CheckpointError(f"Cannot load checkpoint {fpath}: {first[:200]}. It is corrupt or not a "
                           f"checkpoint; {_SAFE_FOR}")


def _placeholder_keys(ckpt: Any) -> List[str]:
    """The top-level keys (other than ``scheduler``) under which a placeholder was loaded."""
    def has(obj: Any) -> bool:
        if isinstance(obj, _Inert):
            return True
        if isinstance(obj, dict):
            return any(has(k) or has(v) for k, v in obj.items())
        if isinstance(obj, (list, tuple, set)):
            return any(has(v) for v in obj)
        return False

    if not isinstance(ckpt, dict):
        return ["the whole file"] if has(ckpt) else []
    return [repr(k) for k, v in ckpt.items() if k != "scheduler" and (has(k) or has(v))]


def resume_from_checkpoint(fdir: str, model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None,
                           scheduler: Any = None) -> int:
    """Resume from the file named in ``fdir/checkpoint``; returns the epoch to start from."""
    with open(osp.join(fdir, "checkpoint"), "r") as f:
        model_name = f.readlines()[0].strip("\n")
        fpath = osp.join(fdir, model_name)
    print(f'Load checkpoint from "{fpath}"')
    checkpoint = load_checkpoint(fpath)
    model.load_state_dict(checkpoint["state_dict"])
    print("Loaded model weights")
    if optimizer is not None and checkpoint.get("optimizer") is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        print("Loaded optimizer")
    if scheduler is not None and isinstance(checkpoint.get("scheduler"), dict):
        scheduler.load_state_dict(checkpoint["scheduler"])
        print("Loaded scheduler")
    start_epoch = checkpoint["epoch"]
    print(f"Previous epoch: {start_epoch}")
    return start_epoch


def load_pretrained_weights(model: nn.Module, weight_path: str) -> None:
    """Load matching keys (name and shape) of a checkpoint into ``model``; report the rest."""
    checkpoint = load_checkpoint(weight_path)
    state_dict = checkpoint.get("state_dict", checkpoint)
    model_dict = model.state_dict()
    matched, discarded = OrderedDict(), []
    for k, v in state_dict.items():
        k = k[7:] if k.startswith("module.") else k
        if k in model_dict and model_dict[k].size() == v.size():
            matched[k] = v
        else:
            discarded.append(k)
    model_dict.update(matched)
    model.load_state_dict(model_dict)
    if not matched:
        print(f'Cannot load "{weight_path}" (check the key names manually)')
    else:
        print(f'Successfully loaded pretrained weights from "{weight_path}"')
        if discarded:
            print(f"Layers discarded due to unmatched keys or size: {discarded}")
