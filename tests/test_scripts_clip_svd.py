"""CLIP-SVD's scripts on the offline kit: main.sh trains end to end (1 seed, 1 shot) and saves only
the singular values; eval.sh reloads them and reproduces the run's accuracy."""

from __future__ import annotations

import os
import os.path as osp
import re
import sys

import pytest
import torch
from conftest import run_script

from fsclip.clip.loader import kit_model_names

pytestmark = pytest.mark.skipif("MicroViT" not in kit_model_names(), reason="kit weights missing")
ACC = re.compile(r"^\* accuracy: ([\d.]+)%$", re.M)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("scripts_clip_svd")
    return dict(os.environ, DATA=str(base / "data"), OUTPUT=str(base / "output"), HOME=str(base / "home"),
                PYTHON=sys.executable, SEEDS="1", FSCLIP_SYNTH_WORKERS="1")


@pytest.mark.slow  # two real runs with a full test split each (about a minute on 2 cores)
def test_main_sh_trains_then_eval_sh_reloads(env):
    out = run_script(env, "clip_svd/main.sh", "synth_shapes", "1", "micro_vit")
    assert re.search(r"^\* accuracy: [\d.]+% \+- [\d.]+%$", out, re.M), out[-1500:]
    run = osp.join(env["OUTPUT"], "synth_shapes", "CLIPSVD", "micro_vit_1shots", "seed1")
    log = open(osp.join(run, "log.txt"), encoding="utf-8").read()
    assert "5 iterations (N_ITERS 5 x shots)" in log and "Finish training" in log
    cache = osp.join(env["HOME"], ".cache", "fsclip", "features", "svd")  # the default, under the feature cache
    assert f"computed and cached in {cache}" in log, log[:3000]
    trained = ACC.findall(log.split("Finish training")[1])[-1]
    (ckpt,) = [f for f in os.listdir(osp.join(run, "svd")) if f.startswith("model")]
    state = torch.load(osp.join(run, "svd", ckpt), map_location="cpu", weights_only=False)["state_dict"]
    assert state and all(k.endswith(".s") for k in state)  # only the singular values
    evaluated = run_script(env, "clip_svd/eval.sh", "synth_shapes", "1", "micro_vit")
    assert f"loaded from {cache}" in evaluated, evaluated[-3000:]  # the SVD is not computed twice
    assert re.search(rf"^\* accuracy: {re.escape(trained)}0?% \+- 0\.00%$", evaluated, re.M), \
        (trained, evaluated[-1500:])
