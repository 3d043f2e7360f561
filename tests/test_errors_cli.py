"""Bad command lines, config values, config and plugin files, sweep grids and run records (issue
22): each is refused with one ``ERROR:`` line naming the key, flag, file or line, or noted.

Everything runs in this process on the merged config alone (nothing is trained).
"""

from __future__ import annotations

import os.path as osp

import pytest

from fsclip.checks import value_problems
from fsclip.cli import build_parser, load_plugins, main, setup_cfg
from fsclip.engine.data.base import Datum, load_or_create_fewshot
from fsclip.errors import ConfigError
from fsclip.runs import LOG_FILE, decide, prepare, run_state
from fsclip.sweep.cli import main as sweep_main


def merged(*argv: str):
    args = build_parser().parse_args(["--trainer", "SAFE", *argv])
    load_plugins(args.plugins)
    return setup_cfg(args)


def refused(*argv: str) -> str:
    with pytest.raises(ConfigError) as err:
        merged(*argv)
    return str(err.value)


# ----------------------------------------------------------------- items 3, 4, 8: config values
@pytest.mark.parametrize("key,value", [
    ("OPTIM.LR", "-0.002"), ("OPTIM.MAX_EPOCH", "0"), ("TRAINER.SAFE.ITERS", "0"),
    ("TRAINER.SAFE.LRS", "[0.001,-0.1]"), ("TRAINER.TIP.LR", "0.0"), ("TRAINER.TIP.EPOCHS", "0"),
    ("TRAINER.CLIP_ADAPTER.EPOCHS", "-5"), ("TRAINER.DPT.TEXT.LR", "0.0"), ("TRAINER.LPPP.EPOCHS", "0"),
    ("TRAINER.LINEAR_PROBE.MAX_ITER", "0"), ("TRAINER.WISEFT.ITERS", "-1"),
    ("TRAINER.CROSSMODAL.WARMUP_LR", "-1e-5"),
])
def test_a_learning_rate_or_a_count_that_cannot_train_is_refused_naming_the_key(key, value):
    msg = refused(key, value)
    assert msg.startswith("Invalid config value: " + key), msg
    assert "must be > 0" in msg or "must be >= 0" in msg


@pytest.mark.parametrize("key", [
    "DATALOADER.TRAIN_X.BATCH_SIZE", "DATALOADER.TEST.BATCH_SIZE", "TRAINER.SAFE.BATCH_SIZE",
    "TRAINER.SAFE.EVAL_EVERY", "TRAINER.CROSSMODAL.EVAL_EVERY", "TRAINER.CALIP.FS.EVAL_EVERY",
    "TRAINER.TIP.BATCH_SIZE", "TRAINER.FEATURES.BATCH_SIZE", "TRAIN.PRINT_FREQ",
])
def test_a_zero_batch_size_or_eval_interval_is_refused_naming_the_key(key):
    msg = refused(key, "0")
    assert f"{key} 0: " in msg and "must be > 0" in msg, msg


def test_several_bad_values_are_one_line_naming_each_and_the_default_of_the_first():
    msg = refused("TRAINER.SAFE.ITERS", "0", "OPTIM.LR", "-1.0")
    assert "OPTIM.LR -1.0: a learning rate must be > 0" in msg
    assert "TRAINER.SAFE.ITERS 0: an iteration count must be > 0" in msg
    assert "OPTIM.LR -1.0: a learning rate must be > 0 (default 0.0003)" in msg and "\n" not in msg
    assert "TRAINER.SAFE.ITERS 0: an iteration count must be > 0 (default 12800)" in msg


def test_keys_where_zero_means_something_and_the_defaults_are_accepted():
    cfg = merged("TRAINER.SAFE.PATIENCE", "0", "TRAINER.CROSSMODAL.WARMUP_ITERS", "0",
                 "TRAINER.CLIP_ADAPTER.WARMUP_EPOCHS", "0", "TRAINER.DPT.GUIDANCE_EPOCHS", "0",
                 "TRAINER.LINEAR_PROBE.SEARCH_STEPS", "0", "TRAIN.CHECKPOINT_FREQ", "0",
                 "TRAINER.PROMPTING.EVAL_FREQ", "0", "TRAINER.CALIP.FS.LRS", "[]",
                 "DATASET.NUM_SHOTS", "0")
    assert value_problems(cfg) == []
    assert refused("TRAINER.CALIP.FS.LRS", "[0.001,0.0]") == (  # a grid: each value (no default: [])
        "Invalid config value: TRAINER.CALIP.FS.LRS [0.001, 0.0] (holds 0.0): a learning-rate grid must "
        "be > 0. Set it in the config file or as KEY VALUE on the command line")
    assert merged().DATASET.NUM_SHOTS == -1  # the default (not few-shot) stays accepted


def test_negative_shots_are_refused_and_zero_shots_note_that_every_image_is_used(capsys):
    assert "DATASET.NUM_SHOTS -3: shots per class must be >= 1 (or 0: every training image)" in \
        refused("DATASET.NUM_SHOTS", "-3")
    train = [Datum(impath=f"/x/{i}.png", label=i % 2, classname=str(i % 2)) for i in range(6)]
    got, _ = load_or_create_fewshot(train, train[:2], 0, 1, "/nonexistent", "/x")
    assert got == train
    assert "DATASET.NUM_SHOTS is 0: all 6 training images used" in capsys.readouterr().out


