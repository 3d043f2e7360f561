"""The prompt learning scripts end to end on the offline kit (real train.py runs, 1 seed):
main.sh of every method, eval.sh reloading the learned prompts, CoCoOp's base-to-new protocol
through base2new_train.sh / base2new_test.sh, and ood.sh's source-to-target evaluation."""

from __future__ import annotations

import os
import os.path as osp
import re
import sys

import pytest
from conftest import run_script

from fsclip.clip.loader import kit_model_names
from fsclip.results import harmonic_mean

pytestmark = pytest.mark.skipif("MicroRN" not in kit_model_names(), reason="kit weights missing")

METHODS = [("coop", "CoOp"), ("cocoop", "CoCoOp"), ("prograd", "ProGrad"), ("kgcoop", "KgCoOp")]
SUMMARY = re.compile(r"^\* accuracy: ([\d.]+)% \+- [\d.]+%$", re.M)


@pytest.fixture(scope="module")
def env(tmp_path_factory, kit_root, kit_cache):
    out = tmp_path_factory.mktemp("scripts_coop")
    return dict(os.environ, DATA=kit_root, OUTPUT=str(out / "output"), PYTHON=sys.executable, SEEDS="1",
                FSCLIP_SYNTH_WORKERS="1", CACHE=kit_cache)


def script(env: dict, path: str, *args: str) -> str:
    return run_script(env, path, *args, "TRAINER.FEATURES.CACHE_DIR", env["CACHE"])


@pytest.mark.parametrize("method,trainer", METHODS)
def test_main_then_eval_only_reloads_the_prompts(env, method, trainer):
    out = script(env, f"{method}/main.sh", "synth_shapes", "1", "micro_rn")
    trained = SUMMARY.findall(out)
    assert len(trained) == 1, out[-1500:]
    log = open(osp.join(env["OUTPUT"], "synth_shapes", trainer, "micro_rn_1shots", "seed1", "log.txt"),
               encoding="utf-8").read()
    assert "Finish training" in log and "Initial context: \"a photo of a\"" in log
    assert re.search(r"^epoch \[\d+/\d+\] batch \[1/1\] .* lr [\d.e+-]+ eta ", log, re.M)  # Dassl's train line
    # eval-only from the saved prompts: the same test accuracy
    evaluated = script(env, f"{method}/eval.sh", "synth_shapes", "1", "micro_rn")
    assert SUMMARY.findall(evaluated) == trained, evaluated[-1500:]
    eval_log = open(osp.join(env["OUTPUT"], "evaluation", "synth_shapes", trainer, "micro_rn_1shots", "seed1",
                             "log.txt"), encoding="utf-8").read()
    assert re.search(r"^Load .*prompt_learner/model-best\.pth\.tar to prompt_learner", eval_log, re.M)


def test_base_to_new_through_the_scripts(env):
    """CoCoOp's protocol on SynthShapes: train on the 5 base classes, test on the 5 new ones."""
    script(env, "cocoop/base2new_train.sh", "synth_shapes", "2", "micro_rn")
    out = script(env, "cocoop/base2new_test.sh", "synth_shapes", "2", "micro_rn")
    values = {k: float(v) for k, v in re.findall(r"^\* (base|new|H): ([\d.]+)%$", out, re.M)}
    assert set(values) == {"base", "new", "H"}, out[-2000:]
    assert abs(values["H"] - harmonic_mean(values["base"], values["new"])) < 0.01
    common = osp.join("synth_shapes", "CoCoOp", "micro_rn_2shots", "seed1", "log.txt")
    base_log = open(osp.join(env["OUTPUT"], "base2new", "train_base", common), encoding="utf-8").read()
    new_log = open(osp.join(env["OUTPUT"], "base2new", "test_new", common), encoding="utf-8").read()
    assert "SUBSAMPLE BASE CLASSES!" in base_log and "SUBSAMPLE NEW CLASSES!" in new_log
    assert "eval_only: True" in new_log and "5 prompts of" in new_log  # the new classes' own prompts
    # a rerun skips both finished steps
    again = script(env, "cocoop/base2new_test.sh", "synth_shapes", "2", "micro_rn")
    assert "skipping" in again and "Loading CLIP" not in again


def test_ood_evaluates_the_source_prompts_on_the_target(env):
    ood_env = dict(env, OOD_SOURCE="synth_shapes", OOD_SHOTS="1", OOD_TARGETS="synth_shapes_sketch")
    out = script(ood_env, "coop/ood.sh", "micro_rn")
    log = open(osp.join(env["OUTPUT"], "evaluation", "synth_shapes_sketch", "CoOp",
                        "micro_rn_1shots_from_synth_shapes", "seed1", "log.txt"), encoding="utf-8").read()
    assert "Loading dataset: SynthShapesSketch" in log and "eval_only: True" in log
    assert out.rstrip().endswith("===") and len(SUMMARY.findall(out)) == 2
