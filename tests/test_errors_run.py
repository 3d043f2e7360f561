"""train.py's run-level faults (issue #22, items 7, 12, 13, 14, 21): two runs into one output
folder, a tampered checkpoint, an output folder that cannot be written (read-only, not creatable,
name too long, disk full), a feature cache on a disk that refuses writes, and Ctrl-C.

Runs go through ``fsclip.cli.main`` in this process with a tiny pixel probe on the toy dataset
(conftest): no CLIP, a second or less each. Disk-full cases patch the write that fails; read-only
cases chmod a folder, or (as root, who may write anyway) patch ``os.access``/``os.makedirs``.
"""

from __future__ import annotations

import errno
import glob
import io
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

import fsclip.engine.logger as logger_mod
import fsclip.engine.utils as utils_mod
import fsclip.runlock as runlock
from conftest import make_toy_tree
from fsclip.adapt.cache import FeatureCache
from fsclip.cli import main
from fsclip.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from fsclip.engine.utils import atomic_torch_save
from fsclip.errors import UserFacingError

PLUGIN = '''
"""A pixel probe that can stop itself with a KeyboardInterrupt (stands in for Ctrl-C)."""
import torch.nn as nn, torch.nn.functional as F
from yacs.config import CfgNode as CN
from fsclip.backend import TRAINER_REGISTRY, TrainerX
from fsclip.engine import build_optimizer, build_lr_scheduler

@TRAINER_REGISTRY.register()
class RunFaultProbe(TrainerX):
    @classmethod
    def extend_cfg(cls, cfg):
        if "RUNPROBE" not in cfg.TRAINER:
            cfg.TRAINER.RUNPROBE = CN()
            cfg.TRAINER.RUNPROBE.INTERRUPT_AT = -1  # global batch; -2: while building the model

    def build_model(self):
        if self.cfg.TRAINER.RUNPROBE.INTERRUPT_AT == -2:
            raise KeyboardInterrupt
        self.model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, self.num_classes))
        self.optim = build_optimizer(self.model, self.cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, self.cfg.OPTIM)
        self.register_model("model", self.model, self.optim, self.sched)

    def forward_backward(self, batch):
        if self.epoch * self.num_batches + self.batch_idx == self.cfg.TRAINER.RUNPROBE.INTERRUPT_AT:
            raise KeyboardInterrupt
        x, y, _ = self.parse_batch_train(batch)
        loss = F.cross_entropy(self.model(x), y)
        self.model_backward_and_update(loss)
        return {"loss": loss.item()}
'''


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    base = tmp_path_factory.mktemp("errors_run")
    make_toy_tree(str(base / "data"))
    (base / "probe.py").write_text(PLUGIN)
    return base


def argv(toy, out, *opts, flags=()):
    return ["--plugins", str(toy / "probe.py"), "--root", str(toy / "data"), "--trainer", "RunFaultProbe",
            "--seed", "1", "--output-dir", str(out), *flags, "DATASET.NAME", "ToyImages",
            "DATASET.NUM_SHOTS", "2", "INPUT.SIZE", "(16, 16)", "INPUT.TRANSFORMS", '["normalize"]',
            "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TRAIN_X.BATCH_SIZE", "2", "OPTIM.NAME", "sgd",
            "OPTIM.LR", "0.1", "OPTIM.MAX_EPOCH", "2", "USE_CUDA", "False", *opts]


