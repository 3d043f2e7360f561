"""On-disk cache of frozen-trunk features, per image, shared by every frozen-backbone method.

The trunk G runs once per image and view. Entries live in a *space* (a folder) named by a hash
of everything the features depend on except the image: backbone weights, trunk kind, transform,
number of views and their seed, storage dtype and precision. Inside a space, each image is keyed
by its path, size and modification time, so a run reuses whatever earlier runs computed
(other shots, seeds, hyperparameters, methods) and computes only the images it lacks.

Layout of a space ``<root>/<space>/``: ``space.json`` (what the space holds), ``index.json``
(``{"entries": {image key: [shard, row]}, "shards": {shard: {"crc32", "bytes"}}}``) and
``shards/<id>.pt`` (``{"keys", "features"}``, features ``[n, V, ...]``).

Integrity. Every shard's CRC-32 (computed while it is written) is recorded in the index and
checked the first time a process reads the shard; a shard that fails (flipped bytes, a
truncated copy) is reported, dropped from the index and deleted, and its images are computed
again and stored in a new shard. Rows are also checked against their image keys, and shards are
loaded with ``weights_only=True``.

Concurrency. A shard is written under a temporary name, then renamed and indexed in one step
under the space's index lock (``index.lock``), so the index only grows by complete shards and a
shard file without an index entry is garbage: each index rewrite deletes such orphans (left by a
recompute or a crashed run) and temporary files older than an hour. A run that lacks images
takes the space's extraction lock (``extract.lock``) before computing them; a second run needing
the same space waits for it, then reads what the first stored, so concurrent runs (a sweep's
workers) never send an image through the trunk twice. Locks are ``flock`` locks: a killed run
releases them.

Disk budget: before writing a shard the cache adds up its files. A shard that would take the
total over the budget (TRAINER.FEATURES.MAX_GB) is not written: its features serve this run
only (a note says so) and later runs compute them again. So does a disk that refuses writes (full,
read-only, e.g. a read-only HOME under the default folder): a note names the folder and
TRAINER.FEATURES.CACHE_DIR, the run goes on from memory and stops writing to the cache.

``python -m fsclip.adapt.cache info [DIR]`` prints each space's contents and size;
``python -m fsclip.adapt.cache gc [DIR] [--verify]`` removes orphans, stale temporary files and
spaces of older cache formats (``--verify`` also checks every shard's checksum).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import os.path as osp
import shutil
import sys
import tempfile
import time
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from fsclip.engine.fileio import DiskFullError
from fsclip.engine.utils import atomic_write_text, require_folder

CACHE_FORMAT = 3  # 3: index with per-shard checksums (2: flat index without them)
TMP_GRACE_S = 3600.0  # a temporary shard file this old belongs to a dead writer
_CHUNK = 8 << 20

Index = Dict[str, Dict[str, Any]]


def default_cache_dir() -> str:
    """Where the cache lives when TRAINER.FEATURES.CACHE_DIR is empty."""
    return osp.join(osp.expanduser("~"), ".cache", "fsclip", "features")


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


def file_crc32(path: str) -> str:
    """CRC-32 of a file's bytes, read in chunks (zlib's; about 1.5 GB/s on one core)."""
    crc = 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                break
            crc = zlib.crc32(chunk, crc)
    return f"{crc:08x}"


class _ChecksumWriter:
    """A write-only file wrapper that computes the CRC-32 of everything written through it.

    It has no ``seek``: a serializer that needed to rewrite earlier bytes would fail loudly
    instead of leaving a checksum that does not match the file.
    """

    def __init__(self, f: Any) -> None:
        self._f = f
        self.crc = 0
        self.nbytes = 0

    def write(self, data: bytes) -> int:
        self.crc = zlib.crc32(data, self.crc)
        self.nbytes += len(data)
        return self._f.write(data)

    def flush(self) -> None:
        self._f.flush()

    @property
    def hexdigest(self) -> str:
        return f"{self.crc:08x}"


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
def _locked(path: str, waiting: Optional[str] = None) -> Iterator[None]:
    """An exclusive ``flock`` on ``path``; prints ``waiting`` when another process holds it."""
    with open(path, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting:
                print(waiting)
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _empty_index() -> Index:
    return {"entries": {}, "shards": {}}


def read_index(folder: str) -> Index:
    """A space's index (empty when absent or unreadable; an unreadable one is reported)."""
    path = osp.join(folder, "index.json")
    if not osp.exists(path):
        return _empty_index()
    try:
        with open(path, "r", encoding="utf-8") as f:
            index = json.load(f)
        if not (isinstance(index, dict) and isinstance(index.get("entries"), dict)
                and isinstance(index.get("shards"), dict)):
            raise ValueError("not a feature-cache index")
        return index
    except (OSError, ValueError):
        print(f"Feature cache index {path} is unreadable; its entries will be recomputed")
        return _empty_index()


