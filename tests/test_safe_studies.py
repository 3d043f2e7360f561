"""SAFE's studies (issue #24): beta at test time (Fig. 5, scripts/safe/beta_sweep.sh and
fsclip.results.beta_sweep) and which layers to fine-tune (Sec. IV-D2, TRAINER.SAFE.TRAIN_LAYERS,
scripts/safe/layers.sh)."""

from __future__ import annotations

import contextlib
import io
import os
import os.path as osp
import re
import sys

import pytest
import torch
from conftest import run_script
from kit_learning import kit_trainer
from results_tree import write_log

from fsclip.clip.loader import kit_model_names
from fsclip.errors import ConfigError
from fsclip.results import beta_sweep

needs_kit = pytest.mark.skipif(not {"MicroRN", "MicroViT"} <= set(kit_model_names()), reason="kit weights missing")
NO_TRAIN = ["TRAINER.SAFE.ITERS", 1, "TRAINER.SAFE.EVAL_EVERY", 1, "TRAINER.SAFE.LRS", "[0.0]"]


def _build(kit_root, kit_cache, out, kit_cfg, layers):
    with contextlib.redirect_stdout(io.StringIO()):
        return kit_trainer("SAFE", "synth_shapes", kit_root, kit_cache, str(out), 1, kit_cfg, 1,
                           NO_TRAIN + ["TRAINER.SAFE.TRAIN_LAYERS", layers])


# ----------------------------------------------------------------------------- TRAIN_LAYERS
@needs_kit
@pytest.mark.parametrize("kit_cfg,deeper,stage", [("micro_rn", "attnpool+layer4", "stages.layer4"),
                                                   ("micro_rn", "attnpool+layer4+layer3", "stages.layer3"),
                                                   ("micro_vit", "last_two_blocks", "stages.block")])
def test_a_deeper_split_at_init_gives_the_logits_of_safe(kit_root, kit_cache, tmp_path, kit_cfg, deeper, stage):
    """Same model, the split just moved: G ends earlier and the heads start with the moved layers,
    so before training the logits (Eq. 3-4, beta 0.5) equal SAFE's; the checkpoint holds the
    moved layers only when they are trained."""
    base = _build(kit_root, kit_cache, tmp_path / "a", kit_cfg, "attnpool")
    deep = _build(kit_root, kit_cache, tmp_path / "b", kit_cfg, deeper)
    images = torch.randn(3, 3, *base.cfg.INPUT.SIZE)
    g_deep, g_base = deep.trunk(images), base.trunk(images)  # the cached features are taken earlier
    assert g_deep.shape != g_base.shape or not torch.allclose(g_deep, g_base)
    torch.testing.assert_close(deep.model_inference(images), base.model_inference(images), rtol=1e-4, atol=1e-4)
    assert deep.backbone_id != base.backbone_id  # the feature cache keys on the split point
    keys = []
    for t, d in ((base, tmp_path / "ck_a"), (deep, tmp_path / "ck_b")):
        with contextlib.redirect_stdout(io.StringIO()):
            t.save_model(0, str(d), model_name="model-best.pth.tar")
        keys.append(list(torch.load(d / "attnpool_f" / "model-best.pth.tar", map_location="cpu")["state_dict"]))
    base_keys, deep_keys = keys
    assert not any(stage in k for k in base_keys) and any(stage in k for k in deep_keys)
    assert any(stage in k for k in deep.head_o.state_dict()) and deep.head_o is not deep.head_f
    assert all(p.requires_grad for p in deep.head_f.parameters())


@needs_kit
def test_an_unknown_or_wrong_architecture_value_is_one_config_error(kit_root, kit_cache, tmp_path):
    for cfg, value in [("micro_rn", "layer2"), ("micro_rn", "last_two_blocks"), ("micro_vit", "attnpool+layer4")]:
        with pytest.raises(ConfigError, match=r"TRAINER\.SAFE\.TRAIN_LAYERS must be one of .*attnpool"):
            _build(kit_root, kit_cache, tmp_path / value, cfg, value)


# ----------------------------------------------------------------------------- beta table / plot
def _sweep_tree(root, accs):
    """Eval-only logs as beta_sweep.sh lays them out: {dataset: {beta: [acc per seed]}}."""
    for dataset, per_beta in accs.items():
        for beta, values in per_beta.items():
            folder = beta_sweep.beta_dir(root, dataset, "imagenet", "rn50_16shots", beta)
            for seed, acc in enumerate(values, 1):
                write_log(osp.join(folder, f"seed{seed}"), acc, cfg="rn50", dataset=dataset, seed=seed, eval_only=True,
                          crashed=acc is None)


