"""The shared feature cache: reuse, verification on load, disk budget, atomic files, sweeps."""

from __future__ import annotations

import os

import torch

from fsclip.adapt.cache import FeatureCache, fingerprint_tensors, image_key
from fsclip.adapt.extract import ViewDataset, view_seed

SPACE = {"backbone": "b", "transform": "t", "views": 1}


def images(tmp_path, n=4):
    paths = []
    for i in range(n):
        p = tmp_path / "img" / f"{i}.png"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(bytes([i]) * (i + 1))
        paths.append(str(p))
    return paths


def fake_trunk(calls):
    """Features [n, 1, 2] derived from each file's size, recording which paths were computed."""

    def compute(paths):
        calls.append(list(paths))
        return torch.tensor([[[float(os.path.getsize(p)), 1.0]] for p in paths]).half()

    return compute


def test_only_missing_images_are_computed_and_order_is_kept(tmp_path):
    cache = FeatureCache(str(tmp_path / "c"), 2**30)
    paths = images(tmp_path)
    calls = []
    a = cache.get(SPACE, paths[:2], fake_trunk(calls))
    b = cache.get(SPACE, [paths[3], paths[1], paths[0]], fake_trunk(calls))
    assert calls == [paths[:2], [paths[3]]]
    assert a[:, 0, 0].tolist() == [1.0, 2.0] and b[:, 0, 0].tolist() == [4.0, 2.0, 1.0]
    assert b.dtype == torch.float16 and (cache.computed, cache.reused) == (3, 2)
    folder = cache.space_dir(SPACE)
    for shard in os.listdir(os.path.join(folder, "shards")):
        blob = torch.load(os.path.join(folder, "shards", shard), weights_only=True)
        assert set(blob) == {"keys", "features"}
    assert not [f for _, _, fs in os.walk(tmp_path / "c") for f in fs if f.startswith(".tmp")]


def test_other_space_or_changed_image_is_recomputed(tmp_path):
    cache = FeatureCache(str(tmp_path / "c"), 2**30)
    paths = images(tmp_path)
    calls = []
    cache.get(SPACE, paths, fake_trunk(calls))
    cache.get({**SPACE, "views": 2}, paths[:1], fake_trunk(calls))
    with open(paths[2], "ab") as f:
        f.write(b"more bytes")  # a replaced image file
    got = cache.get(SPACE, paths, fake_trunk(calls))
    assert calls[1:] == [paths[:1], [paths[2]]]
    assert got[2, 0, 0].item() == os.path.getsize(paths[2])


def test_corrupt_shards_and_index_are_recomputed(tmp_path, capsys):
    cache = FeatureCache(str(tmp_path / "c"), 2**30)
    paths = images(tmp_path)
    calls = []
    cache.get(SPACE, paths, fake_trunk(calls))
    folder = cache.space_dir(SPACE)
    shard = os.path.join(folder, "shards", os.listdir(os.path.join(folder, "shards"))[0])
    with open(shard, "wb") as f:
        f.write(b"garbage")
    got = cache.get(SPACE, paths, fake_trunk(calls))
    assert len(calls) == 2 and got[:, 0, 0].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert "unreadable" in capsys.readouterr().out
    with open(os.path.join(folder, "index.json"), "w") as f:
        f.write("{not json")
    cache.get(SPACE, paths, fake_trunk(calls))
    assert len(calls) == 3 and "index" in capsys.readouterr().out


def test_budget_exceeded_computes_without_writing(tmp_path, capsys):
    cache = FeatureCache(str(tmp_path / "c"), max_bytes=10)  # 4 images x 4 bytes do not fit
    paths = images(tmp_path)
    calls = []
    cache.get(SPACE, paths, fake_trunk(calls))
    assert "computing them for this run only" in capsys.readouterr().out
    cache.get(SPACE, paths, fake_trunk(calls))
    assert len(calls) == 2
    assert not os.path.exists(os.path.join(cache.space_dir(SPACE), "index.json"))


def test_disabled_cache_never_writes(tmp_path):
    cache = FeatureCache("", 2**30)
    paths = images(tmp_path)
    calls = []
    cache.get(SPACE, paths, fake_trunk(calls))
    cache.get(SPACE, paths, fake_trunk(calls))
    assert len(calls) == 2 and os.listdir(tmp_path) == ["img"]


CONCURRENT = """
import sys, torch
from fsclip.adapt.cache import FeatureCache
root, paths = sys.argv[1], sys.argv[2:]
cache = FeatureCache(root, 2**30, verbose=False)
cache.get({"space": 1}, paths, lambda ps: torch.ones(len(ps), 1, 3))
"""