def _is_shard_name(name: str) -> bool:
    return name.endswith(".pt") and not name.startswith(".")


def _write_index(folder: str, index: Index) -> List[str]:
    """Rewrite the index (call under the index lock): drop shard records no entry uses, then
    delete shard files the index does not name and stale temporary files. Returns what was
    deleted."""
    used = {str(e[0]) for e in index["entries"].values()}
    index["shards"] = {s: rec for s, rec in index["shards"].items() if s in used}
    atomic_write_text(osp.join(folder, "index.json"), json.dumps(index))
    removed = []
    shard_dir = osp.join(folder, "shards")
    now = time.time()
    for name in (os.listdir(shard_dir) if osp.isdir(shard_dir) else []):
        path = osp.join(shard_dir, name)
        try:
            orphan = _is_shard_name(name) and name not in index["shards"]
            stale_tmp = name.startswith(".tmp-") and now - os.stat(path).st_mtime > TMP_GRACE_S
            if orphan or stale_tmp:
                os.unlink(path)
                removed.append(path)
        except OSError:  # removed meanwhile by another process
            pass
    return removed


def shard_problem(path: str, expected: Optional[str]) -> Optional[str]:
    """None when the shard file's CRC-32 equals ``expected``, else what is wrong with it."""
    if expected is None:
        return "has no checksum in the index"
    try:
        found = file_crc32(path)
    except OSError as err:
        return f"is unreadable ({type(err).__name__})"
    if found != expected:
        return f"fails its checksum (CRC-32 {found}; index.json records {expected})"
    return None


def drop_shard(folder: str, shard: str, record: Any) -> None:
    """Remove a shard's entries from the index and delete the file (unless another process
    replaced its record meanwhile)."""
    with _locked(osp.join(folder, "index.lock")):
        index = read_index(folder)
        if index["shards"].get(shard) == record:
            index["entries"] = {k: e for k, e in index["entries"].items() if str(e[0]) != shard}
            index["shards"].pop(shard, None)
            _write_index(folder, index)