def test_beta_table_and_delta_plot_from_a_results_tree(tmp_path):
    accs = {"imagenet": {"0.0": [60.0, 62.0], "0.5": [61.0, 63.0], "1.0": [59.0, 60.0]},
            "imagenet_r": {"0.0": [70.0, 70.0], "0.5": [72.0, 73.0], "1.0": [73.0, 74.0]},
            "imagenet_a": {"0.0": [20.0, None], "0.5": [21.0, 22.0]}}  # a crashed run, a missing beta
    _sweep_tree(str(tmp_path), accs)
    text, paths, problems = beta_sweep.write_report(str(tmp_path), "imagenet", "rn50_16shots", ["0.0", "0.5", "1.0"],
                                                    ["imagenet_r", "imagenet_a"])
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in text.splitlines() if re.match(r"^\| [\d.]+ \|", line)}
    assert rows["0.0"] == ["61.00 +- 1.00", "70.00 +- 0.00", "20.00 +- 0.00"]
    assert rows["1.0"] == ["59.50 +- 0.50", "73.50 +- 0.50", "-"]
    assert "ImageNet-R" in text or "imagenet_r" in text
    assert len(problems) == 2 and any("seed2" in p for p in problems)
    sweep, _ = beta_sweep.collect(str(tmp_path), "imagenet", "rn50_16shots", ["0.0", "0.5", "1.0"], ["imagenet_r"])
    d = beta_sweep.deltas(sweep["imagenet_r"], ["0.0", "0.5", "1.0"])
    assert d == {"0.0": 0.0, "0.5": 2.5, "1.0": 3.5}  # per seed vs beta 0, then the mean
    png = [p for p in paths if p.endswith(".png")]
    assert png and open(png[0], "rb").read(8) == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- scripts end to end
@pytest.fixture(scope="module")
def env(tmp_path_factory, kit_root, kit_cache):
    # the session's kit data and feature cache (generated and extracted once for the suite)
    base = tmp_path_factory.mktemp("safe_studies")
    return dict(os.environ, DATA=kit_root, OUTPUT=str(base / "output"), PYTHON=sys.executable,
                SEEDS="1", FSCLIP_SYNTH_WORKERS="1", FEATURES=kit_cache)


TINY = ["TRAINER.SAFE.ITERS", "10", "TRAINER.SAFE.EVAL_EVERY", "5", "TRAINER.SAFE.LRS", "[1e-3]"]


@pytest.mark.slow
@needs_kit
def test_beta_sweep_sh_end_to_end_on_the_kit(env):
    out = run_script(dict(env, BETAS="0.0 1.0", BETA_TARGETS="synth_shapes_sketch"), "safe/beta_sweep.sh",
                     "synth_shapes", "2", "micro_rn", "TRAINER.FEATURES.CACHE_DIR", env["FEATURES"], *TINY)
    stem = osp.join(env["OUTPUT"], "beta_sweep", "micro_rn_2shots_from_synth_shapes")
    assert osp.getsize(stem + ".png") > 0
    table = open(stem + ".md", encoding="utf-8").read()
    assert table in out
    for dataset, col in (("synth_shapes", 0), ("synth_shapes_sketch", 1)):
        for beta in ("0.0", "1.0"):
            log = open(osp.join(beta_sweep.beta_dir(env["OUTPUT"], dataset, "synth_shapes", "micro_rn_2shots", beta),
                                "seed1", "log.txt"), encoding="utf-8").read()
            assert "eval_only: True" in log and f"BETA: {beta}" in log
            acc = float(re.findall(r"^\* accuracy: ([\d.]+)%$", log, re.M)[-1])
            row = re.search(rf"^\| {re.escape(beta)} \|(.*)\|$", table, re.M).group(1).split("|")
            assert row[col].strip() == f"{acc:.2f} +- 0.00"


@pytest.mark.slow
@needs_kit
def test_layers_sh_end_to_end_on_the_kit(env):
    out = run_script(dict(env, LAYERS="attnpool attnpool+layer4"), "safe/layers.sh", "synth_shapes", "2", "micro_rn",
                     "TRAINER.FEATURES.CACHE_DIR", env["FEATURES"], *TINY)
    for layers in ("attnpool", "attnpool+layer4"):
        tag = "" if layers == "attnpool" else "_" + layers.replace("+", "-")  # SAFE's own runs: main.sh's folder
        folder = osp.join(env["OUTPUT"], "synth_shapes", "SAFE", f"micro_rn{tag}_2shots")
        log = open(osp.join(folder, "seed1", "log.txt"), encoding="utf-8").read()
        assert f"TRAIN_LAYERS: {layers}" in log
        acc = float(re.findall(r"^\* accuracy: ([\d.]+)%$", log.split("Finish training")[1], re.M)[-1])
        assert re.search(rf"^\| {re.escape(layers)} \| {acc:.2f} \+- 0\.00 \| 1 \|$", out, re.M), out[-2000:]
    assert osp.getsize(osp.join(env["OUTPUT"], "studies", "safe_layers_synth_shapes_micro_rn_2shots.png")) > 0
