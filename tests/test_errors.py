"""train.py's failure behaviour: every error is one ``ERROR:`` line in the terminal and in log.txt,
exit code 2 for bad input (1 for a bug), a traceback only with FSCLIP_DEBUG=1, and nothing written
before (few-shot split files, feature-cache entries, earlier logs) is touched.

The runs use a tiny CLIP on the toy dataset (conftest), in this process through ``fsclip.cli.main``
(one test goes through ``python train.py`` for the real exit code and stderr).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import os.path as osp
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO, make_toy_tree
from fsclip.cli import main
from fsclip.clip.tiny import build_tiny_clip, save_tiny_clip
from fsclip.runs import config_path_for_log

PLUGIN = '''
"""Trainers that fail on purpose, after writing few-shot splits and feature-cache entries."""
from yacs.config import CfgNode as CN
from fsclip.backend import TRAINER_REGISTRY
from fsclip.errors import UserFacingError
from fsclip.trainers.tip_adapter import TipAdapter


class AllSettingsDiverged(UserFacingError):
    """Stands in for the search's error when every grid setting diverged."""


@TRAINER_REGISTRY.register()
class FailingTip(TipAdapter):
    @classmethod
    def extend_cfg(cls, cfg):
        super().extend_cfg(cfg)
        if "FAIL" not in cfg.TRAINER:
            cfg.TRAINER.FAIL = CN()
            cfg.TRAINER.FAIL.HOW = "diverged"

    def fit(self):
        self.features("train")  # stored in the feature cache first
        how = self.cfg.TRAINER.FAIL.HOW
        if how == "diverged":
            raise AllSettingsDiverged("every setting of TRAINER.TIP.LR diverged (loss NaN); lower it")
        if how == "bug":
            raise RuntimeError("boom in fit")
        if how == "interrupt":
            raise KeyboardInterrupt