class FeatureCache:
    """``get(space, impaths, compute)`` -> ``[N, V, ...]`` features, computing only missing images.

    ``root=""`` disables the disk (everything is computed, nothing stored). Counters:
    ``computed`` (images sent through ``compute``), ``reused`` (images served from disk) and
    ``corrupt`` (shards that failed their checksum), all for this object.
    """

    def __init__(self, root: str, max_bytes: int, verbose: bool = True) -> None:
        self.root = osp.abspath(osp.expanduser(root)) if root else ""
        if self.root:
            require_folder(self.root, "The feature cache folder (TRAINER.FEATURES.CACHE_DIR)",
                           'set TRAINER.FEATURES.CACHE_DIR to a folder, or to "none" to keep '
                           "no features on disk")
        self.max_bytes = int(max_bytes)
        self.verbose = verbose
        self.writable = bool(self.root)  # False once the disk refused a write (full, read-only)
        self.computed = 0
        self.reused = 0
        self.corrupt = 0
        self._verified: Dict[str, str] = {}  # shard path -> checksum verified by this process

    @staticmethod
    def space_id(space: Dict[str, Any], fmt: int = CACHE_FORMAT) -> str:
        blob = json.dumps({"format": fmt, **space}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:40]

    def space_dir(self, space: Dict[str, Any]) -> str:
        return osp.join(self.root, self.space_id(space))

    # ------------------------------------------------------------------ reading
    def _verified_shards(self, folder: str, records: Dict[str, Any]) -> List[str]:
        """The shards of ``records`` ({shard: index record}) whose bytes match their checksum
        (each checked once per process, several at once: zlib releases the GIL). A failing
        shard is reported, dropped from the index and deleted."""
        paths = {s: osp.join(folder, "shards", s) for s in records}
        expected = {s: r.get("crc32") if isinstance(r, dict) else None for s, r in records.items()}
        todo = [s for s in records if expected[s] is None or self._verified.get(paths[s]) != expected[s]]
        with ThreadPoolExecutor(max_workers=max(1, min(len(todo), os.cpu_count() or 1, 8))) as pool:
            problems = dict(zip(todo, pool.map(lambda s: shard_problem(paths[s], expected[s]), todo)))
        good = []
        for shard in records:
            problem = problems.get(shard)
            if problem is None:
                self._verified[paths[shard]] = expected[shard]
                good.append(shard)
                continue
            self.corrupt += 1
            print(f"Feature cache shard {paths[shard]} {problem}: its images are computed again and "
                  f"the shard is replaced")
            drop_shard(folder, shard, records[shard])
        return good

    def _load_rows(self, folder: str, keys: Sequence[str]) -> Dict[str, Tensor]:
        """Rows for ``keys`` found in the index and verified in their shard."""
        index = read_index(folder)
        by_shard: Dict[str, List[Tuple[str, int]]] = {}
        for k in keys:
            entry = index["entries"].get(k)
            if isinstance(entry, list) and len(entry) == 2:
                by_shard.setdefault(osp.basename(str(entry[0])), []).append((k, int(entry[1])))
        found: Dict[str, Tensor] = {}
        for shard in self._verified_shards(folder, {s: index["shards"].get(s) for s in by_shard}):
            wanted = by_shard[shard]
            path = osp.join(folder, "shards", shard)
            try:
                blob = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                shard_keys, feats = blob["keys"], blob["features"]
            except Exception as err:  # removed meanwhile, or a foreign file: recompute its rows
                print(f"Feature cache shard {path} is unreadable ({type(err).__name__}); its images "
                      f"are computed again")
                self._verified.pop(path, None)
                drop_shard(folder, shard, index["shards"].get(shard))
                continue
            for k, row in wanted:
                if 0 <= row < len(shard_keys) and shard_keys[row] == k and row < feats.shape[0]:
                    found[k] = feats[row]
        return found

    # ------------------------------------------------------------------ the one entry point
    def get(self, space: Dict[str, Any], impaths: Sequence[str], compute: Callable[[List[str]], Tensor],
            label: str = "") -> Tensor:
        """Features of ``impaths`` (in order) in ``space``; ``compute(paths)`` gives ``[n, V, ...]``."""
        keys = [image_key(p) for p in impaths]
        if not self.root:
            self.computed += len(impaths)
            return compute(list(impaths))
        folder = self.space_dir(space)
        found = self._load_rows(folder, keys)
        todo = self._missing(keys, impaths, found)
        if todo:
            waiting = (f"Feature cache: another run is computing features in {folder}; waiting "
                       f"for it, then reusing what it stored")
            with contextlib.ExitStack() as stack:
                if self.writable:
                    try:
                        os.makedirs(folder, exist_ok=True)
                        stack.enter_context(_locked(osp.join(folder, "extract.lock"), waiting))
                    except OSError as err:
                        self._unwritable(folder, err, label)
                if self.writable:
                    found.update(self._load_rows(folder, list(todo)))  # what that run stored meanwhile
                    todo = self._missing(keys, impaths, found)
                if todo:
                    todo_keys = list(todo)
                    feats = compute([todo[k] for k in todo_keys])
                    self.computed += len(todo_keys)
                    for k, row in zip(todo_keys, feats):
                        found[k] = row
                    if self.writable:
                        self._store(folder, space, todo_keys, feats, label)
        n_reused = sum(1 for k in keys if k not in todo)
        self.reused += n_reused
        if self.verbose and n_reused:
            print(f"Feature cache: {n_reused}/{len(impaths)} {label} images reused from {folder}")
        return torch.stack([found[k] for k in keys])

    @staticmethod
    def _missing(keys: Sequence[str], impaths: Sequence[str], found: Dict[str, Tensor]) -> Dict[str, str]:
        """{key: path} of the images not in ``found`` (duplicates in ``impaths`` once)."""
        todo: Dict[str, str] = {}
        for k, p in zip(keys, impaths):
            if k not in found:
                todo.setdefault(k, p)
        return todo

    # ------------------------------------------------------------------ writing
    def _unwritable(self, folder: str, err: OSError, label: str) -> None:
        """Stop writing to the cache for this run (reads go on) and say why, once."""
        self.writable = False
        full = err.errno in (errno.ENOSPC, errno.EDQUOT) or isinstance(err, DiskFullError)
        why = {errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
               errno.EPERM: "permission denied"}.get(err.errno, err.strerror or type(err).__name__)
        print(f"Note: the feature cache cannot be written in {folder} ({'disk full' if full else why}); "
              f"{label} features, and any computed later, are kept in memory for this run only. Set "
              f"TRAINER.FEATURES.CACHE_DIR to a writable folder with free space (or to \"none\")")

    def _store(self, folder: str, space: Dict[str, Any], keys: List[str], feats: Tensor, label: str) -> None:
        """Write a shard and index it; when the disk refuses (full, read-only), carry on from
        memory with a note instead (the cache is an optimisation)."""
        try:
            self._write_shard(folder, space, keys, feats, label)
        except OSError as err:
            self._unwritable(folder, err, label)
        except RuntimeError as err:  # torch's zip writer failing at the file system
            if "PytorchStreamWriter" not in str(err) and "inline_container" not in str(err):
                raise
            self._unwritable(folder, OSError(errno.EIO, "write failed, the disk may be full"), label)

    def _write_shard(self, folder: str, space: Dict[str, Any], keys: List[str], feats: Tensor, label: str) -> None:
        shard_dir = osp.join(folder, "shards")
        os.makedirs(shard_dir, exist_ok=True)
        used = _folder_bytes(self.root)
        nbytes = feats.numel() * feats.element_size()
        if used + nbytes > self.max_bytes:
            print(f"Note: {label} features ({nbytes / 2**30:.2f} GiB) do not fit the feature cache "
                  f"({used / 2**30:.2f} of {self.max_bytes / 2**30:.2f} GiB used, TRAINER.FEATURES.MAX_GB); "
                  f"computing them for this run only")
            return
        space_file = osp.join(folder, "space.json")
        if not osp.exists(space_file):
            atomic_write_text(space_file, json.dumps({"format": CACHE_FORMAT, **space}, sort_keys=True,
                                                     indent=1, default=str))
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=shard_dir)
        shard = f"{uuid.uuid4().hex}.pt"
        indexed = False
        try:
            with os.fdopen(fd, "wb") as f:
                writer = _ChecksumWriter(f)
                torch.save({"keys": list(keys), "features": feats.contiguous()}, writer)
                f.flush()
                os.fsync(f.fileno())
            with _locked(osp.join(folder, "index.lock")):
                os.replace(tmp, osp.join(shard_dir, shard))  # named and indexed in one step
                index = read_index(folder)
                for row, k in enumerate(keys):
                    index["entries"][k] = [shard, row]
                index["shards"][shard] = {"crc32": writer.hexdigest, "bytes": writer.nbytes}
                removed = _write_index(folder, index)
                indexed = True
        finally:
            for path in (tmp, "" if indexed else osp.join(shard_dir, shard)):  # no orphan left
                if path and osp.exists(path):
                    os.unlink(path)
        self._verified[osp.join(shard_dir, shard)] = writer.hexdigest
        if self.verbose:
            print(f"Feature cache: stored {label} features {tuple(feats.shape)} in {folder}")
            if removed:
                print(f"Feature cache: removed {len(removed)} file(s) no index entry points to")