def test_concurrent_writers_keep_a_complete_index(tmp_path):
    import subprocess
    import sys

    paths = images(tmp_path, 8)
    root = str(tmp_path / "c")
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT, root, *paths[i::2]]) for i in range(2)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    cache = FeatureCache(root, 2**30)
    calls = []
    cache.get({"space": 1}, paths, lambda ps: calls.append(ps) or torch.zeros(len(ps), 1, 3))
    assert calls == [] and cache.reused == 8


def test_fingerprints_change_with_content(tmp_path):
    a = {"w": torch.ones(2, 2), "n": torch.tensor(3)}
    b = {"w": torch.ones(2, 2), "n": torch.tensor(4)}
    assert fingerprint_tensors(a) != fingerprint_tensors(b)
    assert fingerprint_tensors(a) == fingerprint_tensors({k: v.clone() for k, v in a.items()})
    p = tmp_path / "x.png"
    p.write_bytes(b"1")
    before = image_key(str(p))
    p.write_bytes(b"22")
    assert image_key(str(p)) != before


def test_views_are_deterministic_and_distinct(toy_root):
    from torchvision import transforms as T

    import glob
    paths = sorted(glob.glob(os.path.join(toy_root, "toy", "images", "*", "*.png")))[:2]
    tfm = T.Compose([T.RandomResizedCrop(8, scale=(0.2, 1.0)), T.ToTensor()])
    ds = ViewDataset(paths, tfm, views=3, seed=0)
    x1, x2 = ds[0], ViewDataset(paths, tfm, views=3, seed=0)[0]
    assert x1.shape == (3, 3, 8, 8) and torch.equal(x1, x2)
    assert view_seed(paths[0], 0, 0) != view_seed(paths[0], 1, 0) != view_seed(paths[0], 0, 1)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    ds[1]
    assert torch.equal(state, torch.get_rng_state()), "views must not disturb the global RNG"


def test_sweep_encodes_each_image_once(toy_root, tmp_path, monkeypatch):
    """Shots x seeds with one cache: every image (train views, val, test) goes through the trunk
    once over the whole sweep."""
    import fsclip.adapt.trainer as base
    from fsclip.backend import build_trainer
    from fsclip.clip.tiny import build_tiny_clip, save_tiny_clip
    from test_safe_tip import make_cfg

    weights = save_tiny_clip(build_tiny_clip("RN", image_resolution=64), str(tmp_path / "tiny.pt"))
    extracted = []
    real = base.extract_views

    def counting(trunk, impaths, *args, **kwargs):
        extracted.append((kwargs.get("desc", ""), len(impaths)))
        return real(trunk, impaths, *args, **kwargs)

    monkeypatch.setattr(base, "extract_views", counting)
    n_test = None
    picked = set()
    for shots in (1, 2):
        for seed in (1, 2):
            cfg = make_cfg(toy_root, tmp_path, weights, "TipAdapter", **{
                "DATASET.NUM_SHOTS": shots, "SEED": seed, "OUTPUT_DIR": str(tmp_path / f"o{shots}{seed}")})
            trainer = build_trainer(cfg)
            trainer.train()
            n_test = len(trainer.dm.dataset.test)
            picked |= {d.impath for d in trainer.dm.dataset.train_x}
    test_runs = [n for desc, n in extracted if desc.startswith("G(x) on test")]
    assert test_runs == [n_test]
    train_images = sum(n for desc, n in extracted if desc.startswith("G(x) on train"))
    assert train_images == len(picked)  # each picked training image once over the sweep
    assert len(picked) < sum(shots * 3 for shots in (1, 2)) * 2  # runs shared images


# ----------------------------------------------------------------------------- integrity

def wide_trunk(calls):
    """Features [n, 1, 64] (large enough that a shard is mostly tensor bytes)."""

    def compute(paths):
        calls.append(list(paths))
        return torch.stack([torch.full((1, 64), float(os.path.getsize(p))) for p in paths]).half()

    return compute


def shard_files(folder):
    d = os.path.join(folder, "shards")
    return sorted(os.path.join(d, f) for f in os.listdir(d) if not f.startswith("."))


