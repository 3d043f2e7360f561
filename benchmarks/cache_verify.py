"""Benchmark: what the feature cache's integrity check costs per GB.

Two measurements, side by side in one process:

* hash speed: the standard library's candidate checksums (zlib's CRC-32, which the cache uses,
  and hashlib's sha1 / sha256 / blake2b) over the same in-memory buffer;
* reading a cache space: ``FeatureCache.get`` of every image of a space holding ``--mb`` MiB of
  fp16 features (RN50-size maps, 2048 x 7 x 7, in shards of ``--shard-mb``), by a fresh cache
  object (each shard's CRC-32 checked, as in every new run) and by one whose shards count as
  already verified (the cost of reading alone). The files are in the page cache for both (the
  space is read once before timing), so the difference is the hashing, not the disk.

Usage: python benchmarks/cache_verify.py [--mb 1024] [--shard-mb 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import os.path as osp
import sys
import tempfile
import time
import zlib

import torch

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO)

from fsclip.adapt.cache import FeatureCache  # noqa: E402

MAP = (1, 2048, 7, 7)  # one view of an RN50 pre-pool map, fp16: 196 KiB


def hash_speeds(mb: int, repeats: int) -> None:
    data = os.urandom(mb << 20)
    view = memoryview(data)
    chunk = 8 << 20

    def crc32() -> None:
        c = 0
        for i in range(0, len(view), chunk):
            c = zlib.crc32(view[i:i + chunk], c)

    def hashlib_fn(name: str):
        def run() -> None:
            h = hashlib.new(name)
            for i in range(0, len(view), chunk):
                h.update(view[i:i + chunk])
        return run

    print(f"Hash speed over {mb} MiB in memory (best of {repeats}):")
    for name, fn in [("crc32 (zlib, used)", crc32)] + [(n, hashlib_fn(n)) for n in ("sha1", "sha256", "blake2b")]:
        best = min(_timed(fn) for _ in range(repeats))
        print(f"  {name:20s} {mb / 1024 / best:6.2f} GiB/s   {best / (mb / 1024):6.2f} s per GiB")


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def cache_read(mb: int, shard_mb: int, repeats: int) -> None:
    per_image = torch.Size(MAP).numel() * 2
    n_images = max(1, (mb << 20) // per_image)
    per_shard = max(1, (shard_mb << 20) // per_image)
    space = {"benchmark": "cache_verify", "shape": MAP}
    with tempfile.TemporaryDirectory() as work:
        paths = []
        for i in range(n_images):
            p = osp.join(work, "img", f"{i}.jpg")
            os.makedirs(osp.dirname(p), exist_ok=True)
            with open(p, "wb") as f:
                f.write(i.to_bytes(4, "little"))
            paths.append(p)
        root = osp.join(work, "cache")
        writer = FeatureCache(root, 2**40, verbose=False)
        g = torch.Generator().manual_seed(0)
        for start in range(0, n_images, per_shard):
            batch = paths[start:start + per_shard]
            writer.get(space, batch, lambda ps: torch.randn(len(ps), *MAP, generator=g).half())
        total = sum(os.path.getsize(osp.join(dp, f)) for dp, _, fs in os.walk(root) for f in fs)
        gib = total / 2**30
        never = lambda ps: (_ for _ in ()).throw(AssertionError("nothing should be computed"))  # noqa: E731
        FeatureCache(root, 2**40, verbose=False).get(space, paths, never)  # warm the page cache
        fresh, trusted = [], []
        for _ in range(repeats):
            fresh.append(_timed(lambda: FeatureCache(root, 2**40, verbose=False).get(space, paths, never)))
            warm = FeatureCache(root, 2**40, verbose=False)
            warm._verified = dict(writer._verified)  # shards count as checked by this process
            trusted.append(_timed(lambda: warm.get(space, paths, never)))
        f, t = min(fresh), min(trusted)
        print(f"Reading a space of {n_images} RN50 maps ({gib:.2f} GiB in {len(writer._verified)} shards), "
              f"page cache warm, best of {repeats}:")
        print(f"  with CRC-32 check    {f:6.2f} s   ({f / gib:.2f} s per GiB)")
        print(f"  without (trusted)    {t:6.2f} s   ({t / gib:.2f} s per GiB)")
        print(f"  verification adds    {f - t:6.2f} s   ({(f - t) / gib:.2f} s per GiB, x{f / t:.2f} the read)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mb", type=int, default=1024, help="size of the cache space (MiB)")
    p.add_argument("--shard-mb", type=int, default=256, help="size of each shard (MiB)")
    p.add_argument("--hash-mb", type=int, default=256, help="buffer hashed in memory (MiB)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    hash_speeds(args.hash_mb, args.repeats)
    cache_read(args.mb, args.shard_mb, args.repeats)


if __name__ == "__main__":
    main()
