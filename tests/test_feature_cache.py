"""The shared feature cache: reuse, verification on load, disk budget, atomic files, sweeps."""

from __future__ import annotations

import os

import pytest
import torch

from fsclip.adapt.cache import FeatureCache, fingerprint_images, fingerprint_tensors
from fsclip.adapt.extract import ViewDataset, view_seed

META = {"backbone": "b", "split": "test", "count": 3, "views": 1}


def counter(value):
    calls = []

    def compute():
        calls.append(1)
        return value.clone()

    return compute, calls


def test_hit_after_miss_and_stored_weights_only(tmp_path):
    cache = FeatureCache(str(tmp_path), 2**30)
    feats = torch.randn(3, 1, 4, 2, 2).half()
    compute, calls = counter(feats)
    a = cache.get(META, compute, feats.numel() * 2)
    b = cache.get(META, compute, feats.numel() * 2)
    assert len(calls) == 1 and torch.equal(a, b) and b.dtype == torch.float16
    path = cache.path(META)
    blob = torch.load(path, weights_only=True)
    assert blob["meta"]["split"] == "test"
    assert not [f for _, _, fs in os.walk(tmp_path) for f in fs if f.startswith(".tmp")]


def test_different_meta_is_a_different_entry(tmp_path):
    cache = FeatureCache(str(tmp_path), 2**30)
    compute, calls = counter(torch.zeros(3, 1, 2))
    cache.get(META, compute)
    cache.get({**META, "views": 2}, compute)
    assert len(calls) == 2


def test_corrupt_or_mismatched_entries_are_recomputed(tmp_path, capsys):
    cache = FeatureCache(str(tmp_path), 2**30)
    feats = torch.ones(3, 1, 2)
    compute, calls = counter(feats)
    cache.get(META, compute)
    path = cache.path(META)
    with open(path, "wb") as f:
        f.write(b"garbage")
    assert torch.equal(cache.get(META, compute), feats) and len(calls) == 2
    assert "unreadable" in capsys.readouterr().out
    torch.save({"meta": {"other": 1}, "features": torch.zeros(3, 1, 2)}, path)
    assert torch.equal(cache.get(META, compute), feats) and len(calls) == 3
    assert "does not match" in capsys.readouterr().out


def test_budget_exceeded_computes_without_writing(tmp_path, capsys):
    cache = FeatureCache(str(tmp_path), max_bytes=1000)
    compute, calls = counter(torch.zeros(3, 1, 2))
    cache.get(META, compute, nbytes_estimate=5000)
    assert not os.path.exists(cache.path(META))
    assert "computing them for this run only" in capsys.readouterr().out
    cache.get(META, compute, nbytes_estimate=5000)
    assert len(calls) == 2


def test_disabled_cache_never_writes(tmp_path):
    cache = FeatureCache("", 2**30)
    compute, calls = counter(torch.zeros(3, 1, 2))
    cache.get(META, compute)
    cache.get(META, compute)
    assert len(calls) == 2 and not os.listdir(tmp_path)


def test_fingerprints_change_with_content(tmp_path):
    a = {"w": torch.ones(2, 2), "n": torch.tensor(3)}
    b = {"w": torch.ones(2, 2), "n": torch.tensor(4)}
    assert fingerprint_tensors(a) != fingerprint_tensors(b)
    assert fingerprint_tensors(a) == fingerprint_tensors({k: v.clone() for k, v in a.items()})
    p = tmp_path / "x.png"
    p.write_bytes(b"1")
    before = fingerprint_images([str(p)])
    p.write_bytes(b"22")
    assert fingerprint_images([str(p)]) != before


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


def test_sweep_encodes_each_test_image_once(toy_root, tmp_path, monkeypatch):
    """Shots x seeds with one cache: the test split goes through the trunk one time."""
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
    for shots in (1, 2):
        for seed in (1, 2):
            cfg = make_cfg(toy_root, tmp_path, weights, "TipAdapter", **{
                "DATASET.NUM_SHOTS": shots, "SEED": seed, "OUTPUT_DIR": str(tmp_path / f"o{shots}{seed}")})
            trainer = build_trainer(cfg)
            trainer.train()
            n_test = len(trainer.dm.dataset.test)
    test_runs = [n for desc, n in extracted if desc.startswith("G(x) on test")]
    assert test_runs == [n_test]
