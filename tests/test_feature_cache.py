"""The shared feature cache: reuse, verification on load, disk budget, atomic files, sweeps."""

from __future__ import annotations

import os

import pytest
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
