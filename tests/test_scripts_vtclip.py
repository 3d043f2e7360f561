"""The VT-CLIP / CALIP / CALIP-FS scripts end to end on the offline kit (1 seed, 1 shot, short
training): main.sh of each method, eval.sh reloading a trained VT-CLIP, and the two VT-CLIP
ablation scripts with their final tables."""

from __future__ import annotations

import os
import os.path as osp
import re
import subprocess
import sys

import pytest
from conftest import REPO, run_script

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


@pytest.mark.slow  # end to end over many runs: with the learning tests
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


@pytest.mark.slow  # end to end over many runs: with the learning tests
def test_ablation_follows_the_rerun_rule(env, tmp_path):
    """A rerun skips the finished settings; a rerun with another option leaves them, names the
    differing key, shows no stale figure and fails; FORCE=1 redoes them with the new option."""
    ablation_env = dict(env, OUTPUT=str(tmp_path / "output"), DATASETS="synth_shapes", SHOTS="1", CFG="micro_rn",
                        LAYERS="1")
    run = tmp_path / "output" / "ablation" / "VTCLIP_layers" / "layers1" / "synth_shapes" / "VTCLIP" / \
        "micro_rn_1shots" / "seed1"
    first = run_script(ablation_env, "vtclip/ablation_layers.sh", *SHORT, *cache(env))
    log = (run / "log.txt").read_text()
    row = first.splitlines()[-1]
    assert re.fullmatch(r"\| synth_shapes \| [\d.]+ \+- 0\.00 \|", row), first[-1500:]

    again = run_script(ablation_env, "vtclip/ablation_layers.sh", *SHORT, *cache(env))
    assert "skipping" in again and "Loading CLIP" not in again and again.splitlines()[-1] == row

    changed = subprocess.run(["bash", "scripts/vtclip/ablation_layers.sh", *SHORT, *cache(env),
                              "TRAINER.VTCLIP.DROPOUT", "0.2"], cwd=REPO, env=ablation_env, capture_output=True,
                             text=True, timeout=600)
    assert changed.returncode == 1, changed.stdout[-2000:] + changed.stderr[-2000:]
    lines = changed.stdout.splitlines()
    assert "  TRAINER.VTCLIP.DROPOUT: 0.1 -> 0.2" in lines and "Loading CLIP" not in changed.stdout
    assert "| synth_shapes | - |" in lines  # the old figure is not shown as the new config's
    assert lines[-1].startswith("ERROR: VTCLIP ablation: no summary for synth_shapes:layers1")
    assert (run / "log.txt").read_text() == log

    forced = run_script(dict(ablation_env, FORCE="1"), "vtclip/ablation_layers.sh", *SHORT, *cache(env),
                        "TRAINER.VTCLIP.DROPOUT", "0.2")
    assert "Redoing finished run" in forced and re.search(r"^\s*DROPOUT: 0\.2$", (run / "log.txt").read_text(), re.M)
    assert re.fullmatch(r"\| synth_shapes \| [\d.]+ \+- 0\.00 \|", forced.splitlines()[-1]), forced[-1500:]
