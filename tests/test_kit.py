"""The offline kit: synthetic benchmark (determinism, layout, registry) and micro-CLIPs
(loading, size, zero-shot band, learning signal, pretraining command)."""

from __future__ import annotations

import json
import os
import os.path as osp

import pytest
import torch

from fsclip.clip.compat import import_clip
from fsclip.kit import synth
from fsclip.kit.clipfns import weights_path

MODELS = ("MicroRN", "MicroViT")
MAX_BYTES = 10 * 1000 * 1000


def _cfg(root: str, name: str, shots: int = -1, seed: int = 1, subsample: str = "all"):
    import fsclip.datasets  # noqa: F401  (registers the datasets)
    from fsclip.backend import get_cfg_default

    cfg = get_cfg_default()
    cfg.DATASET.ROOT = root
    cfg.DATASET.NAME = name
    cfg.DATASET.NUM_SHOTS = shots
    cfg.DATASET.SUBSAMPLE_CLASSES = subsample
    cfg.SEED = seed
    return cfg


def _build(cfg):
    from fsclip.backend import DATASET_REGISTRY

    return DATASET_REGISTRY.get(cfg.DATASET.NAME)(cfg)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """The benchmark, generated once per session through the registered datasets."""
    path = str(tmp_path_factory.mktemp("synth_root"))
    for name in synth.DATASETS:
        _build(_cfg(path, name))
    return path


@pytest.fixture(scope="module")
def models():
    from fsclip.kit.clipfns import load_micro_clip

    return {name: load_micro_clip(name) for name in MODELS}


@pytest.fixture(scope="module")
def results(root, models):
    from fsclip.kit.evaluate import evaluate

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread is fastest on a shared 2-core machine
    out = {}
    images: dict = {}  # decoded once, shared by both models
    for mname, model in models.items():
        cache: dict = {}
        for dname in synth.DATASETS:
            out[mname, dname] = evaluate(model, root, dname, shots=4, seeds=(1, 2, 3),
                                         cache=cache, images=images, zs_init_probe=False)
    torch.set_num_threads(threads)
    return out


# ------------------------------------------------------------------ generation


def test_generation_is_byte_identical_for_a_seed_and_differs_across_seeds(root, tmp_path):
    name = "SynthShapesSketch"
    first = synth.tree_digest(osp.join(root, synth.DATASETS[name].dataset_dir))
    assert len(first) == 300 + 2  # images + split file + marker
    # an interrupted generation (folder without marker) is replaced by a complete one
    other = str(tmp_path / "again")
    partial = osp.join(other, synth.DATASETS[name].dataset_dir)
    os.makedirs(osp.join(partial, "images"))
    with open(osp.join(partial, "images", "junk.png"), "wb") as f:
        f.write(b"not a png")
    synth.ensure_dataset(other, name, synth.DEFAULT_SEED, verbose=False)
    second = synth.tree_digest(partial)
    assert first == second
    spec = synth.DATASETS[name]
    for label in range(3):
        a = synth.png_bytes(synth.render_item(spec, "test", label, 0, synth.DEFAULT_SEED))
        b = synth.png_bytes(synth.render_item(spec, "test", label, 0, synth.DEFAULT_SEED + 1))
        path = osp.join(partial, "images", synth.folder_name(spec.classes[label]), "test_0000.png")
        with open(path, "rb") as f:
            assert f.read() == a
        assert a != b


def test_layout_and_split_files_match_the_real_benchmarks(root):
    for name, spec in synth.DATASETS.items():
        folder = osp.join(root, spec.dataset_dir)
        with open(osp.join(folder, f"split_zhou_{name}.json"), encoding="utf-8") as f:
            split = json.load(f)
        assert set(split) == {"train", "val", "test"}
        classnames = list(spec.classes)
        for part, rows in split.items():
            assert len(rows) == spec.counts[part] * len(classnames)
            for rel, label, classname in rows:
                assert isinstance(rel, str) and isinstance(label, int) and isinstance(classname, str)
                assert classnames[label] == classname
                assert rel.startswith(classname.replace(" ", "_") + "/") and rel.endswith(".png")
                assert osp.isfile(osp.join(folder, "images", rel))
        assert sorted(os.listdir(osp.join(folder, "images"))) == sorted(
            c.replace(" ", "_") for c in classnames)
    assert len(synth.DATASETS["SynthShapes"].classes) == 10
    assert len(synth.DATASETS["SynthTextures"].classes) == 20