def flip_tensor_bytes(path):
    """Overwrite two bytes in the middle of the shard's tensor storage with an fp16 NaN: the file
    stays a valid zip and torch.load reads it, so only the checksum can tell."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = (int.from_bytes(f.read(2), "little") for _ in range(2))
        f.seek(info.header_offset + 30 + name_len + extra_len + info.file_size // 2 // 2 * 2)
        f.write(b"\xff\x7f")


def test_flipped_bytes_are_detected_recomputed_and_the_shard_replaced(tmp_path, capsys):
    import json

    root = str(tmp_path / "c")
    paths = images(tmp_path)
    calls = []
    clean = FeatureCache(root, 2**30).get(SPACE, paths, wide_trunk(calls))
    folder = FeatureCache(root, 2**30).space_dir(SPACE)
    (shard,) = shard_files(folder)
    flip_tensor_bytes(shard)
    silently = torch.load(shard, weights_only=True)["features"]  # what an unverified load gets
    assert torch.isnan(silently).any() and not torch.isnan(clean).any()
    capsys.readouterr()
    cache = FeatureCache(root, 2**30)
    again = cache.get(SPACE, paths, wide_trunk(calls))
    out = capsys.readouterr().out
    assert torch.equal(again, clean) and calls[-1] == paths
    assert (cache.corrupt, cache.computed, cache.reused) == (1, 4, 0)
    assert f"Feature cache shard {shard} fails its checksum" in out
    (new_shard,) = shard_files(folder)
    assert new_shard != shard and not os.path.exists(shard)  # replaced, not kept as an orphan
    with open(os.path.join(folder, "index.json")) as f:
        index = json.load(f)
    assert set(index["shards"]) == {os.path.basename(new_shard)}
    # the next run reads the new shard, verified, without computing
    third = FeatureCache(root, 2**30)
    assert torch.equal(third.get(SPACE, paths, wide_trunk(calls)), clean) and third.reused == 4
    assert third.computed == third.corrupt == 0


def test_index_rewrite_removes_orphans_but_not_a_writer_in_progress(tmp_path):
    import shutil
    import time

    root = str(tmp_path / "c")
    paths = images(tmp_path, 6)
    cache = FeatureCache(root, 2**30, verbose=False)
    cache.get(SPACE, paths[:2], wide_trunk([]))
    folder = cache.space_dir(SPACE)
    (shard,) = shard_files(folder)
    orphan = os.path.join(folder, "shards", "0123orphan.pt")  # e.g. left by a recompute
    shutil.copy(shard, orphan)
    stale, fresh = (os.path.join(folder, "shards", f".tmp-{n}.pt") for n in ("dead", "writing"))
    for p in (stale, fresh):
        with open(p, "wb") as f:
            f.write(b"partial")
    os.utime(stale, (time.time() - 2 * 3600,) * 2)  # a writer that died two hours ago
    cache.get(SPACE, paths[2:4], wide_trunk([]))  # stores a shard: the index is rewritten
    left = set(os.listdir(os.path.join(folder, "shards")))
    assert os.path.basename(shard) in left and os.path.basename(fresh) in left
    assert os.path.basename(orphan) not in left and os.path.basename(stale) not in left
    assert len([n for n in left if not n.startswith(".")]) == 2


def test_gc_and_info_command(tmp_path):
    import json
    import subprocess
    import sys

    root = str(tmp_path / "c")
    paths = images(tmp_path, 6)
    cache = FeatureCache(root, 2**30, verbose=False)
    other = {**SPACE, "views": 3}
    cache.get(SPACE, paths[:3], wide_trunk([]))
    cache.get(SPACE, paths[3:], wide_trunk([]))
    cache.get(other, paths, wide_trunk([]))
    folder, folder2 = cache.space_dir(SPACE), cache.space_dir(other)
    with open(os.path.join(folder, "index.json")) as f:
        entries = json.load(f)["entries"]
    first, second = (os.path.join(folder, "shards", entries[image_key(p)][0]) for p in (paths[0], paths[3]))
    kept = open(first, "rb").read()
    with open(os.path.join(folder, "shards", "feedorphan.pt"), "wb") as f:
        f.write(b"x" * 5000)
    os.remove(second)  # an entry whose shard is gone
    (shard2,) = shard_files(folder2)
    flip_tensor_bytes(shard2)
    old = os.path.join(root, FeatureCache.space_id(SPACE, fmt=2))  # written by an older version
    os.makedirs(os.path.join(old, "shards"))
    with open(os.path.join(old, "space.json"), "w") as f:
        json.dump(SPACE, f)
    with open(os.path.join(old, "shards", "a.pt"), "wb") as f:
        f.write(b"y" * 3000)

    def cli(*args):
        res = subprocess.run([sys.executable, "-m", "fsclip.adapt.cache", *args], capture_output=True,
                             text=True, timeout=120)
        assert res.returncode == 0 and not res.stderr, res.stdout + res.stderr
        return res.stdout

    out = cli("info", root)
    assert "3 space(s)" in out and "Total:" in out
    line = next(l for l in out.splitlines() if os.path.basename(folder) in l)
    assert "6 images in 2 shards, 1 orphan shards" in line and "current format" in line
    assert "format 2, unused by this version" in out and "KiB" in line
    out = cli("gc", root)
    assert f"Removed {os.path.join(folder, 'shards', 'feedorphan.pt')}" in out
    assert "Dropped the entries of 1 missing shard(s)" in out and f"Removing {old}" in out
    assert not os.path.exists(old) and os.path.exists(shard2)  # gc reads no shard without --verify
    out = cli("gc", root, "--verify")
    assert f"Removing {shard2}: it fails its checksum" in out and not os.path.exists(shard2)
    assert shard_files(folder) == [first] and open(first, "rb").read() == kept
    out = cli("info", root)
    assert "3 images in 1 shards, 0 orphan shards" in out and "0 images in 0 shards" in out
    calls = []
    FeatureCache(root, 2**30, verbose=False).get(SPACE, paths, wide_trunk(calls))
    assert calls == [paths[3:]]  # only the images of the lost shard are computed again


LOCKED = """
import os, sys, time, torch
from fsclip.adapt.cache import FeatureCache
root, inside, wait_for, ready, paths = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
cache = FeatureCache(root, 2**30)

