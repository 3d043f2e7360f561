"""GDA's and ProKeR's scripts end to end on the offline kit (real train.py runs): each main.sh
(1 seed, 1 shot), its val choice logged, the test set evaluated and the seeds summarised."""

from __future__ import annotations

import os
import os.path as osp
import re
import sys

import pytest
from conftest import run_script

from fsclip.clip.loader import kit_model_names

pytestmark = pytest.mark.skipif("MicroRN" not in kit_model_names(), reason="kit weights missing")

METHODS = [("gda", "GDA", "alpha="), ("proker", "ProKeR", "beta=")]
ACC = re.compile(r"^\* accuracy: ([\d.]+)%$", re.M)


@pytest.fixture(scope="module")
def env(tmp_path_factory, kit_root, kit_cache):
    # the session's kit data and feature cache: generated and extracted once for the suite
    base = tmp_path_factory.mktemp("scripts_closed_form")
    return dict(os.environ, DATA=kit_root, OUTPUT=str(base / "output"), PYTHON=sys.executable,
                SEEDS="1", FSCLIP_SYNTH_WORKERS="1", FEATURES=kit_cache)


@pytest.mark.parametrize("method,trainer,chosen", METHODS)
def test_main_sh_trains_tests_and_summarises(env, method, trainer, chosen):
    out = run_script(env, f"{method}/main.sh", "synth_shapes", "1", "micro_rn",
                     "TRAINER.FEATURES.CACHE_DIR", env["FEATURES"])
    assert re.search(r"^\* accuracy: [\d.]+% \+- [\d.]+%$", out, re.M), out[-1500:]
    log = open(osp.join(env["OUTPUT"], "synth_shapes", trainer, "micro_rn_1shots", "seed1", "log.txt"),
               encoding="utf-8").read()
    choice = log.split(f"Chosen on val for {trainer}: ")[1].splitlines()[0]
    assert chosen in choice and "Finish training" in log and ACC.search(log.split("Finish training")[1])
