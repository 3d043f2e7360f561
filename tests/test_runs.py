"""The rerun rule: run folders record their merged config; a finished run is skipped only when
the requested config is the same (fsclip.runs, scripts/common.sh)."""

from __future__ import annotations

import os
import os.path as osp
import re
import subprocess
import sys

import pytest

from fsclip.clip.loader import kit_model_names
from fsclip.runs import (
    RunState, config_diff, config_path_for_log, config_text, decide, default_flat, flat_config,
    model_checkpoints, parse_config_text, read_recorded, requested_config, run_state, set_aside,
)

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
FINISHED = "Finish training\n=> result\n* accuracy: 50.00%\n"


def tip_argv(out: str, *opts: str, root: str = "/data") -> list:
    return ["--root", root, "--seed", "1", "--trainer", "TipAdapter",
            "--dataset-config-file", osp.join(REPO, "configs/datasets/synth_shapes.yaml"),
            "--config-file", osp.join(REPO, "configs/trainers/TipAdapter/micro_rn.yaml"),
            "--output-dir", out, "DATASET.NUM_SHOTS", "1", *opts]


def write_run(folder, log: str = FINISHED, argv=None) -> str:
    os.makedirs(folder, exist_ok=True)
    with open(osp.join(folder, "log.txt"), "w") as f:
        f.write(log)
    if argv is not None:
        cfg, args = requested_config(argv)
        with open(osp.join(folder, "config.yaml"), "w") as f:
            f.write(config_text(cfg, args))
    return str(folder)


def test_recorded_config_equals_the_request_and_reloads_as_a_config_file(tmp_path):
    cfg, args = requested_config(tip_argv(str(tmp_path / "run"), "TRAINER.TIP.LR", "0.01"))
    text = config_text(cfg, args)
    assert parse_config_text(text) == flat_config(cfg, args)
    assert parse_config_text(text)["TRAINER.TIP.LR"] == 0.01
    # the record is a config file: merged again, it gives the same config
    (tmp_path / "config.yaml").write_text(text)
    again, again_args = requested_config(["--config-file", str(tmp_path / "config.yaml")])
    assert flat_config(again, again_args) == flat_config(cfg, args)


def test_diff_lists_changed_keys_and_ignores_locations_workers_and_printing(tmp_path):
    recorded = flat_config(*requested_config(tip_argv(str(tmp_path / "a"))))
    same_elsewhere = flat_config(*requested_config(tip_argv(
        str(tmp_path / "b"), "TRAINER.FEATURES.CACHE_DIR", "/elsewhere", "DATALOADER.NUM_WORKERS", "8",
        "DATALOADER.TEST.BATCH_SIZE", "7", "TRAIN.PRINT_FREQ", "3", "TRAINER.FEATURES.MAX_GB", "1.5",
        "DATASET.FEWSHOT_DIR", "/splits", root="/mnt/other")))
    assert config_diff(recorded, same_elsewhere, default_flat()) == []
    changed = flat_config(*requested_config(tip_argv(str(tmp_path / "a"), "TRAINER.TIP.SEARCH_STEP",
                                                     "[20, 5]", "TRAINER.FEATURES.TRAIN_VIEWS", "2")))
    assert [str(c) for c in config_diff(recorded, changed)] == [
        "TRAINER.FEATURES.TRAIN_VIEWS: 4 -> 2", "TRAINER.TIP.SEARCH_STEP: [50, 10] -> [20, 5]"]


def test_keys_the_run_predates_count_only_when_the_request_moves_them_off_their_default():
    recorded = {"A.X": 1, "GONE": 3}
    defaults = {"A.X": 1, "A.NEW": 0.5}
    assert config_diff(recorded, {"A.X": 1, "A.NEW": 0.5}, defaults) == []
    assert [str(c) for c in config_diff(recorded, {"A.X": 1, "A.NEW": 0.9}, defaults)] == [
        "A.NEW: (not recorded) -> 0.9"]
    # eval-only runs: the model they evaluate counts
    assert [str(c) for c in config_diff({"--model-dir": "/o/a"}, {"--model-dir": "/o/b"})] == [
        '--model-dir: "/o/a" -> "/o/b"']


def test_an_evaluation_of_a_model_trained_again_is_another_run(tmp_path):
    model = tmp_path / "train" / "seed1"
    (model / "model").mkdir(parents=True)
    (model / "log.txt").write_text("log")
    (model / "model" / "model.pth.tar-1").write_bytes(b"weights")
    argv = tip_argv(str(tmp_path / "eval"), root="/d")
    argv[-2:-2] = ["--eval-only", "--model-dir", str(model)]
    before = flat_config(*requested_config(argv))
    assert before["--model-dir checkpoints"] == model_checkpoints(str(model)) != ""
    (model / "log.txt").write_text("another log")  # logs and configs are not the model
    assert flat_config(*requested_config(argv)) == before
    (model / "model" / "model.pth.tar-1").write_bytes(b"new weights")  # trained again
    assert [c.key for c in config_diff(before, flat_config(*requested_config(argv)))] == [
        "--model-dir checkpoints"]