def run_main(args, capsys, code=2):
    """main(args) must exit ``code`` with one ERROR line, the last, and no traceback."""
    assert main(args) == code
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    errors = [line for line in lines if line.startswith("ERROR: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], captured.out[-3000:]
    assert "Traceback" not in captured.out + captured.err
    return errors[0]


def logs(folder) -> list:
    return sorted(glob.glob(osp.join(str(folder), "log.txt*")))


def last_line(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()[-1]


# ------------------------------------------------------------------ item 7: one run per folder
HOLDER = ("import sys, fsclip.runlock as r; r.lock_output_dir(sys.argv[1]); print('locked', flush=True); "
          "sys.stdin.read()")


def test_second_run_into_a_held_output_folder_is_refused_naming_the_holder(toy, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "log.txt").write_text("the first run's log\n")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert runlock.holder(str(out)) == holder.pid
        line = run_main(argv(toy, out), capsys)
        assert line.startswith(f"ERROR: The output folder {out} is in use by another run (pid {holder.pid}")
        assert "--output-dir" in line
        # the other run's folder is untouched: its log as it was, no log of the refused run
        assert logs(out) == [str(out / "log.txt")] and (out / "log.txt").read_text() == "the first run's log\n"
    finally:
        holder.communicate("", timeout=30)
    # the holder has ended: the folder is free again, and the lock is gone after the run
    assert main(argv(toy, out)) == 0
    assert not (out / runlock.LOCK_FILE).exists() and runlock.holder(str(out)) is None


def test_stale_lock_of_a_dead_pid_is_taken_over_where_flock_is_missing(tmp_path, monkeypatch):
    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(runlock.fcntl, "flock", no_flock)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / runlock.LOCK_FILE).write_text(f"{dead.pid} {runlock.socket.gethostname()}\n")
    lock = runlock.lock_output_dir(str(tmp_path))
    assert (tmp_path / runlock.LOCK_FILE).read_text().split()[0] == str(os.getpid())
    lock.release()
    assert not (tmp_path / runlock.LOCK_FILE).exists()
    # a live holder (this test's parent process) is respected
    (tmp_path / runlock.LOCK_FILE).write_text(f"{os.getppid()} {runlock.socket.gethostname()}\n")
    with pytest.raises(runlock.RunLockedError, match=f"pid {os.getppid()}"):
        runlock.lock_output_dir(str(tmp_path))


# ------------------------------------------------------------------ item 12: tampered checkpoints
class Tampered:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


class UnknownResult:
    """An object where a number belongs."""


def test_tampered_checkpoint_is_one_line_that_says_refused_for_safety(toy, tmp_path, capsys):
    out = tmp_path / "train"
    assert main(argv(toy, out)) == 0
    path = out / "model" / "model.pth.tar-2"
    good = load_checkpoint(str(path))
    torch.save({**good, "val_result": Tampered()}, str(path))
    line = run_main(argv(toy, tmp_path / "eval", flags=["--eval-only", "--model-dir", str(out),
                                                        "--load-epoch", "2"]), capsys)
    assert line == (f"ERROR: Checkpoint {path} is not a plain checkpoint (it asks to call or build "
                    f"posix.system); it is refused for safety and nothing in it was run. Load only "
                    f"checkpoints written by train.py (fsclip), Dassl or CoOp")
    assert last_line(logs(tmp_path / "eval")[0]) == line


def test_unknown_object_in_val_result_is_refused_not_a_placeholder(tmp_path):
    model = torch.nn.Linear(3, 2)
    path = tmp_path / "model-best.pth.tar"
    torch.save({"state_dict": model.state_dict(), "epoch": 1, "optimizer": None, "scheduler": None,
                "val_result": UnknownResult()}, str(path))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(str(path))
    message = str(info.value)
    assert isinstance(info.value, UserFacingError) and "\n" not in message
    assert f"Checkpoint {path} is not a plain checkpoint ('val_result' holds pickled objects" in message
    assert "UnknownResult" in message and "weights_only" not in message
    # the same object under "scheduler" (Dassl's legacy files) is still replaced by a placeholder
    torch.save({"state_dict": model.state_dict(), "epoch": 1, "optimizer": None,
                "scheduler": {"successor": UnknownResult()}, "val_result": 80.0}, str(path))
    assert load_checkpoint(str(path))["val_result"] == 80.0


# ------------------------------------------------------------------ item 13: the output folder
def test_disk_full_writing_the_checkpoint_is_one_line(toy, tmp_path, capsys, monkeypatch):
    def full(obj, f, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    out = tmp_path / "run"
    line = run_main(argv(toy, out), capsys)
    target = out / "model" / "model.pth.tar-2"
    assert line == (f"ERROR: disk full writing {target}: free space on that disk, or pass another "
                    f"--output-dir, and rerun")
    assert last_line(str(out / "log.txt")) == line
    assert not glob.glob(str(out / "model" / ".tmp-*")) and not target.exists()


def test_torch_zip_writer_failure_on_a_full_disk_is_disk_full(tmp_path, monkeypatch):
    def zip_fail(obj, f, *a, **k):
        open(f, "wb").write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0 "
                           "PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(torch, "save", zip_fail)
    monkeypatch.setattr(utils_mod, "free_bytes", lambda path: 0)
    with pytest.raises(UserFacingError, match=f"^disk full writing {tmp_path / 'm.pth'}: "):
        atomic_torch_save({"a": 1}, str(tmp_path / "m.pth"))
    assert os.listdir(tmp_path) == []
    monkeypatch.setattr(utils_mod, "free_bytes", lambda path: 50 << 30)  # not a full disk: torch's error
    with pytest.raises(RuntimeError, match="PytorchStreamWriter"):
        atomic_torch_save({"a": 1}, str(tmp_path / "m.pth"))


class FullFile:
    """A log file on a disk that takes ``room`` more characters."""

    def __init__(self, f, room: int) -> None:
        self.f, self.room = f, room

    def write(self, text: str) -> int:
        if len(text) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(text)
        return self.f.write(text)

    def __getattr__(self, name):
        return getattr(self.f, name)


@pytest.mark.parametrize("room", [0, 3000])
def test_disk_full_writing_log_txt_leaves_no_empty_log(toy, tmp_path, capsys, monkeypatch, room):
    real_open = open
    monkeypatch.setattr(logger_mod, "open", lambda *a, **k: FullFile(real_open(*a, **k), room), raising=False)
    out = tmp_path / "run"
    line = run_main(argv(toy, out), capsys)
    assert line.startswith(f"ERROR: disk full writing {out / 'log.txt'}: free space on that disk")
    if room == 0:
        assert logs(out) == []  # no empty log.txt (nor a second one for the error line)
    else:
        assert logs(out) == [str(out / "log.txt")] and (out / "log.txt").stat().st_size > 0


def test_disk_full_on_the_error_line_itself_prints_it_once(tmp_path, monkeypatch):
    from fsclip.cli import report_error

    console = io.StringIO()
    log = logger_mod.Logger(str(tmp_path / "log.txt"), console=console)
    log.file = FullFile(log.file, room=0)
    monkeypatch.setattr(sys, "stdout", log)
    report_error(ValueError("x"), "the run failed", str(tmp_path))
    monkeypatch.undo()
    assert console.getvalue() == "ERROR: the run failed\n" and logs(tmp_path) == []


def test_zero_bytes_free_is_refused_before_the_log_opens(toy, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(utils_mod, "free_bytes", lambda path: 0)
    out = tmp_path / "run"
    line = run_main(argv(toy, out), capsys)
    assert line.startswith(f"ERROR: disk full writing {out / 'log.txt'}: ")
    assert logs(out) == []


def test_read_only_or_uncreatable_output_folder_is_refused_up_front(toy, tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:  # root writes anyway: pretend the permission is missing
        real_access, real_makedirs = os.access, os.makedirs
        monkeypatch.setattr(os, "access", lambda p, mode, **k: False if str(p).startswith(str(ro))
                            else real_access(p, mode, **k))

        def makedirs(p, *a, **k):
            if str(p).startswith(str(ro / "sub")):
                raise PermissionError(errno.EACCES, "Permission denied", str(p))
            return real_makedirs(p, *a, **k)

        monkeypatch.setattr(os, "makedirs", makedirs)
    else:
        ro.chmod(0o555)
    try:
        line = run_main(argv(toy, ro), capsys)
        assert line == (f"ERROR: The output folder (--output-dir, OUTPUT_DIR) {ro} is not writable "
                        f"(permission denied): pass a folder you can write to")
        line = run_main(argv(toy, ro / "sub"), capsys)
        assert line == (f"ERROR: The output folder (--output-dir, OUTPUT_DIR) {ro / 'sub'} cannot be "
                        f"created (permission denied): pass a folder you can write to")
        assert os.listdir(ro) == []
    finally:
        ro.chmod(0o755)
    long = tmp_path / ("x" * 300)
    line = run_main(argv(toy, long), capsys)
    assert line.startswith(f"ERROR: The output folder (--output-dir, OUTPUT_DIR) {long}: the name is "
                           f"too long for the file system") and line.endswith("pass a shorter path")


# ------------------------------------------------------------------ item 14: the feature cache
def _compute(paths):
    return torch.stack([torch.full((2, 3), float(len(p))) for p in paths])


def test_feature_cache_on_a_full_disk_carries_on_from_memory(tmp_path, capsys, monkeypatch):
    def full(obj, f, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    cache = FeatureCache(str(tmp_path / "cache"), 1 << 30)
    paths = [str(tmp_path / f"img{i}.png") for i in range(3)]
    feats = cache.get({"s": 1}, paths, _compute, label="train")
    assert torch.equal(feats, _compute(paths))
    out = capsys.readouterr().out
    assert "Note: the feature cache cannot be written in" in out and "(disk full)" in out
    assert "TRAINER.FEATURES.CACHE_DIR" in out
    shards = glob.glob(str(tmp_path / "cache" / "*" / "shards" / "*"))
    assert shards == [] and not glob.glob(str(tmp_path / "cache" / "*" / "index.json"))
    cache.get({"s": 1}, paths, _compute, label="val")  # no second attempt, no second note
    assert "cannot be written" not in capsys.readouterr().out and cache.computed == 6


def test_feature_cache_on_a_read_only_disk_carries_on_from_memory(tmp_path, capsys, monkeypatch):
    import fsclip.adapt.cache as cache_mod

    def read_only(path, *a, **k):
        raise OSError(errno.EROFS, "Read-only file system", path)

    monkeypatch.setattr(cache_mod, "open", read_only, raising=False)  # the lock files cannot be made
    cache = FeatureCache(str(tmp_path / "home" / ".cache"), 1 << 30)
    paths = [str(tmp_path / "a.png")]
    assert torch.equal(cache.get({"s": 2}, paths, _compute, label="test"), _compute(paths))
    out = capsys.readouterr().out
    assert "(read-only file system)" in out and "TRAINER.FEATURES.CACHE_DIR" in out


# ------------------------------------------------------------------ item 21: Ctrl-C
def test_ctrl_c_mid_run_is_one_line_naming_the_step_exit_130(toy, tmp_path, capsys):
    out = tmp_path / "run"
    line = run_main(argv(toy, out, "TRAINER.RUNPROBE.INTERRUPT_AT", "4"), capsys, code=130)
    assert line == ("ERROR: interrupted at epoch 2/2, batch 2/3 (RunFaultProbe) (Ctrl-C); nothing "
                    "written is lost: rerun the same command to redo the run")
    assert last_line(str(out / "log.txt")) == line
    assert not (out / runlock.LOCK_FILE).exists() and runlock.holder(str(out)) is None
    line = run_main(argv(toy, out, "TRAINER.RUNPROBE.INTERRUPT_AT", "-2"), capsys, code=130)
    assert line.startswith("ERROR: interrupted while building RunFaultProbe (data and model) (Ctrl-C)")


def test_the_rerun_rule_leaves_a_running_runs_log_alone(tmp_path, capsys):
    """Item 7 through the scripts and the sweep: an unfinished log of a run that still holds its
    folder is not set aside as crashed (that renamed a running run's log)."""
    from fsclip import runs
    from fsclip.sweep.execute import execute
    from fsclip.sweep.grid import Run

    out = tmp_path / "run"
    out.mkdir()
    (out / "log.txt").write_text("a run still going\n")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert runs.main(["start", str(out), "train"]) == 2
        assert f"ERROR: The run in {out} is still going (pid {holder.pid}" in capsys.readouterr().out
        assert runs.main(["prepare", str(out)]) == 2
        run = Run("CoOp", "toy", 1, 1, "run", ("--help",), str(tmp_path))
        outcome = execute(run)
        assert not outcome.ok and outcome.error.startswith("ERROR: The run in")
        assert sorted(os.listdir(out)) == ["log.txt", "run.lock"]
        assert (out / "log.txt").read_text() == "a run still going\n"
    finally:
        holder.communicate("", timeout=30)
    assert runs.main(["start", str(out), "train"]) == 0  # ended: the unfinished log is set aside
    assert not (out / "log.txt").exists()
