"""On-disk cache of frozen-trunk features, per image, shared by every frozen-backbone method.

The trunk G runs once per image and view. Entries live in a *space* (a folder) named by a hash
of everything the features depend on except the image: backbone weights, trunk kind, transform,
number of views and their seed, storage dtype and precision. Inside a space, each image is keyed
by its path, size and modification time, so a run reuses whatever earlier runs computed
(other shots, seeds, hyperparameters, methods) and computes only the images it lacks.

Layout: ``<root>/<space>/space.json`` (what the space holds), ``<root>/<space>/index.json``
(image key -> shard and row) and ``<root>/<space>/shards/<id>.pt`` (``{"keys", "features"}``,
features ``[n, V, ...]``). Shards and the index are written atomically (temporary file +
rename); the index is updated under a file lock, so concurrent runs only add to it. Shards are
loaded with ``weights_only=True`` and each row is checked against its image key; anything
unreadable or inconsistent is recomputed.

Disk budget: before writing a shard the cache adds up its files. A shard that would take the
total over the budget (TRAINER.FEATURES.MAX_GB) is not written: its features serve this run
only (a note says so) and later runs compute them again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import os.path as osp
import uuid
from typing import Any, Callable, Dict, Iterator, List, Sequence

import torch
from torch import Tensor

from fsclip.engine.utils import atomic_torch_save, atomic_write_text

CACHE_FORMAT = 2


def fingerprint_tensors(state: Dict[str, Tensor]) -> str:
    """sha256 of a state dict's names, shapes, dtypes and bytes (identifies backbone weights)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def image_key(path: str) -> str:
    """Identity of an image file: its absolute path, size and modification time."""
    path = osp.abspath(path)
    try:
        st = os.stat(path)
        stamp = f"{st.st_size}|{st.st_mtime_ns}"
    except OSError:
        stamp = "missing"
    return hashlib.sha256(f"{path}|{stamp}".encode()).hexdigest()[:32]


def _folder_bytes(root: str) -> int:
    total = 0
    for dirpath, _, files in os.walk(root):
        for f in files:
            try:
                total += os.stat(osp.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


class FeatureCache:
    """``get(space, impaths, compute)`` -> ``[N, V, ...]`` features, computing only missing images.

    ``root=""`` disables the disk (everything is computed, nothing stored).
    """

    def __init__(self, root: str, max_bytes: int, verbose: bool = True) -> None:
        self.root = osp.abspath(osp.expanduser(root)) if root else ""
        self.max_bytes = int(max_bytes)
        self.verbose = verbose
        self.computed = 0  # images sent through `compute` by this object
        self.reused = 0  # images served from disk by this object

    @staticmethod
    def space_id(space: Dict[str, Any]) -> str:
        blob = json.dumps({"format": CACHE_FORMAT, **space}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:40]

    def space_dir(self, space: Dict[str, Any]) -> str:
        return osp.join(self.root, self.space_id(space))

    def _read_index(self, folder: str) -> Dict[str, List]:
        path = osp.join(folder, "index.json")
        if not osp.exists(path):
            return {}
        try:
            with open(path, "r", encoding="utf-8") as f:
                index = json.load(f)
            return index if isinstance(index, dict) else {}
        except (OSError, ValueError):
            print(f"Feature cache index {path} is unreadable; its entries will be recomputed")
            return {}

    def _load_rows(self, folder: str, index: Dict[str, List], keys: Sequence[str]) -> Dict[str, Tensor]:
        """Rows for ``keys`` found in the index and verified in their shard."""
        by_shard: Dict[str, List[tuple]] = {}
        for k in keys:
            entry = index.get(k)
            if isinstance(entry, list) and len(entry) == 2:
                by_shard.setdefault(str(entry[0]), []).append((k, int(entry[1])))
        found: Dict[str, Tensor] = {}
        for shard, wanted in by_shard.items():
            path = osp.join(folder, "shards", osp.basename(shard))
            try:
                blob = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                shard_keys, feats = blob["keys"], blob["features"]
            except Exception as err:  # missing, truncated or foreign file: recompute its rows
                print(f"Feature cache shard {path} is unreadable ({type(err).__name__}); recomputing")
                continue
            for k, row in wanted:
                if 0 <= row < len(shard_keys) and shard_keys[row] == k and row < feats.shape[0]:
                    found[k] = feats[row]
        return found

    def get(self, space: Dict[str, Any], impaths: Sequence[str], compute: Callable[[List[str]], Tensor],
            label: str = "") -> Tensor:
        """Features of ``impaths`` (in order) in ``space``; ``compute(paths)`` gives ``[n, V, ...]``."""
        keys = [image_key(p) for p in impaths]
        if not self.root:
            self.computed += len(impaths)
            return compute(list(impaths))
        folder = self.space_dir(space)
        found = self._load_rows(folder, self._read_index(folder), keys)
        missing = [i for i, k in enumerate(keys) if k not in found]
        # duplicates in impaths are computed once
        todo: Dict[str, str] = {}
        for i in missing:
            todo.setdefault(keys[i], impaths[i])
        self.reused += len(impaths) - len(missing)
        if self.verbose and found:
            print(f"Feature cache: {len(impaths) - len(missing)}/{len(impaths)} {label} images reused from {folder}")
        if todo:
            todo_keys = list(todo)
            feats = compute([todo[k] for k in todo_keys])
            self.computed += len(todo_keys)
            for k, row in zip(todo_keys, feats):
                found[k] = row
            self._store(folder, space, todo_keys, feats, label)
        return torch.stack([found[k] for k in keys])

    def _store(self, folder: str, space: Dict[str, Any], keys: List[str], feats: Tensor, label: str) -> None:
        os.makedirs(osp.join(folder, "shards"), exist_ok=True)
        used = _folder_bytes(self.root)
        nbytes = feats.numel() * feats.element_size()
        if used + nbytes > self.max_bytes:
            print(f"Note: {label} features ({nbytes / 2**30:.2f} GiB) do not fit the feature cache "
                  f"({used / 2**30:.2f} of {self.max_bytes / 2**30:.2f} GiB used, TRAINER.FEATURES.MAX_GB); "
                  f"computing them for this run only")
            return
        space_file = osp.join(folder, "space.json")
        if not osp.exists(space_file):
            atomic_write_text(space_file, json.dumps(space, sort_keys=True, indent=1, default=str))
        shard = f"{uuid.uuid4().hex}.pt"
        atomic_torch_save({"keys": list(keys), "features": feats.contiguous()}, osp.join(folder, "shards", shard))
        with _locked(osp.join(folder, "index.lock")):
            index = self._read_index(folder)
            for row, k in enumerate(keys):
                index[k] = [shard, row]
            atomic_write_text(osp.join(folder, "index.json"), json.dumps(index))
        if self.verbose:
            print(f"Feature cache: stored {label} features {tuple(feats.shape)} in {folder}")


def cache_from_cfg(features_cfg: Any) -> FeatureCache:
    """The feature cache of a ``TRAINER.FEATURES`` node: CACHE_DIR ("" -> ~/.cache/fsclip/features,
    "none" -> no disk cache) and MAX_GB."""
    root = features_cfg.CACHE_DIR or osp.join(osp.expanduser("~"), ".cache", "fsclip", "features")
    return FeatureCache("" if root.lower() == "none" else root, int(features_cfg.MAX_GB * 2**30))