def test_run_states_and_what_each_force_level_does(tmp_path):
    argv = tip_argv(str(tmp_path / "same"))

    def requested():
        return flat_config(*requested_config(argv))

    new = run_state(str(tmp_path / "none"), "train", requested)
    unfinished = run_state(write_run(tmp_path / "crashed", "Finish training\n"), "train", requested)
    unknown = run_state(write_run(tmp_path / "old"), "train", requested)
    same = run_state(write_run(tmp_path / "same", argv=argv), "train", requested, default_flat)
    changed = run_state(write_run(tmp_path / "changed", argv=tip_argv("x", "TRAINER.TIP.LR", "0.5")),
                        "train", requested, default_flat)
    assert [s.state for s in (new, unfinished, unknown, same, changed)] == [
        "new", "unfinished", "unknown", "same", "changed"]
    assert [str(c) for c in changed.changes] == ["TRAINER.TIP.LR: 0.5 -> 0.001"]
    # eval-only logs end with "=> result": a training log without it is not a finished test run
    assert run_state(write_run(tmp_path / "t", "=> result\n* accuracy: 1.0%\n"), "test", None).finished
    assert run_state(write_run(tmp_path / "t2", "* accuracy: 1.0%\n"), "test", None).state == "unfinished"
    table = {force: [decide(s, force) for s in (new, unfinished, unknown, same, changed)]
             for force in ("", "1", "all")}
    assert table == {"": ["run", "run", "skip", "skip", "conflict"],
                     "1": ["run", "run", "run", "skip", "run"],
                     "all": ["run", "run", "run", "run", "run"]}


def test_set_aside_keeps_the_log_with_its_config(tmp_path):
    folder = write_run(tmp_path / "r", argv=tip_argv("x"))
    first = set_aside(folder, "replaced")
    second = set_aside(write_run(folder, "partial\n"), "crashed")
    assert first.startswith("log.txt.replaced-") and second.startswith("log.txt.crashed-")
    names = sorted(os.listdir(folder))
    assert names == sorted([first, second, "config.yaml" + first[len("log.txt"):]])
    assert open(osp.join(folder, first)).read() == FINISHED
    assert read_recorded(folder) is None and set_aside(folder, "crashed") is None
    assert config_path_for_log("/o/log.txt-2024-01-01-10-00-00") == "/o/config.yaml-2024-01-01-10-00-00"
    assert RunState("d", "same").finished and not RunState("d", "unfinished").finished


# ---------------------------------------------------------------------------- main.sh
needs_kit = pytest.mark.skipif("MicroRN" not in kit_model_names(), reason="kit weights missing")


def bash(env: dict, script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", osp.join("scripts", script), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.slow  # end to end over many runs: with the learning tests
@needs_kit
def test_main_sh_skips_a_run_whose_options_changed_and_redoes_it_only_with_force(kit_root, kit_cache, tmp_path):
    env = dict(os.environ, DATA=kit_root, OUTPUT=str(tmp_path / "output"), PYTHON=sys.executable,
               SEEDS="1", FSCLIP_SYNTH_WORKERS="1")
    run = tmp_path / "output" / "synth_shapes" / "TipAdapter" / "micro_rn_1shots" / "seed1"
    args = ("synth_shapes", "1", "micro_rn", "TRAINER.FEATURES.CACHE_DIR", kit_cache)
    first = bash(env, "tip_adapter/main.sh", *args)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    log = (run / "log.txt").read_text()
    assert read_recorded(str(run))["TRAINER.TIP.SEARCH_STEP"] == [50, 10]

    # another cache folder and more loader workers do not change results: skipped, summarised
    moved = bash(env, "tip_adapter/main.sh", *args[:3], "TRAINER.FEATURES.CACHE_DIR", str(tmp_path / "c2"),
                 "DATALOADER.NUM_WORKERS", "2")
    assert moved.returncode == 0 and "skipping" in moved.stdout and "Loading CLIP" not in moved.stdout
    assert "* accuracy:" in moved.stdout

    # changed options: nothing rerun, the differing key and how to rerun are said, no summary
    changed = bash(env, "tip_adapter/main.sh", *args, "TRAINER.TIP.SEARCH_STEP", "[20, 5]")
    assert changed.returncode == 1, changed.stdout[-2000:] + changed.stderr[-2000:]
    out = changed.stdout
    assert f"Results in {run} come from another config" in out
    assert "  TRAINER.TIP.SEARCH_STEP: [50, 10] -> [20, 5]" in out.splitlines()
    assert "CFG_TAG=<name>" in out and "FORCE=1" in out
    assert "Loading CLIP" not in out and "Summary of directory" not in out
    assert re.search(r"^ERROR: 1 run\(s\) in .* hold results of another config", out, re.M)
    assert (run / "log.txt").read_text() == log

    # FORCE=1: redone in place with the new options; the old log and config are kept
    forced = bash(dict(env, FORCE="1"), "tip_adapter/main.sh", *args, "TRAINER.TIP.SEARCH_STEP", "[20, 5]")
    assert forced.returncode == 0, forced.stdout[-2000:] + forced.stderr[-2000:]
    assert "Redoing finished run" in forced.stdout and "Summary of directory" in forced.stdout
    kept = sorted(f for f in os.listdir(run) if ".replaced-" in f)
    assert [f.split(".replaced-")[0] for f in kept] == ["config.yaml", "log.txt"]
    assert (run / kept[1]).read_text() == log
    assert read_recorded(str(run))["TRAINER.TIP.SEARCH_STEP"] == [20, 5]
    assert "Finish training" in (run / "log.txt").read_text()

    # a run finished before configs were recorded: skipped with a note, never redone silently
    (run / "config.yaml").unlink()
    old = bash(env, "tip_adapter/main.sh", *args)
    assert old.returncode == 0 and "cannot be compared" in old.stdout and "Loading CLIP" not in old.stdout
