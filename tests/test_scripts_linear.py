"""The linear-head family's scripts end to end on the offline kit (real train.py runs): each
method's main.sh (1 seed, 1 shot), and Cross-Modal's eval.sh switching WiSE-FT on without
retraining."""

from __future__ import annotations

import os
import os.path as osp
import re
import sys

import pytest
from conftest import run_script

from fsclip.clip.loader import kit_model_names

pytestmark = pytest.mark.skipif("MicroRN" not in kit_model_names(), reason="kit weights missing")

METHODS = [("clip_adapter", "CLIPAdapter"), ("linear_probe", "LinearProbe"), ("cross_modal", "CrossModal"),
           ("wiseft", "WiSEFT"), ("lppp", "LPPP")]
ACC = re.compile(r"^\* accuracy: ([\d.]+)%$", re.M)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("scripts_linear")
    return dict(os.environ, DATA=str(base / "data"), OUTPUT=str(base / "output"), PYTHON=sys.executable,
                SEEDS="1", FSCLIP_SYNTH_WORKERS="1", FEATURES=str(base / "features"))


def script(env, name, *extra):
    return run_script(env, name, "synth_shapes", "1", "micro_rn", "TRAINER.FEATURES.CACHE_DIR", env["FEATURES"], *extra)


@pytest.mark.parametrize("method,trainer", METHODS)
def test_main_sh_trains_tests_and_summarises(env, method, trainer):
    out = script(env, f"{method}/main.sh")
    assert re.search(r"^\* accuracy: [\d.]+% \+- [\d.]+%$", out, re.M), out[-1500:]
    log = open(osp.join(env["OUTPUT"], "synth_shapes", trainer, "micro_rn_1shots", "seed1", "log.txt"),
               encoding="utf-8").read()
    assert "Chosen on val for" in log and "Finish training" in log and ACC.search(log.split("Finish training")[1])


def test_eval_sh_turns_on_wise_ft_without_retraining(env):
    run_dir = osp.join(env["OUTPUT"], "synth_shapes", "CrossModal", "micro_rn_1shots", "seed1")
    if not osp.exists(osp.join(run_dir, "log.txt")):
        script(env, "cross_modal/main.sh")
    trained = ACC.findall(open(osp.join(run_dir, "log.txt"), encoding="utf-8").read())[-1]
    same = script(dict(env, EVAL_TAG="same"), "cross_modal/eval.sh")
    assert re.search(rf"^\* accuracy: {re.escape(trained)}0?% \+- 0\.00%$", same, re.M), (trained, same[-1500:])
    wise = script(dict(env, EVAL_TAG="wiseft"), "cross_modal/eval.sh", "TRAINER.CROSSMODAL.WISE_FT_ALPHA", "0.5")
    log = open(osp.join(env["OUTPUT"], "evaluation", "synth_shapes", "CrossModal", "micro_rn_1shots_wiseft", "seed1",
                        "log.txt"), encoding="utf-8").read()
    assert "eval_only: True" in log and "WISE_FT_ALPHA: 0.5" in log and "Chosen on val" not in log
    assert ACC.search(wise)
