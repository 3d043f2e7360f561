"""On-disk cache of frozen-trunk features, shared by every frozen-backbone method.

The trunk G runs once per image and view; the result ``[N, V, ...]`` is stored (fp16 by
default) under ``<root>/<key[:2]>/<key>.pt`` where ``key`` hashes everything the features depend
on: backbone weights, trunk kind, dataset, split, transform, number of views and their seed, and
the image list (paths, sizes, modification times). Files are written atomically, loaded with
``weights_only=True`` and verified (metadata and shape) on load; a mismatch recomputes.

Disk budget: before writing, the cache adds up the sizes of its files. An entry that would take
the total over the budget is not written: it is computed for this run only (a note says so), so
later runs compute it again. Lower the number of training views or raise the budget
(TRAINER.FEATURES.MAX_GB) to keep everything cached.
"""

from __future__ import annotations

import hashlib
import json
import os
import os.path as osp
from typing import Any, Callable, Dict, Iterable, Optional

import torch
from torch import Tensor

from fsclip.engine.utils import atomic_torch_save

CACHE_FORMAT = 1


def fingerprint_tensors(state: Dict[str, Tensor]) -> str:
    """sha256 of a state dict's names, shapes, dtypes and bytes (identifies backbone weights)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def fingerprint_images(impaths: Iterable[str]) -> str:
    """sha256 over each image's path, size and modification time (cheap: one stat per file)."""
    h = hashlib.sha256()
    for p in impaths:
        try:
            st = os.stat(p)
            h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}|missing\n".encode())
    return h.hexdigest()


def _folder_bytes(root: str) -> int:
    total = 0
    for dirpath, _, files in os.walk(root):
        for f in files:
            try:
                total += os.stat(osp.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


class FeatureCache:
    """``get(meta, compute)`` returns cached features for ``meta`` or computes and stores them.

    ``root=""`` disables the disk (everything is computed in memory).
    """

    def __init__(self, root: str, max_bytes: int, verbose: bool = True) -> None:
        self.root = osp.abspath(osp.expanduser(root)) if root else ""
        self.max_bytes = int(max_bytes)
        self.verbose = verbose
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(meta: Dict[str, Any]) -> str:
        blob = json.dumps({"format": CACHE_FORMAT, **meta}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def path(self, meta: Dict[str, Any]) -> str:
        key = self.key(meta)
        return osp.join(self.root, key[:2], f"{key}.pt")

    def _load(self, path: str, meta: Dict[str, Any]) -> Optional[Tensor]:
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # corrupt or foreign file: recompute
            print(f"Feature cache entry {path} is unreadable ({type(err).__name__}); recomputing it")
            return None
        expected = json.loads(json.dumps(meta, sort_keys=True, default=str))
        feats = blob.get("features") if isinstance(blob, dict) else None
        if blob.get("meta") != expected or not isinstance(feats, Tensor) or feats.shape[0] != meta.get("count"):
            print(f"Feature cache entry {path} does not match its key; recomputing it")
            return None
        return feats

    def get(self, meta: Dict[str, Any], compute: Callable[[], Tensor], nbytes_estimate: int = 0) -> Tensor:
        """Features for ``meta`` (which must contain ``count``, the number of images)."""
        if not self.root:
            self.misses += 1
            return compute()
        path = self.path(meta)
        if osp.exists(path):
            feats = self._load(path, meta)
            if feats is not None:
                self.hits += 1
                if self.verbose:
                    print(f"Loaded {meta.get('split')} features {tuple(feats.shape)} from cache {path}")
                return feats
        self.misses += 1
        used = _folder_bytes(self.root) if osp.isdir(self.root) else 0
        if nbytes_estimate and used + nbytes_estimate > self.max_bytes:
            print(f"Note: {meta.get('split')} features need {nbytes_estimate / 2**30:.2f} GiB but the feature "
                  f"cache holds {used / 2**30:.2f} of {self.max_bytes / 2**30:.2f} GiB "
                  f"(TRAINER.FEATURES.MAX_GB); computing them for this run only")
            return compute()
        feats = compute()
        meta_json = json.loads(json.dumps(meta, sort_keys=True, default=str))
        atomic_torch_save({"meta": meta_json, "features": feats}, path)
        if self.verbose:
            print(f"Saved {meta.get('split')} features {tuple(feats.shape)} to cache {path}")
        return feats
