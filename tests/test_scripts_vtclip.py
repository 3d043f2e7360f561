"""The VT-CLIP / CALIP / CALIP-FS scripts end to end on the offline kit (1 seed, 1 shot, short
training): main.sh of each method, eval.sh reloading a trained VT-CLIP, and the two VT-CLIP
ablation scripts with their final tables."""

from __future__ import annotations

import os
import os.path as osp
import re
import sys

import pytest
from conftest import run_script

from fsclip.clip.loader import kit_model_names

pytestmark = pytest.mark.skipif("MicroRN" not in kit_model_names(), reason="kit weights missing")

SHORT = ["OPTIM.MAX_EPOCH", "2"]  # explicit, so it wins over OPTIM.EPOCHS_BY_SHOTS


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("scripts_vtclip")
    return dict(os.environ, DATA=str(base / "data"), OUTPUT=str(base / "output"), PYTHON=sys.executable,
                SEEDS="1", FSCLIP_SYNTH_WORKERS="1", FSCLIP_FEATURE_CACHE=str(base / "features"))


def cache(env: dict) -> list:
    return ["TRAINER.FEATURES.CACHE_DIR", env["FSCLIP_FEATURE_CACHE"]]


def final_accuracy(log_path: str) -> str:
    log = open(log_path, encoding="utf-8").read()
    assert "Finish training" in log
    return re.findall(r"^\* accuracy: ([\d.]+)%$", log, re.M)[-1]


@pytest.mark.parametrize("method,trainer", [("vtclip", "VTCLIP"), ("calip", "CALIP"), ("calip_fs", "CALIP_FS")])
def test_main_sh(env, method, trainer):
    out = run_script(env, f"{method}/main.sh", "synth_shapes", "1", "micro_rn", *SHORT, *cache(env))
    acc = final_accuracy(osp.join(env["OUTPUT"], "synth_shapes", trainer, "micro_rn_1shots", "seed1", "log.txt"))
    assert re.search(rf"^\* accuracy: {re.escape(acc)}0?% \+- 0\.00%$", out, re.M), out[-1500:]
    if method == "vtclip":  # eval-only reloads the trained module and gives the same accuracy
        evaluated = run_script(env, "vtclip/eval.sh", "synth_shapes", "1", "micro_rn", *cache(env))
        assert re.search(rf"^\* accuracy: {re.escape(acc)}0?% \+- 0\.00%$", evaluated, re.M), evaluated[-1500:]


@pytest.mark.parametrize("script,name,values", [("ablation_heads", "heads", "4 8"), ("ablation_layers", "layers", "1 2")])
def test_ablation_scripts_print_the_table(env, script, name, values):
    ablation_env = dict(env, DATASETS="synth_shapes", SHOTS="1", CFG="micro_rn", HEADS="4 8", LAYERS="1 2")
    out = run_script(ablation_env, f"vtclip/{script}.sh", *SHORT, *cache(env))
    table = out[out.index("VTCLIP ablation of"):].splitlines()
    assert table[1] == f"| dataset | {name} {values.split()[0]} | {name} {values.split()[1]} |", table
    cells = table[3].split("|")[2:-1]
    for value, cell in zip(values.split(), cells):
        run = osp.join(env["OUTPUT"], "ablation", f"VTCLIP_{name}", f"{name}{value}", "synth_shapes", "VTCLIP",
                       "micro_rn_1shots", "seed1")
        log = open(osp.join(run, "log.txt"), encoding="utf-8").read()
        key = "HEADS" if name == "heads" else "LAYERS"
        assert re.search(rf"^\s*{key}: {value}$", log, re.M), f"{run} did not run with {key} {value}"
        assert cell.strip() == f"{float(final_accuracy(osp.join(run, 'log.txt'))):.2f} +- 0.00"
