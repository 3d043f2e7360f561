"""``fsclip-explain attention`` and ``gradcam`` end to end on the kit (short DPT, VT-CLIP and
Tip-Adapter runs on SynthShapes) and their bad-input errors. Issue #23."""

from __future__ import annotations

import json
import os.path as osp

import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from fsclip.cli import main as train_main
from fsclip.explain.cli import main
from test_explain_cli import refused


@pytest.fixture(scope="module")
def runs(tmp_path_factory, kit_root, kit_cache):
    """Short 1-shot runs on SynthShapes: VPT_CLIP_CAVPT (MicroViT), VTCLIP with two decoder
    blocks (MicroRN) and TipAdapter (MicroRN, a method without attention maps)."""
    base = tmp_path_factory.mktemp("explain_maps")
    budgets = {"VPT_CLIP_CAVPT": ("micro_vit", ["OPTIM.MAX_EPOCH", "1", "TRAINER.DPT.CAVPT.TOPK", "3"]),
               "VTCLIP": ("micro_rn", ["OPTIM.MAX_EPOCH", "1", "TRAINER.VTCLIP.LAYERS", "2", "TRAINER.VTCLIP.HEADS", "4"]),
               "TipAdapter": ("micro_rn", ["TRAINER.TIP.SEARCH_STEP", "[4, 4]"])}
    out = {}
    for trainer, (cfg, opts) in budgets.items():
        out[trainer] = str(base / trainer)
        argv = ["--root", kit_root, "--trainer", trainer, "--seed", "1", "--output-dir", out[trainer],
                "--dataset-config-file", osp.join(REPO, "configs/datasets/synth_shapes.yaml"),
                "--config-file", osp.join(REPO, f"configs/trainers/{trainer}/{cfg}.yaml"),
                "DATASET.NUM_SHOTS", "1", "USE_CUDA", "False", "TRAINER.FEATURES.CACHE_DIR", kit_cache,
                "TRAINER.FEATURES.TRAIN_VIEWS", "1", "TEST.NO_TEST", "True", *opts]
        assert train_main(argv) == 0
    return out


def test_attention_end_to_end(runs, kit_root, tmp_path):
    out = tmp_path / "attention"
    assert main(["attention", "--root", kit_root, "--out", str(out), "--run", runs["VPT_CLIP_CAVPT"],
                 "--run", runs["VTCLIP"], "--zero-shot", "--num", "2", "--heads", "2"]) == 0
    summary = json.loads((out / "attention.json").read_text())
    assert list(summary["models"]) == ["CLIP", "VPT_CLIP_CAVPT", "VTCLIP"]
    assert set(summary["models"]["VTCLIP"]["maps"]) == {"layer1_pred", "layer1_true", "layer2_pred", "layer2_true"}
    assert set(summary["models"]["VPT_CLIP_CAVPT"]["maps"]) == {"cls", "cavpt"}
    with np.load(out / "attention.npz") as z:
        assert z["CLIP/cls"].shape == (2, 2, 8, 8)  # MicroViT: 2 heads, 8 x 8 patches
        assert z["VPT_CLIP_CAVPT/cavpt"].shape == (2, 3, 8, 8) and z["VPT_CLIP_CAVPT/cavpt/classes"].shape == (2, 3)
        assert z["VTCLIP/layer2_true"].shape == (2, 4, 4, 4)  # 4 heads over MicroRN's 4 x 4 map
        for key in ("CLIP/cls", "VPT_CLIP_CAVPT/cls", "VPT_CLIP_CAVPT/cavpt", "VTCLIP/layer1_pred"):
            np.testing.assert_allclose(z[key].sum(axis=(-2, -1)) + z[f"{key}/rest"], 1.0, atol=1e-5)
        assert not np.allclose(z["CLIP/cls"], z["VPT_CLIP_CAVPT/cls"], atol=1e-4)  # the prompts move the attention
    figures = summary["figures"]
    assert figures[0] == "attention.png" and "attention_VPT_CLIP_CAVPT_cavpt.png" in figures
    assert "attention_VTCLIP_layer2_true.png" in figures
    for name in figures:
        assert Image.open(out / name).size[0] > 300
    # 1 + CLIP + VPT cls + 4 VT-CLIP maps columns in the main panel
    assert Image.open(out / "attention.png").size[0] > Image.open(out / "attention_CLIP_cls.png").size[0]


def test_gradcam_end_to_end_and_deterministic(runs, kit_root, tmp_path):
    argv = ["gradcam", "--root", kit_root, "--run", runs["VTCLIP"], "--zero-shot", "--num", "2", "--samples", "2"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    assert main([*argv[:-2], "--out", str(tmp_path / "b"), "--target", "true", "--samples", "1", "--noise", "0"]) == 0
    assert main([*argv, "--out", str(tmp_path / "c")]) == 0
    summary = json.loads((tmp_path / "a" / "gradcam.json").read_text())
    assert list(summary["models"]) == ["CLIP", "VTCLIP"] and summary["models"]["VTCLIP"]["layer"] == "layer4"
    with np.load(tmp_path / "a" / "gradcam.npz") as a, np.load(tmp_path / "c" / "gradcam.npz") as c:
        assert a["VTCLIP"].shape == (2, 4, 4) and a["VTCLIP"].max() > 0
        np.testing.assert_array_equal(a["VTCLIP"], c["VTCLIP"])  # same seed, same noise, same maps
        np.testing.assert_array_equal(a["CLIP"], c["CLIP"])
    true = json.loads((tmp_path / "b" / "gradcam.json").read_text())
    assert true["models"]["CLIP"]["targets"] == [name.split("(")[1].rstrip(")") for name in true["images"]]
    assert Image.open(tmp_path / "a" / "gradcam.png").size[0] > 300


def test_bad_input_gives_one_error_line(runs, kit_root, tmp_path, capsys):
    out = tmp_path / "bad"
    line = refused(["attention", "--root", kit_root, "--out", str(out / "1"), "--run", runs["TipAdapter"]],
                   out / "1", capsys, "TipAdapter has no attention maps")
    assert "SAFE" in line and "VTCLIP" in line and "VPT_CLIP_CAVPT" in line
    refused(["gradcam", "--root", kit_root, "--out", str(out / "2"), "--run", runs["VTCLIP"], "--layer", "layer9"],
            out / "2", capsys, "--layer layer9 is not a module")
    refused(["gradcam", "--root", kit_root, "--out", str(out / "3"), "--run", runs["VTCLIP"], "--target", "blue moon"],
            out / "3", capsys, '--target "blue moon" is not a class')
    refused(["gradcam", "--root", kit_root, "--out", str(out / "4"), "--run", runs["VTCLIP"], "--samples", "0"],
            out / "4", capsys, "--samples must be at least 1")
