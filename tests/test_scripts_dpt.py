"""The DPT scripts on the offline kit: main.sh trains every trainer end to end (1 seed, 1 shot),
eval.sh reloads a trained run, table1.sh builds its table from those runs; main.sh runs exactly
what fsclip-sweep expands, and the ablation scripts run the paper's settings (recorded, not run)."""

from __future__ import annotations

import os
import os.path as osp
import re
import sys

import pytest
from conftest import run_script
from test_sweep import script_runs

from fsclip.clip.loader import kit_model_names
from fsclip.sweep.grid import Grid, Method, expand, registered_trainers

pytestmark = pytest.mark.skipif("MicroViT" not in kit_model_names(), reason="kit weights missing")

TRAINERS = ["VPT_CLIP", "VPT_CLIP_CAVPT", "VLP_CLIP", "VLP_CLIP_CAVPT"]
REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("scripts_dpt")
    # HOME: the default feature cache (~/.cache/fsclip/features) lands in the test's folder
    return dict(os.environ, DATA=str(base / "data"), OUTPUT=str(base / "output"), HOME=str(base / "home"),
                PYTHON=sys.executable, SEEDS="1", FSCLIP_SYNTH_WORKERS="1")


def final_accuracy(log: str) -> str:
    return re.findall(r"^\* accuracy: ([\d.]+)%$", log.split("Finish training")[1], re.M)[-1]


@pytest.mark.slow  # end to end over many runs: with the learning tests
@pytest.mark.parametrize("trainer", TRAINERS)
def test_main_sh_trains_each_variant(env, trainer):
    out = run_script(env, "dpt/main.sh", "synth_shapes", "1", trainer, "micro_vit")
    assert re.search(r"^\* accuracy: [\d.]+% \+- [\d.]+%$", out, re.M), out[-1500:]
    run = osp.join(env["OUTPUT"], "synth_shapes", trainer, "micro_vit_1shots", "seed1")
    log = open(osp.join(run, "log.txt"), encoding="utf-8").read()
    assert "Deploy the model with the best val performance" in log and final_accuracy(log)
    assert osp.isfile(osp.join(run, "visual_prompts", "model-best.pth.tar"))
    again = run_script(env, "dpt/main.sh", "synth_shapes", "1", trainer, "micro_vit")  # the rerun rule
    assert open(osp.join(run, "log.txt"), encoding="utf-8").read() == log, again[-1500:]


def test_eval_sh_reloads_the_trained_prompts(env):
    run = osp.join(env["OUTPUT"], "synth_shapes", "VLP_CLIP_CAVPT", "micro_vit_1shots", "seed1")
    if not osp.isfile(osp.join(run, "log.txt")):
        run_script(env, "dpt/main.sh", "synth_shapes", "1", "VLP_CLIP_CAVPT", "micro_vit")
    trained = final_accuracy(open(osp.join(run, "log.txt"), encoding="utf-8").read())
    out = run_script(env, "dpt/eval.sh", "synth_shapes", "1", "VLP_CLIP_CAVPT", "micro_vit")
    assert re.search(rf"^\* accuracy: {re.escape(trained)}0?% \+- 0\.00%$", out, re.M), (trained, out[-1500:])
    log = open(osp.join(env["OUTPUT"], "evaluation", "synth_shapes", "VLP_CLIP_CAVPT", "micro_vit_1shots",
                        "seed1", "log.txt"), encoding="utf-8").read()
    for name in ("visual_prompts", "cavpt", "prompt_learner"):
        assert f"to {name} (epoch=" in log


@pytest.mark.slow  # end to end over many runs: with the learning tests
def test_table1_sh_builds_the_table(env):
    """Zero-shot, the VPT-shallow config and the variants main.sh already trained (skipped)."""
    out = run_script(dict(env, DATASETS="synth_shapes", SHOTS="1", CFG="micro_vit"), "dpt/table1.sh", timeout=1200)
    table = out[out.index("DPT Table 1"):]
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("|")}
    for label in ("Zero-Shot CLIP", "VPT-CLIP-Shallow", "VPT-CLIP-Deep", "VPT-CLIP-CAVPT", "VLP-CLIP-Deep",
                  "VLP-CLIP-CAVPT"):
        cell = rows[label].split("|")[2].strip()  # synth_shapes (one dataset: no average column)
        assert re.fullmatch(r"(\*\*)?\d+\.\d\d(\*\*)?( ± \d+\.\d\d)?", cell), (label, table)
    assert osp.isfile(osp.join(env["OUTPUT"], "synth_shapes", "VPT_CLIP", "micro_vit_shallow_1shots", "seed1",
                               "log.txt"))


def test_main_sh_runs_what_the_sweep_expands(tmp_path):
    opts = ("OPTIM.LR", "0.5", "TRAINER.FEATURES.CACHE_DIR", "/f")
    for trainer in TRAINERS:
        grid = Grid([Method(trainer, "micro_vit")], ["synth_shapes"], shots=[2], seeds=[1, 2], opts=opts,
                    data="/kit/data", output=str(tmp_path / "output"))
        expected = [list(r.argv) for r in expand(grid, registered_trainers(), cwd=REPO)]
        got = script_runs(tmp_path, "dpt/main.sh", "synth_shapes", "2", trainer, "micro_vit", *opts, SEEDS="1 2")
        assert got == expected, trainer


def _opts(argv: list) -> dict:
    return dict(zip(argv[argv.index("--output-dir") + 2::2], argv[argv.index("--output-dir") + 3::2]))


def test_ablation_scripts_run_the_papers_settings(tmp_path):
    """Table 2: with and without the CAVPT loss; Table 3: K_T below the number of classes and all."""
    env = dict(DATASETS="synth_shapes synth_textures", SHOTS="2", CFG="micro_vit", SEEDS="1")
    runs = script_runs(tmp_path, "dpt/ablation_loss.sh", **env)
    folders = [osp.relpath(r[r.index("--output-dir") + 1], str(tmp_path / "output")) for r in runs]
    assert folders == [f"{d}/VPT_CLIP_CAVPT/micro_vit{tag}_2shots/seed1" for d in ("synth_shapes", "synth_textures")
                       for tag in ("", "_noloss")]
    assert [_opts(r).get("TRAINER.DPT.CAVPT.LOSS") for r in runs] == [None, "none"] * 2
    runs = script_runs(tmp_path, "dpt/ablation_topk.sh", TOPKS="5 10 20", **env)
    got = [(osp.relpath(r[r.index("--output-dir") + 1], str(tmp_path / "output")), _opts(r)["TRAINER.DPT.CAVPT.TOPK"])
           for r in runs]
    assert got == [("synth_shapes/VPT_CLIP_CAVPT/micro_vit_topk5_2shots/seed1", "5"),
                   ("synth_textures/VPT_CLIP_CAVPT/micro_vit_topk5_2shots/seed1", "5"),
                   ("synth_textures/VPT_CLIP_CAVPT/micro_vit_topk10_2shots/seed1", "10"),  # not synth_shapes (10 classes)
                   ("synth_shapes/VPT_CLIP_CAVPT/micro_vit_topkfull_2shots/seed1", "0"),
                   ("synth_textures/VPT_CLIP_CAVPT/micro_vit_topkfull_2shots/seed1", "0")]