def cache_from_cfg(features_cfg: Any) -> FeatureCache:
    """The feature cache of a ``TRAINER.FEATURES`` node: CACHE_DIR ("" -> the default folder,
    "none" -> no disk cache) and MAX_GB."""
    root = features_cfg.CACHE_DIR or default_cache_dir()
    return FeatureCache("" if root.lower() == "none" else root, int(features_cfg.MAX_GB * 2**30))


# ---------------------------------------------------------------------------------------------
# Maintenance: python -m fsclip.adapt.cache info|gc [DIR]
# ---------------------------------------------------------------------------------------------

def _space_format(folder: str) -> Optional[int]:
    """The cache format that wrote a space folder (its name is the hash of space.json's
    contents and the format), or None for a folder that is not a space."""
    try:
        with open(osp.join(folder, "space.json"), "r", encoding="utf-8") as f:
            space = json.load(f)
        space.pop("format", None)
    except (OSError, ValueError, AttributeError):
        return None
    name = osp.basename(folder)
    for fmt in range(CACHE_FORMAT, 0, -1):
        if FeatureCache.space_id(space, fmt) == name:
            return fmt
    return None


def _spaces(root: str) -> List[str]:
    if not osp.isdir(root):
        raise SystemExit(f"ERROR: {root} is not a folder")
    return sorted(osp.join(root, d) for d in os.listdir(root) if osp.isdir(osp.join(root, d)))


