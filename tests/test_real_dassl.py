"""The trainers under real Dassl (``FSCLIP_BACKEND=dassl``): opt-in, since Dassl is not on PyPI.

Set ``FSCLIP_TEST_DASSL`` to a Dassl.pytorch checkout (its runtime imports installed: gdown,
tensorboard, scikit-learn, scipy, wilds, pandas) to run these; otherwise they are skipped.
Each trains on the offline kit through the CoOp-style script, then evaluates the saved model
with ``--eval-only``, which goes through Dassl's trainer with our checkpoint loader.
"""

from __future__ import annotations

import os
import os.path as osp
import re
import sys

import pytest
from conftest import run_script

from fsclip.clip.loader import kit_model_names

DASSL = os.environ.get("FSCLIP_TEST_DASSL", "")

pytestmark = [
    pytest.mark.skipif(not DASSL, reason="set FSCLIP_TEST_DASSL to a Dassl.pytorch checkout"),
    pytest.mark.skipif("MicroRN" not in kit_model_names(), reason="kit weights missing"),
]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("real_dassl")
    pythonpath = os.pathsep.join(p for p in (DASSL, os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, FSCLIP_BACKEND="dassl", PYTHONPATH=pythonpath, DATA=str(base / "data"),
                OUTPUT=str(base / "output"), PYTHON=sys.executable, SEEDS="1", FSCLIP_SYNTH_WORKERS="1")


def script(env: dict, method: str, name: str, args: tuple) -> str:
    return run_script(env, f"{method}/{name}.sh", "synth_shapes", "2", *args,
                      "TRAINER.FEATURES.CACHE_DIR", osp.join(env["OUTPUT"], "features"), timeout=900)


RN = ("micro_rn",)


@pytest.mark.parametrize("method,trainer,args", [
    ("safe", "SAFE", RN), ("safe_a", "SAFE_A", RN), ("tip_adapter", "TipAdapter", RN), ("tip_adapter_f", "TipAdapterF", RN), ("clip_adapter", "CLIPAdapter", RN),
    ("linear_probe", "LinearProbe", RN), ("cross_modal", "CrossModal", RN), ("wiseft", "WiSEFT", RN),
    ("lppp", "LPPP", RN), ("coop", "CoOp", RN), ("cocoop", "CoCoOp", RN), ("prograd", "ProGrad", RN),
    ("gda", "GDA", RN), ("proker", "ProKeR", RN),
    ("kgcoop", "KgCoOp", RN), ("vtclip", "VTCLIP", RN), ("calip", "CALIP", RN), ("calip_fs", "CALIP_FS", RN),
    ("dpt", "VPT_CLIP", ("VPT_CLIP", "micro_vit")), ("dpt", "VPT_CLIP_CAVPT", ("VPT_CLIP_CAVPT", "micro_vit")),
    ("dpt", "VLP_CLIP", ("VLP_CLIP", "micro_vit")), ("dpt", "VLP_CLIP_CAVPT", ("VLP_CLIP_CAVPT", "micro_vit")),
    ("clip_lora", "CLIPLoRA", ("micro_vit",)), ("clip_svd", "CLIPSVD", ("micro_vit",)), ("maple", "MaPLe", ("micro_vit",)),
    ("promptsrc", "PromptSRC", ("micro_vit",)),
])
def test_train_then_eval_only_under_real_dassl(env, method, trainer, args):
    script(env, method, "main", args)
    log = open(osp.join(env["OUTPUT"], "synth_shapes", trainer, f"{args[-1]}_2shots", "seed1", "log.txt"),
               encoding="utf-8").read()
    # Dassl's engine ran it, from the checkout given
    assert f"Engine: Dassl ({osp.join(osp.abspath(DASSL), 'dassl')}" in log
    assert "Loading trainer: " + trainer in log and "Finish training" in log
    acc = re.findall(r"^\* accuracy: ([\d.]+)%$", log, re.M)[-1]
    evaluated = script(env, method, "eval", args)
    assert re.search(rf"^\* accuracy: {re.escape(acc)}0?% \+- 0\.00%$", evaluated, re.M), (acc, evaluated[-1500:])