def test_registered_datasets_build_from_a_cfg_like_real_benchmarks(root):
    ds = _build(_cfg(root, "SynthShapes", shots=4, seed=1))
    assert ds.num_classes == 10 and len(ds.train_x) == 40 and len(ds.val) == 40
    assert len(ds.test) == 300
    assert ds.classnames[0] == "red circle"
    assert osp.isfile(osp.join(root, "synth_shapes", "split_fewshot", "shot_4-seed_1.json"))
    again = _build(_cfg(root, "SynthShapes", shots=4, seed=1))
    assert [d.impath for d in again.train_x] == [d.impath for d in ds.train_x]
    other = _build(_cfg(root, "SynthShapes", shots=4, seed=2))
    assert [d.impath for d in other.train_x] != [d.impath for d in ds.train_x]

    tex = _build(_cfg(root, "SynthTextures", shots=16, seed=1, subsample="base"))
    assert tex.num_classes == 10 and len(tex.train_x) == 160 and len(tex.val) == 40
    assert all(isinstance(t, str) and "{}" in t for t in [tex.template] + list(tex.templates))

    sketch = _build(_cfg(root, "SynthShapesSketch", shots=4))
    assert sketch.classnames == ds.classnames and len(sketch.test) == 300

    from fsclip.templates import get_templates

    assert get_templates("SynthTextures", "single") == [synth.TEMPLATE]
    assert get_templates("SynthShapes", "ensemble") == list(synth.TEMPLATES)


# ------------------------------------------------------------------ micro-CLIPs


@pytest.mark.parametrize("name", MODELS)
def test_micro_clip_loads_via_build_model_and_is_small(name):
    clip = import_clip()
    path = weights_path(name)
    assert os.path.getsize(path) <= MAX_BYTES
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = clip.model.build_model(state).float().eval()
    assert model.visual.input_resolution == synth.CANVAS
    if name == "MicroRN":
        assert isinstance(model.visual, clip.model.ModifiedResNet)
        grid = model.visual.attnpool.positional_embedding.shape[0] - 1
        assert grid >= 16  # at least a 4x4 map before attention pooling
    else:
        assert isinstance(model.visual, clip.model.VisionTransformer)
    x = torch.zeros(1, 3, synth.CANVAS, synth.CANVAS)
    with torch.no_grad():
        assert model.encode_image(x).shape[-1] == model.encode_text(clip.tokenize(["a red circle."])).shape[-1]


@pytest.mark.parametrize("mname", MODELS)
@pytest.mark.parametrize("dname", sorted(synth.DATASETS))
def test_zero_shot_accuracy_is_in_the_band(results, mname, dname):
    r = results[mname, dname]
    assert 2 * r["chance"] <= r["zeroshot"] <= 80.0, r


@pytest.mark.parametrize("mname", MODELS)
@pytest.mark.parametrize("dname", ["SynthShapes", "SynthTextures"])
def test_four_shot_linear_probe_beats_zero_shot(results, mname, dname):
    r = results[mname, dname]
    assert r["probe_4shot"] > r["zeroshot"], r


@pytest.mark.parametrize("arch", ["RN", "ViT"])
def test_pretraining_command_runs_and_output_loads(arch, tmp_path, capsys):
    from fsclip.kit import pretrain

    out = str(tmp_path / f"{arch}.pt")
    losses = pretrain.main(["--arch", arch, "--seed", "0", "--out", out, "--steps", "8",
                            "--pool", "16", "--batch-size", "16", "--warmup", "1",
                            "--lowres", "0.5"])
    assert sum(losses[-2:]) < sum(losses[:2])
    clip = import_clip()
    model = clip.model.build_model(torch.load(out, map_location="cpu", weights_only=True))
    ref = clip.model.build_model(torch.load(weights_path(f"Micro{arch}"), map_location="cpu",
                                            weights_only=True))
    assert {k: v.shape for k, v in model.state_dict().items()} == \
        {k: v.shape for k, v in ref.state_dict().items()}


def test_concurrent_generation_leaves_one_complete_copy(tmp_path, monkeypatch):
    import dataclasses
    import threading

    tiny = dataclasses.replace(synth.DATASETS["SynthShapesSketch"], name="TinySketch",
                               dataset_dir="tiny_sketch", counts={"train": 1, "val": 0, "test": 2})
    monkeypatch.setitem(synth.DATASETS, "TinySketch", tiny)
    root = str(tmp_path)
    errors = []

    def run():
        try:
            synth.ensure_dataset(root, "TinySketch", verbose=False)
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert synth.is_complete(root, "TinySketch")
    assert sorted(os.listdir(root)) == ["tiny_sketch"]  # no temporary folders left behind
    digest = synth.tree_digest(osp.join(root, "tiny_sketch"))
    assert len(digest) == 10 * 3 + 2


def test_parallel_rendering_works_from_a_script_without_a_main_guard(tmp_path):
    """Worker processes must not re-run the calling script (spawn would, and crash)."""
    import subprocess
    import sys

    script = tmp_path / "user_script.py"
    script.write_text(
        "from fsclip.kit import synth\n"
        "print('RUN')\n"  # printed once per execution of this script
        "out = synth.run_jobs(synth.folder_name, ['red circle'] * 200)\n"
        "print(len(out), out[0])\n", encoding="utf-8")
    env = dict(os.environ, FSCLIP_SYNTH_WORKERS="2")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["RUN", "200", "red_circle"]