def compute(ps):
    open(inside, "w").close()  # extracting now
    if wait_for != "-":  # hold the extraction until the other process is about to ask
        while not os.path.exists(wait_for):
            time.sleep(0.05)
        time.sleep(2)
    return torch.stack([torch.full((1, 4), float(os.path.getsize(p))) for p in ps])

if ready != "-":
    open(ready, "w").close()
feats = cache.get({"space": 1}, paths, compute)
assert feats[:, 0, 0].tolist() == [float(os.path.getsize(p)) for p in paths]
print("COUNTERS", cache.computed, cache.reused)
"""


def test_extraction_lock_two_processes_extract_each_image_once(tmp_path):
    """A run that finds another extracting in the same space waits, then reuses what it stored:
    the first process holds its extraction open until the second is about to ask for 6 images,
    4 of which the first is computing."""
    import subprocess
    import sys
    import time

    paths = images(tmp_path, 8)
    root = str(tmp_path / "c")
    inside1, inside2, ready2 = (str(tmp_path / n) for n in ("inside1", "inside2", "ready2"))
    first = subprocess.Popen([sys.executable, "-c", LOCKED, root, inside1, ready2, "-", *paths[:6]],
                             stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not os.path.exists(inside1) and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert os.path.exists(inside1), "the first process never started extracting"
    second = subprocess.Popen([sys.executable, "-c", LOCKED, root, inside2, "-", ready2, *paths[2:]],
                              stdout=subprocess.PIPE, text=True)
    out1, _ = first.communicate(timeout=180)
    out2, _ = second.communicate(timeout=180)
    assert first.returncode == second.returncode == 0, out1 + out2
    counters = [tuple(int(x) for x in o.split("COUNTERS")[1].split()) for o in (out1, out2)]
    assert counters == [(6, 0), (2, 4)]  # 8 distinct images, each through the trunk once
    assert "another run is computing features" in out2  # it did wait for the first


def test_a_run_on_a_corrupted_cache_recomputes_and_matches_a_clean_run(toy_root, tmp_path, capsys):
    """Flip bytes inside every stored shard (train views, val, test): the next TipAdapter run
    detects each one, recomputes those features and reports the clean run's accuracy."""
    import re

    from fsclip.backend import build_trainer
    from fsclip.clip.tiny import build_tiny_clip, save_tiny_clip
    from test_safe_tip import make_cfg

    weights = save_tiny_clip(build_tiny_clip("RN", image_resolution=64), str(tmp_path / "tiny.pt"))

    def run(out):
        trainer = build_trainer(make_cfg(toy_root, tmp_path, weights, "TipAdapter", OUTPUT_DIR=str(tmp_path / out)))
        trainer.train()
        out = capsys.readouterr().out
        trainer.printed = out
        return trainer, float(re.findall(r"^\* accuracy: ([\d.]+)%$", out, re.M)[-1])

    clean, acc_clean = run("clean")
    assert clean.cache.computed > 0 and clean.cache.corrupt == 0
    shards = [p for d in os.listdir(clean.cache.root) for p in shard_files(os.path.join(clean.cache.root, d))]
    assert len(shards) == 3  # train views, val, test
    for shard in shards:
        flip_tensor_bytes(shard)
    rerun, acc_rerun = run("rerun")
    assert rerun.cache.corrupt == 3 and rerun.cache.reused == 0
    assert rerun.printed.count("fails its checksum") == 3
    assert rerun.cache.computed == clean.cache.computed
    assert acc_rerun == acc_clean
    again, acc_again = run("again")  # the replaced shards serve the next run
    assert again.cache.computed == 0 and again.cache.corrupt == 0 and acc_again == acc_clean