def test_train_py_prints_the_value_error_as_one_line_in_the_log(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--trainer", "SAFE", "--output-dir", str(out), "TRAINER.SAFE.ITERS", "0"]) == 2
    line = "ERROR: Invalid config value: TRAINER.SAFE.ITERS 0: an iteration count must be > 0"
    assert line in capsys.readouterr().out
    assert line in (out / LOG_FILE).read_text()


# ----------------------------------------------------------------- item 16: YAML syntax
@pytest.mark.parametrize("text,line,hint", [
    ("OPTIM:\n\tLR: 0.1\n", 2, "not tabs"),
    ("OPTIM:\n  LR: 0.1\n  MAX_EPOCH: [1, 2\n", 4, "Fix that line"),
])
def test_a_config_file_with_a_yaml_syntax_error_names_the_file_and_line(tmp_path, text, line, hint):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    msg = refused("--config-file", str(path))
    assert msg.startswith(f"Method config file {path} is not valid YAML at line {line}, column "), msg
    assert hint in msg


# ----------------------------------------------------------------- item 17: flags after opts
@pytest.mark.parametrize("tail", [["--eval-only"], ["--eval-only", "--model-dir", "out/x"],
                                  ["--load-epoch", "5"]])
def test_a_flag_after_the_key_value_options_says_flags_go_first(tail):
    msg = refused("OPTIM.LR", "0.1", *tail)
    assert tail[0] in msg and "flags go before the KEY VALUE options" in msg, msg


# ----------------------------------------------------------------- item 18: plugin files
@pytest.mark.parametrize("body,line,what", [
    ("x = 1\ndef broken(:\n    pass\n", 2, "SyntaxError"),
    ("import os\n\nraise RuntimeError('no weights here')\n", 3, "RuntimeError: no weights here"),
    ("import os\nimport fsclip_no_such_dependency\n", 2, "ModuleNotFoundError"),
])
def test_a_plugin_that_fails_to_import_is_one_error_naming_its_file_and_line(tmp_path, body, line, what):
    path = tmp_path / f"plugin_{line}_{what[:5].lower()}.py"
    path.write_text(body)
    with pytest.raises(ConfigError) as err:
        load_plugins([str(path)])
    msg = str(err.value)
    assert f"Plugin file {path} failed to import (line {line}: {what}" in msg, msg
    path.write_text("X = 1\n")  # fixed: the next load imports it (no half-imported module kept)
    load_plugins([str(path)])


# ----------------------------------------------------------------- item 19: sweep input
def test_sweep_shots_that_are_not_numbers_are_one_error(tmp_path, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text("methods: [SAFE]\ndatasets: [synth_shapes]\nshots: [four]\n")
    assert sweep_main([str(grid), "--dry-run"]) == 2
    out = capsys.readouterr().out
    assert f"ERROR: The shots of {grid} must be whole numbers, got 'four'" in out
    grid.write_text("methods: [{trainer: SAFE, shots: [1, 2.5]}]\ndatasets: [synth_shapes]\n")
    assert sweep_main([str(grid), "--dry-run"]) == 2
    assert "ERROR: The shots of method SAFE must be whole numbers, got 2.5" in capsys.readouterr().out


@pytest.mark.parametrize("flag,value", [("--workers", "-2"), ("--threads", "-1"), ("--time", "0")])
def test_sweep_negative_worker_counts_are_one_error(flag, value, capsys):
    assert sweep_main(["--methods", "SAFE", "--datasets", "synth_shapes", "--dry-run", flag, value]) == 2
    assert f"ERROR: {flag} must be" in capsys.readouterr().out


# ----------------------------------------------------------------- item 20: damaged record
@pytest.mark.parametrize("record", ["OPTIM: [unclosed\n  LR: 1\n", "\xff\xfe garbage", "just text\n"])
def test_a_finished_run_with_an_unreadable_config_is_redone_saying_so(tmp_path, record):
    run = tmp_path / "seed1"
    run.mkdir()
    (run / LOG_FILE).write_text("Finish training\n=> result\n* accuracy: 50.00%\n")
    (run / "config.yaml").write_bytes(record.encode("latin-1"))
    state = run_state(str(run), "train", {"OPTIM.LR": 0.1})
    assert state.state == "unreadable" and decide(state) == "run"
    line = prepare(state)
    assert line.startswith(f"Redoing finished run in {run}: its recorded config.yaml is unreadable (")
    assert "finished before runs recorded" not in line
    kept = sorted(p.name for p in run.iterdir())
    assert len(kept) == 2 and all(".unreadable-" in k for k in kept), kept
    assert osp.isfile(run / kept[0]) and not (run / LOG_FILE).exists()


def test_the_sweep_names_the_runs_it_redoes_for_an_unreadable_config(tmp_path):
    from fsclip.sweep.cli import report_unreadable
    from fsclip.sweep.grid import Run

    runs = [Run("SAFE", "toy", 1, s, f"out/toy/SAFE/rn50_1shots/seed{s}", (), str(tmp_path)) for s in (1, 2)]
    for run, record in zip(runs, ("OPTIM: [\n", "OPTIM:\n  LR: 0.1\n")):
        folder = tmp_path / run.out_dir
        folder.mkdir(parents=True)
        (folder / LOG_FILE).write_text("Finish training\n=> result\n* accuracy: 50.00%\n")
        (folder / "config.yaml").write_text(record)
    lines: list = []
    report_unreadable(runs, str(tmp_path / "out"), out=lines.append)
    assert len(lines) == 1 and lines[0].startswith(
        "1 finished run(s) have an unreadable config.yaml and are redone"), lines
    assert "toy/SAFE/rn50_1shots/seed1: " in lines[0] and "seed2" not in lines[0]
