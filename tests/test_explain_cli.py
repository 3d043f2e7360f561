"""``fsclip-explain`` end to end on the kit (shapley, correspondence) and its bad-input errors:
one ERROR line, exit code 2, in log.txt too, nothing written. Issue #23."""

from __future__ import annotations

import json
import os
import os.path as osp
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from fsclip.cli import main as train_main
from fsclip.explain.cli import main


@pytest.fixture(scope="module")
def safe_run(tmp_path_factory, kit_root, kit_cache):
    """A short SAFE run on SynthShapes (MicroRN, 4 shots, seed 1)."""
    out = str(tmp_path_factory.mktemp("explain") / "safe")
    argv = ["--root", kit_root, "--trainer", "SAFE", "--seed", "1", "--output-dir", out,
            "--dataset-config-file", osp.join(REPO, "configs/datasets/synth_shapes.yaml"),
            "--config-file", osp.join(REPO, "configs/trainers/SAFE/micro_rn.yaml"),
            "DATASET.NUM_SHOTS", "4", "USE_CUDA", "False", "TRAINER.FEATURES.CACHE_DIR", kit_cache,
            "TRAINER.SAFE.ITERS", "40", "TRAINER.SAFE.EVAL_EVERY", "20", "TRAINER.SAFE.LRS", "[1e-3]",
            "TRAINER.FEATURES.TRAIN_VIEWS", "1", "TEST.NO_TEST", "True"]
    assert train_main(argv) == 0
    return out


def common(kit_root, out, *extra):
    return ["--root", kit_root, "--out", str(out), *extra]


def test_shapley_end_to_end(safe_run, kit_root, tmp_path, capsys):
    out = tmp_path / "shapley"
    assert main(["shapley", *common(kit_root, out, "--run", safe_run, "--num", "2")]) == 0
    summary = json.loads((out / "shapley.json").read_text())
    assert summary["models"] == ["CLIP", "SAFE"] and summary["method"] == "exact"
    for image in summary["images"]:
        assert image["parts"][0] == "background" and "Shape Fill" in image["parts"]
        for model in summary["models"]:
            v = image["values"][model]
            assert sum(v["phi"].values()) == pytest.approx(v["v_all"] - v["v_none"], abs=1e-5)
    with np.load(out / "shapley.npz") as z:
        assert z["values"].shape[:2] == (2, 2) and z["part_maps"].shape == (2, 128, 128)
    assert Image.open(out / "shapley.png").size[0] > 400
    # Monte-Carlo sampling gives error bars, from the same parts
    out2 = tmp_path / "sampled"
    assert main(["shapley", *common(kit_root, out2, "--num", "1", "--dataset", "SynthShapes", "--backbone", "MicroRN", "--samples", "30",
                                    "--baseline", "blur")]) == 0
    s2 = json.loads((out2 / "shapley.json").read_text())
    assert s2["models"] == ["CLIP"] and s2["images"][0]["values"]["CLIP"]["stderr"] is not None


def test_correspondence_end_to_end(safe_run, kit_root, tmp_path):
    out = tmp_path / "corr"
    assert main(["correspondence", *common(kit_root, out, "--run", safe_run, "--zero-shot",
                                           "--point", "60", "70", "--stages", "layer2", "attnpool")]) == 0
    summary = json.loads((out / "correspondence.json").read_text())
    assert summary["models"] == ["CLIP", "SAFE"] and summary["source_point"] == [60.0, 70.0]
    for model in summary["models"]:
        for x, y in summary["target_points"][model].values():
            assert 0 <= x < 128 and 0 <= y < 128
    with np.load(out / "correspondence.npz") as z:
        assert z["CLIP/layer2"].shape == (16, 16) and z["SAFE/attnpool"].shape == (4, 4)
    # the same source image as image B: the last stage matches the point onto itself
    img = summary["image_a"]
    out2 = tmp_path / "self"
    assert main(["correspondence", *common(kit_root, out2, "--dataset", "SynthShapes", "--backbone", "MicroRN", "--images", img, img,
                                           "--point", "60", "70", "--stages", "attnpool")]) == 0
    (tx, ty), = json.loads((out2 / "correspondence.json").read_text())["target_points"]["CLIP"].values()
    assert int(tx / 32) == int(60 / 32) and int(ty / 32) == int(70 / 32)


def refused(argv, out, capsys, match):
    """Exit 2 with one ERROR line (the last on the terminal and in log.txt) and no figure."""
    capsys.readouterr()
    assert main(argv) == 2
    lines = capsys.readouterr().out.splitlines()
    errors = [l for l in lines if l.startswith("ERROR: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines[-5:]
    assert match in errors[0], errors[0]
    with open(osp.join(out, "log.txt")) as f:
        assert f.read().splitlines()[-1] == errors[0]
    assert not [n for n in os.listdir(out) if n.endswith((".png", ".npz", ".json"))]
    return errors[0]


def test_bad_input_gives_one_error_line(safe_run, kit_root, tmp_path, capsys):
    out = tmp_path / "bad"
    refused(["shapley", *common(kit_root, out / "1", "--dataset", "SynthShapes", "--backbone", "MicroRN", "--images", str(tmp_path / "no.png"),
                                "--classes", "red circle")], out / "1", capsys, "no.png (--images) does not exist")
    refused(["shapley", *common(kit_root, out / "2", "--run", str(tmp_path / "norun"))], out / "2", capsys,
            "norun does not exist (--run)")
    empty = tmp_path / "empty_run"
    shutil.copytree(safe_run, empty, ignore=shutil.ignore_patterns("attnpool_f"))
    refused(["shapley", *common(kit_root, out / "3", "--run", str(empty))], out / "3", capsys, "has no checkpoint")
    img = osp.join(kit_root, "synth_shapes", "images", "red_circle", "test_0000.png")
    refused(["shapley", *common(kit_root, out / "4", "--dataset", "SynthShapes", "--backbone", "MicroRN", "--images", img,
                                "--classes", "red circel")], out / "4", capsys, 'Do you mean "red circle"')
    mask = tmp_path / "mask.png"
    Image.fromarray(np.ones((100, 128), np.uint8)).save(mask)
    refused(["shapley", *common(kit_root, out / "5", "--dataset", "SynthShapes", "--backbone", "MicroRN", "--images", img, "--classes",
                                "red circle", "--parts", str(mask))], out / "5", capsys, "must have the size")
    many = np.arange(128 * 128).reshape(128, 128) % 9
    Image.fromarray(many.astype(np.uint8)).save(mask)
    refused(["shapley", *common(kit_root, out / "6", "--dataset", "SynthShapes", "--backbone", "MicroRN", "--images", img, "--classes",
                                "red circle", "--parts", str(mask))], out / "6", capsys, "pass --samples M")