def _size(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.2f} {unit}"
        nbytes /= 1024
    return ""


def describe_space(folder: str) -> str:
    """One line about what a space holds (from its space.json)."""
    try:
        with open(osp.join(folder, "space.json"), "r", encoding="utf-8") as f:
            space = json.load(f)
    except (OSError, ValueError):
        return "(no space.json)"
    parts = [f"{k}={space[k]}" for k in ("trunk", "views", "view_seed", "dtype", "prec") if k in space]
    if "backbone" in space:
        parts.insert(0, f"backbone={str(space['backbone'])[:12]}")
    return " ".join(parts)


def info(root: str) -> int:
    """Print every space of the cache at ``root``: images, shards, orphans and size."""
    total = 0
    spaces = _spaces(root)
    print(f"Feature cache {root}: {len(spaces)} space(s)")
    for folder in spaces:
        size = _folder_bytes(folder)
        total += size
        fmt = _space_format(folder)
        index = read_index(folder)
        shard_dir = osp.join(folder, "shards")
        files = [n for n in (os.listdir(shard_dir) if osp.isdir(shard_dir) else []) if _is_shard_name(n)]
        orphans = [n for n in files if n not in index["shards"]]
        orphan_bytes = sum(os.path.getsize(osp.join(shard_dir, n)) for n in orphans)
        state = "current format" if fmt == CACHE_FORMAT else (
            f"format {fmt}, unused by this version" if fmt else "not a feature-cache space")
        print(f"  {osp.basename(folder)}  {_size(size):>10}  {len(index['entries'])} images in "
              f"{len(index['shards'])} shards, {len(orphans)} orphan shards ({_size(orphan_bytes)}); "
              f"{state}; {describe_space(folder)}")
    print(f"Total: {_size(total)}")
    return 0


def gc(root: str, verify: bool = False) -> int:
    """Remove what no index entry points to (orphan shards, stale temporary files), index
    entries whose shard is gone, and spaces written by older cache formats; with ``verify``,
    also check every shard's checksum and drop the ones that fail."""
    before = _folder_bytes(root) if osp.isdir(root) else 0
    for folder in _spaces(root):
        fmt = _space_format(folder)
        if fmt is not None and fmt < CACHE_FORMAT:
            print(f"Removing {folder} (cache format {fmt}; this version reads format {CACHE_FORMAT})")
            shutil.rmtree(folder, ignore_errors=True)
            continue
        if fmt is None and not osp.exists(osp.join(folder, "index.json")):
            continue  # not a space (or one that never stored anything)
        if verify:
            for shard, record in list(read_index(folder)["shards"].items()):
                crc = record.get("crc32") if isinstance(record, dict) else None
                problem = shard_problem(osp.join(folder, "shards", shard), crc)
                if problem:
                    print(f"Removing {osp.join(folder, 'shards', shard)}: it {problem}")
                    drop_shard(folder, shard, record)
        with _locked(osp.join(folder, "index.lock")):
            index = read_index(folder)
            shard_dir = osp.join(folder, "shards")
            gone = {s for s in index["shards"] if not osp.exists(osp.join(shard_dir, s))}
            index["entries"] = {k: e for k, e in index["entries"].items()
                                if str(e[0]) in index["shards"] and str(e[0]) not in gone}
            for path in _write_index(folder, index):
                print(f"Removed {path}")
            if gone:
                print(f"Dropped the entries of {len(gone)} missing shard(s) from {folder}/index.json")
    freed = before - _folder_bytes(root)
    print(f"Freed {_size(max(freed, 0))}; the cache now takes {_size(_folder_bytes(root))}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fsclip.adapt.cache",
                                description="Inspect or clean the frozen-feature cache")
    p.add_argument("command", choices=("info", "gc"),
                   help="info: size and contents per space; gc: remove orphaned and stale files")
    p.add_argument("dir", nargs="?", default="",
                   help=f"cache folder (TRAINER.FEATURES.CACHE_DIR; default {default_cache_dir()})")
    p.add_argument("--verify", action="store_true", help="gc: also check every shard's checksum")
    args = p.parse_args(argv)
    root = osp.abspath(osp.expanduser(args.dir or default_cache_dir()))
    return info(root) if args.command == "info" else gc(root, verify=args.verify)


if __name__ == "__main__":
    sys.exit(main())
