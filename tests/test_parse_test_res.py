"""parse_test_res.py / fsclip.results: CoOp-compatible parsing of run logs."""

from __future__ import annotations

import contextlib
import io
import math
import os
import subprocess
import sys

import pytest

from fsclip.results import (
    RunResult, collect_runs, main, parse_dir, parse_log, report_dir, shots_tables, summarize,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def result_block(acc: float, f1: float = 50.0) -> str:
    return ("Evaluate on the *test* set\n=> result\n* total: 2,465\n* correct: 2,270\n"
            f"* accuracy: {acc:.1f}%\n* error: {100 - acc:.1f}%\n* macro_f1: {f1:.1f}%\n")


def write_log(folder, acc=None, finished=True, eval_only=False, val_acc=None, name="log.txt"):
    """A log shaped like the trainer's: arguments, epochs (with a val result), the final test."""
    os.makedirs(folder, exist_ok=True)
    text = "***************\n** Arguments **\n***************\n"
    text += f"eval_only: {eval_only}\nseed: 1\n"
    if not eval_only:
        text += ("epoch [1/2] batch [5/5] time 0.123 (0.456) data 0.001 (0.050) loss 1.2345 "
                 "(1.3456) acc 62.5000 (55.0000) lr 1.0000e-05 eta 0:01:23\n")
        if val_acc is not None:
            text += "Evaluate on the *val* set\n" + result_block(val_acc)
        if finished:
            text += "Finish training\nDeploy the last-epoch model\n"
    if acc is not None and (finished or eval_only):
        text += result_block(acc) + "Elapsed: 0:01:23\n"
    with open(os.path.join(folder, name), "w") as f:
        f.write(text)


def run_main(argv):
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(argv)
    return code, buffer.getvalue()


def test_parse_log_reads_the_result_after_finish_training(tmp_path):
    write_log(tmp_path / "a", acc=71.3, val_acc=40.0)
    assert parse_log(str(tmp_path / "a" / "log.txt")).value == pytest.approx(71.3)
    assert parse_log(str(tmp_path / "a" / "log.txt"), keyword="macro_f1").value == 50.0
    # an eval-only log has no "Finish training": only --test-log (or auto) reads it
    write_log(tmp_path / "b", acc=65.0, eval_only=True)
    assert parse_log(str(tmp_path / "b" / "log.txt")).value is None
    assert parse_log(str(tmp_path / "b" / "log.txt"), test_log=True).value == 65.0
    assert parse_log(str(tmp_path / "b" / "log.txt"), test_log=None).value == 65.0


def test_crashed_run_is_missing_even_with_a_val_result(tmp_path):
    write_log(tmp_path, acc=None, finished=False, val_acc=40.0)
    result = parse_log(str(tmp_path / "log.txt"))
    assert result.value is None and not result.ok
    assert "Finish training" in result.problem
    # auto mode does not take the validation result of a training log either
    assert parse_log(str(tmp_path / "log.txt"), test_log=None).value is None
    assert "no log.txt" in parse_log(str(tmp_path / "nope" / "log.txt")).problem


def test_summarize_population_std_and_ci95():
    values = [70.0, 72.0, 74.0]
    mean, std = summarize(values)
    assert mean == pytest.approx(72.0)
    assert std == pytest.approx(math.sqrt(8 / 3))  # population std (numpy's default)
    _, ci = summarize(values, ci95=True)
    assert ci == pytest.approx(1.96 * math.sqrt(8 / 3) / math.sqrt(3))
    assert summarize([5.0]) == (5.0, 0.0)
    with pytest.raises(ValueError):
        summarize([])


def test_report_dir_coop_lines_and_missing_runs(tmp_path):
    write_log(tmp_path / "seed1", acc=70.0)
    write_log(tmp_path / "seed2", acc=74.0)
    write_log(tmp_path / "seed3", acc=None, finished=False)  # crashed
    os.makedirs(tmp_path / "seed4")  # crashed before logging
    os.makedirs(tmp_path / ".hidden")
    lines = []
    mean, spread, results = report_dir(str(tmp_path), out=lines.append)
    assert [os.path.basename(os.path.dirname(r.path)) for r in results] == ["seed1", "seed2", "seed3", "seed4"]
    assert mean == pytest.approx(72.0) and spread == pytest.approx(2.0)
    assert f"file: {tmp_path / 'seed1' / 'log.txt'}. accuracy: 70.00%. " in lines
    assert "* accuracy: 72.00% +- 2.00%" in lines
    assert any(line.startswith("MISSING:") and "seed3" in line for line in lines)
    assert any(line.startswith("MISSING:") and "seed4" in line for line in lines)
    assert "* runs: 2 of 4 (2 missing, not in the mean)" in lines


def test_cli_default_ci95_keyword_and_test_log(tmp_path):
    for seed, acc in ((1, 60.0), (2, 62.0)):
        write_log(tmp_path / f"seed{seed}", acc=acc)
    code, out = run_main([str(tmp_path)])
    assert code == 0 and "* accuracy: 61.00% +- 1.00%" in out
    code, out = run_main([str(tmp_path), "--ci95"])
    assert f"* accuracy: 61.00% +- {1.96 / math.sqrt(2):.2f}%" in out
    code, out = run_main([str(tmp_path), "--keyword", "error"])
    assert "* error: 39.00% +- 1.00%" in out
    code, out = run_main([str(tmp_path), "--test-log"])  # the last "=> result" block counts
    assert "* accuracy: 61.00% +- 1.00%" in out
    evaluated = tmp_path / "evalonly"
    write_log(evaluated / "seed1", acc=50.0, eval_only=True)
    code, out = run_main([str(evaluated)])
    assert code == 1 and "Nothing found" in out
    code, out = run_main([str(evaluated), "--test-log"])
    assert code == 0 and "* accuracy: 50.00% +- 0.00%" in out


def test_cli_strict_and_errors(tmp_path):
    write_log(tmp_path / "seed1", acc=60.0)
    write_log(tmp_path / "seed2", acc=None, finished=False)
    assert run_main([str(tmp_path)])[0] == 0
    assert run_main([str(tmp_path), "--strict"])[0] == 1
    code, out = run_main([str(tmp_path / "absent")])
    assert code == 2 and str(tmp_path / "absent") in out


def test_multi_exp(tmp_path):
    for exp, accs in (("exp_a", (60.0, 62.0)), ("exp_b", (80.0, 80.0))):
        for seed, acc in enumerate(accs, 1):
            write_log(tmp_path / exp / f"seed{seed}", acc=acc)
    os.makedirs(tmp_path / "exp_c" / "seed1")  # nothing finished
    code, out = run_main([str(tmp_path), "--multi-exp"])
    assert code == 0
    assert "Summary of directory: " + str(tmp_path / "exp_a") in out
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert table[0].split("|")[1].strip() == "experiment"
    assert any("exp_a" in row and "61.00" in row and "1.00" in row and "2/2" in row for row in table)
    assert any("exp_c" in row and "missing" in row and "0/1" in row for row in table)
    assert run_main([str(tmp_path), "--multi-exp", "--strict"])[0] == 1
    assert "Average performance\n* accuracy: 70.50%" in out


def make_tree(root):
    base = root / "caltech101"
    for seed, acc in ((1, 90.0), (2, 92.0), (3, 94.0)):
        write_log(base / "CoOp" / "rn50_16shots" / "nctx16" / f"seed{seed}", acc=acc)
    write_log(base / "CoOp" / "rn50_1shots" / "nctx16" / "seed1", acc=80.0)
    write_log(base / "CoOp" / "rn50_1shots" / "nctx16" / "seed2", acc=None, finished=False)
    write_log(base / "ZeroshotCLIP" / "rn50", acc=85.0, eval_only=True)
    # a model folder inside a run is not a run
    os.makedirs(base / "CoOp" / "rn50_16shots" / "nctx16" / "seed1" / "prompt_learner")
    for seed in (1, 2, 3):
        write_log(root / "dtd" / "CoOp" / "rn50_16shots" / "nctx16" / f"seed{seed}", acc=60.0)
    write_log(root / "dtd" / "ZeroshotCLIP" / "rn50", acc=41.0, eval_only=True)


def test_collect_runs_places_runs(tmp_path):
    make_tree(tmp_path)
    runs = {(r.dataset, r.method, r.shots, r.seed): r.result.value for r in collect_runs(str(tmp_path))}
    assert runs[("caltech101", "CoOp/rn50/nctx16", 16, 1)] == 90.0
    assert runs[("caltech101", "CoOp/rn50/nctx16", 1, 2)] is None
    assert runs[("caltech101", "ZeroshotCLIP/rn50", 0, None)] == 85.0
    assert len(runs) == 10
    # a dataset folder as root
    inner = {(r.dataset, r.method, r.shots) for r in collect_runs(str(tmp_path / "dtd"))}
    assert inner == {("dtd", "CoOp/rn50/nctx16", 16), ("dtd", "ZeroshotCLIP/rn50", 0)}


def test_shots_tables(tmp_path):
    make_tree(tmp_path)
    text = shots_tables(collect_runs(str(tmp_path)))
    caltech = text.split("\n\n")[0].splitlines()
    assert caltech[0] == "caltech101: accuracy (%), mean +- std over seeds"
    header = [c.strip() for c in caltech[1].split("|")[1:-1]]
    assert header == ["method", "0 shots", "1 shots", "16 shots"]
    coop = next([c.strip() for c in row.split("|")[1:-1]] for row in caltech if "CoOp" in row)
    assert coop == ["CoOp/rn50/nctx16", "", "80.00 (1/2)", f"92.00 +- {math.sqrt(8 / 3):.2f}"]
    zs = next([c.strip() for c in row.split("|")[1:-1]] for row in caltech if "Zeroshot" in row)
    assert zs == ["ZeroshotCLIP/rn50", "85.00", "", ""]
    average = next(block for block in text.split("\n\n") if block.startswith("Average over 2 datasets"))
    assert "76.00" in average and "63.00" in average  # (92 + 60) / 2 and (85 + 41) / 2
    assert "80.00" not in average  # 1 shot: incomplete in caltech, absent in dtd
    missing = text.split("\n\n")[-1]
    assert missing.startswith("Missing runs") and "rn50_1shots" in missing


def test_table_cli_and_script(tmp_path):
    make_tree(tmp_path)
    code, out = run_main([str(tmp_path), "--table", "--ci95"])
    assert code == 0 and "mean +- ci95 over seeds" in out
    assert run_main([str(tmp_path), "--table", "--strict"])[0] == 1
    script = subprocess.run([sys.executable, os.path.join(REPO, "parse_test_res.py"),
                             str(tmp_path / "caltech101" / "CoOp" / "rn50_16shots" / "nctx16")],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert script.returncode == 0, script.stderr
    assert "* accuracy: 92.00% +- 1.63%" in script.stdout


def test_matches_the_evaluator_output(tmp_path, capsys):
    """The parser reads what the engine's evaluator really prints."""
    import torch

    from fsclip.engine.config import get_cfg_default
    from fsclip.engine.evaluator import Classification

    evaluator = Classification(get_cfg_default())
    evaluator.process(torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]]), torch.tensor([0, 1, 1]))
    print("Finish training")
    evaluator.evaluate()
    os.makedirs(tmp_path / "seed1")
    (tmp_path / "seed1" / "log.txt").write_text(capsys.readouterr().out)
    [result] = parse_dir(str(tmp_path))
    assert isinstance(result, RunResult) and result.value == pytest.approx(66.7)


def test_base2new_reports_base_new_and_harmonic_mean(tmp_path):
    for seed, (b, n) in enumerate([(80.0, 60.0), (82.0, 64.0)], start=1):
        write_log(tmp_path / "base" / f"seed{seed}", acc=b)
        write_log(tmp_path / "new" / f"seed{seed}", acc=n, eval_only=True)
    code, out = run_main([str(tmp_path / "base"), "--base2new", str(tmp_path / "new")])
    assert code == 0
    h = 2 * 81.0 * 62.0 / (81.0 + 62.0)
    assert out.splitlines()[-3:] == ["* base: 81.00%", "* new: 62.00%", f"* H: {h:.2f}%"]
    # a side without results: no H, exit 1
    write_log(tmp_path / "empty" / "seed1", acc=None, finished=False)
    code, out = run_main([str(tmp_path / "base"), "--base2new", str(tmp_path / "empty")])
    assert code == 1 and "* H:" not in out and "no new result" in out