'''


def file_hashes(*roots: str) -> dict:
    out = {}
    for root in roots:
        for path in glob.glob(osp.join(root, "**", "*"), recursive=True):
            if osp.isfile(path) and not path.endswith(".lock"):
                with open(path, "rb") as f:
                    out[path] = hashlib.sha256(f.read()).hexdigest()
    return out


def read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def assert_index_grew(old: dict, path: str) -> None:
    new = read_json(path)
    for part in ("entries", "shards"):
        assert {k: new[part].get(k) for k in old[part]} == old[part], f"{path}: {part} changed"


class World:
    """A toy dataset, tiny CLIP weights, a feature cache and a finished TipAdapter run."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.root = osp.join(base, "data")
        make_toy_tree(self.root)
        self.weights = save_tiny_clip(build_tiny_clip("RN", image_resolution=64), osp.join(base, "tiny.pt"))
        self.cache = osp.join(base, "cache")
        self.out = osp.join(base, "out")
        self.plugin = osp.join(base, "failing_trainers.py")
        with open(self.plugin, "w") as f:
            f.write(PLUGIN)

    def argv(self, trainer: str = "TipAdapter", *opts: str, out: str = "", flags=()) -> list:
        return ["--plugins", self.plugin, "--root", self.root, "--trainer", trainer, "--seed", "1",
                "--output-dir", out or self.out, *flags,
                "DATASET.NAME", "ToyImages", "DATASET.NUM_SHOTS", "2", "MODEL.BACKBONE.NAME", self.weights,
                "INPUT.SIZE", "(64, 64)", "DATALOADER.NUM_WORKERS", "0", "USE_CUDA", "False",
                "TRAINER.FEATURES.CACHE_DIR", self.cache, "TRAINER.FEATURES.TRAIN_VIEWS", "2",
                "TRAINER.FEATURES.PROMPTS", "single", "TRAINER.TIP.SEARCH_STEP", "[4, 2]", *opts]

    def written(self) -> dict:
        """Everything on disk now (data with split_fewshot JSONs, cache, earlier runs)."""
        return file_hashes(self.root, self.cache, self.out)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = World(str(tmp_path_factory.mktemp("errors")))
    assert main(w.argv()) == 0  # a clean run: split JSON, cache entries, log.txt, checkpoint
    return w


def fail(world, argv, capsys, code=2):
    """Run train.py's main on ``argv``; check the one ERROR line, the exit code, the log and that
    nothing written before changed. Returns (ERROR line, log path or None)."""
    before = world.written()
    before_indexes = {p: read_json(p) for p in before if osp.basename(p) == "index.json"}
    logs_before = set(glob.glob(osp.join(world.out, "log.txt*")))
    assert main(argv) == code
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    errors = [l for l in lines if l.startswith("ERROR: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], captured.out[-3000:]
    assert "Traceback" not in captured.out + captured.err
    after = world.written()
    changed = [p for p in before if after.get(p) != before[p]]
    # a run may add cache entries (index.json grows); every earlier entry must stay as it was
    assert all(osp.basename(p) == "index.json" for p in changed), f"files changed: {changed}"
    for path in changed:
        assert_index_grew(before_indexes[path], path)
    new_logs = set(glob.glob(osp.join(world.out, "log.txt*"))) - logs_before
    records = {config_path_for_log(p) for p in new_logs}  # a run's config, recorded next to its log
    assert set(after) - set(before) <= new_logs | records | set(glob.glob(osp.join(world.cache, "**"), recursive=True))
    log = None
    if new_logs:
        (log,) = new_logs
        with open(log) as f:
            assert f.read().splitlines()[-1] == errors[0]
    return errors[0], log


def test_unknown_trainer_and_dataset_say_do_you_mean(world, capsys):
    line, log = fail(world, world.argv("TipAdaptr"), capsys)
    assert 'Unknown trainer "TipAdaptr"' in line and 'Do you mean "TipAdapter"?' in line and log
    assert osp.basename(log).startswith("log.txt-")  # the finished run's log.txt is kept
    line, log = fail(world, world.argv("TipAdapter", "DATASET.NAME", "ToyImage"), capsys)
    assert 'Unknown dataset "ToyImage"' in line and 'Do you mean "ToyImages"?' in line and log


def test_config_error_before_the_log_opens_still_reaches_log_txt(world, capsys):
    line, log = fail(world, world.argv("TipAdapter", "OPTIM.LRR", "0.1"), capsys)
    assert "Invalid command-line option" in line and 'Do you mean "OPTIM.LR"?' in line
    assert log is not None  # the run had not opened its log when the merge failed


def test_empty_split_names_dataset_split_and_images_needed(world, capsys, tmp_path):
    make_toy_tree(str(tmp_path), n_test=0)
    argv = world.argv("TipAdapter", "DATASET.ROOT", str(tmp_path))
    line, log = fail(world, argv, capsys)
    assert "ToyImages" in line and "test split has no images" in line and "1 test image per class" in line
    assert log


def test_val_split_empty_for_a_method_that_chooses_on_val(world, capsys, tmp_path):
    make_toy_tree(str(tmp_path), n_val=0)
    line, log = fail(world, world.argv("TipAdapter", "DATASET.ROOT", str(tmp_path)), capsys)
    assert "ToyImages" in line and "val split has no images" in line and "TipAdapter chooses" in line
    assert "min(NUM_SHOTS, 4) = 2" in line and log


def make_custom(root: str, sizes: dict) -> None:
    from PIL import Image

    for cname, n in sizes.items():
        os.makedirs(osp.join(root, "mine", cname), exist_ok=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (10 * i, 80, 160)).save(osp.join(root, "mine", cname, f"{i}.png"))


def test_custom_dataset_too_small_says_how_many_images_per_class(world, capsys, tmp_path):
    make_custom(str(tmp_path), {"cat": 2, "dog": 2, "owl": 1})
    argv = world.argv("TipAdapter", "DATASET.NAME", "Custom", "DATASET.ROOT", str(tmp_path),
                      "DATASET.CUSTOM_DIR", "mine")
    line, log = fail(world, argv, capsys)
    assert "at least 4 images" in line and "cat (2)" in line and "owl (1)" in line and log
    # a train/ + test/ layout whose test/ holds no class folder: an empty test split
    make_custom(str(tmp_path / "split"), {"cat": 3, "dog": 3})
    os.rename(tmp_path / "split" / "mine", tmp_path / "split" / "train")
    os.makedirs(tmp_path / "split" / "test")
    argv = world.argv("TipAdapter", "DATASET.NAME", "Custom", "DATASET.ROOT", str(tmp_path),
                      "DATASET.CUSTOM_DIR", "split")
    line, log = fail(world, argv, capsys)
    assert "Custom" in line and "test split has no images" in line and log


def test_output_dir_or_cache_dir_that_is_a_file(world, capsys, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    line, log = fail(world, world.argv("TipAdapter", out=str(afile)), capsys)
    assert f"The output folder (--output-dir, OUTPUT_DIR) {afile} is a file" in line
    assert log is None and afile.read_text() == "not a folder"  # no log can go there
    line, log = fail(world, world.argv("TipAdapter", out=str(afile / "run")), capsys)
    assert f"is under the file {afile}" in line
    line, log = fail(world, world.argv("TipAdapter", "TRAINER.FEATURES.CACHE_DIR", str(afile)), capsys)
    assert "TRAINER.FEATURES.CACHE_DIR" in line and "is a file" in line and log


def test_eval_only_without_model_dir(world, capsys):
    line, log = fail(world, world.argv("TipAdapter", flags=["--eval-only"]), capsys)
    assert "--eval-only needs --model-dir" in line and "cache_adapter" in line and log
    # nothing learned: zero-shot CLIP evaluates without a model folder
    assert main(world.argv("ZeroshotCLIP", flags=["--eval-only"], out=osp.join(world.base, "zs"))) == 0
    assert "* accuracy:" in capsys.readouterr().out
    # and with it, the trained run reloads
    assert main(world.argv("TipAdapter", flags=["--eval-only", "--model-dir", world.out],
                           out=osp.join(world.base, "eval"))) == 0


def test_user_facing_error_raised_while_training_reaches_the_log(world, capsys):
    """E.g. the search's error when every setting diverged: raised deep inside fit()."""
    line, log = fail(world, world.argv("FailingTip"), capsys)
    assert line == "ERROR: every setting of TRAINER.TIP.LR diverged (loss NaN); lower it" and log


def test_unexpected_exception_is_one_line_exit_1_traceback_with_debug(world, capsys, monkeypatch):
    line, log = fail(world, world.argv("FailingTip", "TRAINER.FAIL.HOW", "bug"), capsys, code=1)
    assert line == ("ERROR: unexpected RuntimeError: boom in fit "
                    "(rerun with FSCLIP_DEBUG=1 for the traceback)") and log
    monkeypatch.setenv("FSCLIP_DEBUG", "1")
    assert main(world.argv("FailingTip", "TRAINER.FAIL.HOW", "bug")) == 1
    out = capsys.readouterr().out
    assert "Traceback (most recent call last)" in out and 'raise RuntimeError("boom in fit")' in out
    assert out.splitlines()[-1] == "ERROR: unexpected RuntimeError: boom in fit"


def test_ctrl_c_is_one_line_and_exit_130(world, capsys):
    stdout = sys.stdout
    line, log = fail(world, world.argv("FailingTip", "TRAINER.FAIL.HOW", "interrupt"), capsys, code=130)
    assert line.startswith("ERROR: interrupted while training (FailingTip) (Ctrl-C)") and log
    assert sys.stdout is stdout


def test_train_py_exit_code_and_no_traceback(world):
    env = dict(os.environ, PYTHONPATH=osp.join(REPO, "tests") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    plugin = osp.join(world.base, "toy_dataset.py")
    with open(plugin, "w") as f:
        f.write(textwrap.dedent("""
            import conftest  # registers ToyImages
        """))
    argv = world.argv("TipAdaptr")
    argv[argv.index("--plugins") + 1:argv.index("--plugins") + 1] = [plugin]
    proc = subprocess.run([sys.executable, osp.join(REPO, "train.py"), *argv], capture_output=True,
                          text=True, timeout=300, env=env, cwd=world.base)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stdout.splitlines()[-1].startswith('ERROR: Unknown trainer "TipAdaptr"')
    assert "Traceback" not in proc.stderr


def test_shots_beyond_a_class_warn_and_the_log_records_the_shots_used(world, capsys, tmp_path):
    """Not an error: CoOp's rule keeps every image of a short class; the run's log says so."""
    make_custom(str(tmp_path), {"cat": 20, "dog": 20, "owl": 5})  # owl: 2 train images (0.5 x 5)
    out = str(tmp_path / "run")
    argv = world.argv("ZeroshotCLIP", "DATASET.NAME", "Custom", "DATASET.ROOT", str(tmp_path),
                      "DATASET.CUSTOM_DIR", "mine", "DATASET.NUM_SHOTS", "4", out=out)
    assert main(argv) == 0
    with open(osp.join(out, "log.txt")) as f:
        log = f.read().splitlines()
    assert ("Warning: DATASET.NUM_SHOTS is 4 but 1 of 3 classes has fewer training images, so all of "
            "theirs are used: owl (2)") in log
    assert "Shots per class: 4 x 2 classes; 2: owl" in log


def test_linear_head_code_rules_with_no_fitting_batch_size_is_one_error(world, capsys):
    """TRAINER.WISEFT.RULES code (the cross-modal reference's rules) stops when no batch fits."""
    line, log = fail(world, world.argv("WiSEFT", "TRAINER.WISEFT.RULES", "code", "TRAINER.WISEFT.BATCH_SIZES", "[64]"),
                     capsys)
    assert line.startswith("ERROR: TRAINER.WISEFT.BATCH_SIZES [64]: none fits under TRAINER.WISEFT.RULES code")
    assert "< the 12 training rows" in line and "set TRAINER.WISEFT.RULES fsclip" in line and log
