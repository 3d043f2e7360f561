"""The prompt learning scripts end to end on the offline kit (real train.py runs, 1 seed):
main.sh of every method, eval.sh reloading the learned prompts, CoCoOp's base-to-new protocol
through base2new_train.sh / base2new_test.sh, ood.sh's source-to-target evaluation, and the
cross-dataset protocol (xd_train.sh / xd_test.sh: SynthShapes to SynthTextures, other classes)."""

from __future__ import annotations

import os
import os.path as osp
import re
import subprocess
import sys

import pytest
from conftest import REPO, run_script

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


XD_ENV = {"XD_SOURCE": "synth_shapes", "XD_SHOTS": "1"}
# CoOp in the default suite (its source runs are main.sh's); the others behind -m slow
XD_METHODS = [METHODS[0]] + [pytest.param(*m, marks=pytest.mark.slow) for m in METHODS[1:]]


@pytest.mark.parametrize("method,trainer", XD_METHODS)
def test_cross_dataset_evaluates_the_source_prompts_on_other_classes(env, method, trainer):
    """xd_train.sh on SynthShapes (the folder of main.sh's runs), xd_test.sh on SynthTextures:
    the generic context learned on the shapes' classes builds the textures' class prompts."""
    xd_env = dict(env, **XD_ENV)
    script(xd_env, f"{method}/xd_train.sh", "micro_rn")
    out = script(xd_env, f"{method}/xd_test.sh", "synth_textures", "micro_rn")
    assert len(SUMMARY.findall(out)) == 1, out[-1500:]
    log = open(osp.join(env["OUTPUT"], "evaluation", "synth_textures", trainer,
                        "micro_rn_1shots_from_synth_shapes", "seed1", "log.txt"), encoding="utf-8").read()
    assert "Loading dataset: SynthTextures" in log and "eval_only: True" in log
    assert f"Evaluating a class-agnostic {trainer} model on other classes" in log
    assert re.search(r"^Load .*synth_shapes/%s/micro_rn_1shots/seed1/prompt_learner/" % trainer, log, re.M)


@pytest.mark.slow
def test_cross_dataset_table_and_refusals(env):
    """The table of fsclip-results over the runs of the test above (CoOp's here, the other
    methods' too with -m slow); a target equal to the source and a class-specific context are
    refused with one ERROR line (exit 2)."""
    xd_env = dict(env, **XD_ENV)
    script(xd_env, "coop/xd_train.sh", "micro_rn")  # skipped when the test above ran
    script(xd_env, "coop/xd_test.sh", "synth_textures", "micro_rn")
    proc = subprocess.run([sys.executable, "-m", "fsclip.results", env["OUTPUT"], "--tables", "xd"],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "### Cross-dataset transfer: trained on SynthShapes (1 shot)" in proc.stdout
    header = next(line for line in proc.stdout.splitlines() if line.startswith("| Method"))
    assert [c.strip() for c in header.strip("|").split("|")] == ["Method", "SynthShapes", "SynthTextures"]
    rows = [line.split("|")[1].strip() for line in proc.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    ran = [t for _, t in METHODS if osp.isdir(osp.join(env["OUTPUT"], "evaluation", "synth_textures", t))]
    assert "CoOp" in ran and sorted(rows[1:]) == sorted(ran)
    same = subprocess.run(["bash", "scripts/coop/xd_test.sh", "synth_shapes", "micro_rn"], cwd=REPO,
                          env=xd_env, capture_output=True, text=True)
    assert same.returncode == 2 and "ERROR: xd_test: target synth_shapes is the source" in same.stdout
    csc_env = dict(xd_env, CFG_TAG="csc")
    script(csc_env, "coop/xd_train.sh", "micro_rn", "TRAINER.COOP.CSC", "True", "TRAINER.COOP.CTX_INIT", "")
    refused = subprocess.run(["bash", "scripts/coop/xd_test.sh", "synth_textures", "micro_rn",
                              "TRAINER.COOP.CSC", "True", "TRAINER.COOP.CTX_INIT", "",
                              "TRAINER.FEATURES.CACHE_DIR", env["CACHE"]],
                             cwd=REPO, env=csc_env, capture_output=True, text=True)
    assert refused.returncode == 2
    errors = [line for line in refused.stdout.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and "saved state is per class" in errors[0], refused.stdout[-2000:]
