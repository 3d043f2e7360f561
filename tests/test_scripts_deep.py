"""The MaPLe and PromptSRC scripts end to end on the offline kit (real train.py runs, 1 seed,
MicroViT): main.sh then eval.sh reloading the prompts (same accuracy), the base-to-new protocol
(base2new_train.sh / base2new_test.sh: H of base and new) and the cross-dataset protocol
(xd_train.sh on SynthShapes, xd_test.sh on SynthTextures' other classes). Behind -m slow, with
the learning tests (each run trains through both encoders)."""

from __future__ import annotations

import os
import os.path as osp
import re
import sys

import pytest
from conftest import run_script

from fsclip.clip.loader import kit_model_names
from fsclip.results import harmonic_mean

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif("MicroViT" not in kit_model_names(), reason="kit weights missing")]

METHODS = [("maple", "MaPLe"), ("promptsrc", "PromptSRC")]
SUMMARY = re.compile(r"^\* accuracy: ([\d.]+)% \+- [\d.]+%$", re.M)
FAST = ("OPTIM.MAX_EPOCH", "2")  # the kit config's schedule, shortened


@pytest.fixture(scope="module")
def env(tmp_path_factory, kit_root, kit_cache):
    out = tmp_path_factory.mktemp("scripts_deep")
    return dict(os.environ, DATA=kit_root, OUTPUT=str(out / "output"), PYTHON=sys.executable, SEEDS="1",
                FSCLIP_SYNTH_WORKERS="1", CACHE=kit_cache)


def script(env: dict, path: str, *args: str) -> str:
    return run_script(env, path, *args, *FAST, "TRAINER.FEATURES.CACHE_DIR", env["CACHE"])


@pytest.mark.parametrize("method,trainer", METHODS)
def test_main_then_eval_only_reloads_the_prompts(env, method, trainer):
    out = script(env, f"{method}/main.sh", "synth_shapes", "1", "micro_vit")
    trained = SUMMARY.findall(out)
    assert len(trained) == 1, out[-1500:]
    log = open(osp.join(env["OUTPUT"], "synth_shapes", trainer, "micro_vit_1shots", "seed1", "log.txt"),
               encoding="utf-8").read()
    assert "Finish training" in log and "Loading trainer: " + trainer in log
    evaluated = script(env, f"{method}/eval.sh", "synth_shapes", "1", "micro_vit")
    assert SUMMARY.findall(evaluated) == trained, evaluated[-1500:]


@pytest.mark.parametrize("method,trainer", METHODS)
def test_base_to_new_through_the_scripts(env, method, trainer):
    script(env, f"{method}/base2new_train.sh", "synth_shapes", "2", "micro_vit")
    out = script(env, f"{method}/base2new_test.sh", "synth_shapes", "2", "micro_vit")
    values = {k: float(v) for k, v in re.findall(r"^\* (base|new|H): ([\d.]+)%$", out, re.M)}
    assert set(values) == {"base", "new", "H"}, out[-2000:]
    assert abs(values["H"] - harmonic_mean(values["base"], values["new"])) < 0.01
    new_log = open(osp.join(env["OUTPUT"], "base2new", "test_new", "synth_shapes", trainer, "micro_vit_2shots",
                            "seed1", "log.txt"), encoding="utf-8").read()
    assert "SUBSAMPLE NEW CLASSES!" in new_log and "eval_only: True" in new_log
    assert f"Evaluating a class-agnostic {trainer} model on other classes" in new_log


@pytest.mark.parametrize("method,trainer", METHODS)
def test_cross_dataset_through_the_scripts(env, method, trainer):
    xd_env = dict(env, XD_SOURCE="synth_shapes", XD_SHOTS="1")
    script(xd_env, f"{method}/xd_train.sh", "micro_vit")  # main.sh's runs: skipped when they exist
    out = script(xd_env, f"{method}/xd_test.sh", "synth_textures", "micro_vit")
    assert len(SUMMARY.findall(out)) == 1, out[-1500:]
    log = open(osp.join(env["OUTPUT"], "evaluation", "synth_textures", trainer,
                        "micro_vit_1shots_from_synth_shapes", "seed1", "log.txt"), encoding="utf-8").read()
    assert "Loading dataset: SynthTextures" in log
    assert f"Evaluating a class-agnostic {trainer} model on other classes" in log
