"""The CoOp-style method scripts: seeds loop, output layout, parsed summary, skipping finished
runs and redoing crashed ones (real train.py runs on the offline kit)."""

from __future__ import annotations

import os
import os.path as osp
import re
import sys

import pytest
from conftest import run_script

from fsclip.clip.loader import kit_model_names

pytestmark = pytest.mark.skipif("MicroRN" not in kit_model_names(), reason="kit weights missing")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("scripts")
    return dict(os.environ, DATA=str(base / "data"), OUTPUT=str(base / "output"),
                PYTHON=sys.executable, SEEDS="1 2", FSCLIP_SYNTH_WORKERS="1",
                FSCLIP_FEATURE_CACHE=str(base / "features"))


def main_sh(env: dict) -> str:
    return run_script(env, "tip_adapter/main.sh", "synth_shapes", "1", "micro_rn",
                      "TRAINER.FEATURES.CACHE_DIR", env["FSCLIP_FEATURE_CACHE"])


def test_main_sh_runs_every_seed_then_skips_finished_and_redoes_crashed_runs(env):
    base = osp.join(env["OUTPUT"], "synth_shapes", "TipAdapter", "micro_rn_1shots")
    out = main_sh(env)
    assert re.search(r"^\* accuracy: [\d.]+% \+- [\d.]+%$", out, re.M), out[-1500:]
    assert sorted(os.listdir(base)) == ["seed1", "seed2"]
    logs = {s: open(osp.join(base, s, "log.txt"), encoding="utf-8").read() for s in ("seed1", "seed2")}
    assert all("Finish training" in text for text in logs.values())

    # a rerun trains nothing
    again = main_sh(env)
    assert again.count("skipping") == 2 and "Loading CLIP" not in again

    # seed 2 "crashed" before its result: only it is redone, its old log is kept aside
    cut = logs["seed2"].split("Finish training")[0]
    with open(osp.join(base, "seed2", "log.txt"), "w", encoding="utf-8") as f:
        f.write(cut)
    redo = main_sh(env)
    assert redo.count("skipping") == 1 and "Redoing unfinished run" in redo
    kept = [f for f in os.listdir(osp.join(base, "seed2")) if f.startswith("log.txt.crashed-")]
    assert len(kept) == 1
    final = open(osp.join(base, "seed2", "log.txt"), encoding="utf-8").read()
    assert "Finish training" in final
    acc = re.findall(r"^\* accuracy: ([\d.]+)%$", final, re.M)[-1]
    assert acc == re.findall(r"^\* accuracy: ([\d.]+)%$", logs["seed2"], re.M)[-1]  # same run, same result


@pytest.mark.slow  # end to end over many runs: with the learning tests
def test_ood_sh_trains_on_the_source_and_evaluates_each_seed_on_the_target(env):
    """The distribution-shift script on the kit: SynthShapes 1-shot -> SynthShapesSketch."""
    ood_env = dict(env, OOD_SOURCE="synth_shapes", OOD_SHOTS="1", OOD_TARGETS="synth_shapes_sketch")
    stdout = run_script(ood_env, "tip_adapter/ood.sh", "micro_rn", "TRAINER.FEATURES.CACHE_DIR",
                        env["FSCLIP_FEATURE_CACHE"])
    base = osp.join(env["OUTPUT"], "evaluation", "synth_shapes_sketch", "TipAdapter", "micro_rn_1shots_from_synth_shapes")
    assert sorted(os.listdir(base)) == ["seed1", "seed2"]
    for seed in ("seed1", "seed2"):
        log = open(osp.join(base, seed, "log.txt"), encoding="utf-8").read()
        model_dir = osp.join(env["OUTPUT"], "synth_shapes", "TipAdapter", "micro_rn_1shots", seed)
        assert f"model_dir: {model_dir}" in log and "eval_only: True" in log
        assert "Loading dataset: SynthShapesSketch" in log and re.search(r"^=> result$", log, re.M)
    # the parsed summary over both seeds comes last, from the target's folder
    assert stdout.rstrip().endswith("===") and f"Summary of directory: {base}" in stdout
