"""train.py: a user's own trainer file runs end to end; config errors are one clear line."""

from __future__ import annotations

import os.path as osp
import subprocess
import sys
import textwrap

import pytest

from fsclip.cli import build_parser, setup_cfg
from fsclip.errors import ConfigError

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))

USER_TRAINER = '''
"""A user's trainer in a file of their own, registered in a few lines."""
import torch.nn as nn, torch.nn.functional as F
from yacs.config import CfgNode as CN
from fsclip.backend import TRAINER_REGISTRY, TrainerX
from fsclip.engine import build_optimizer, build_lr_scheduler

@TRAINER_REGISTRY.register()
class MyPixelProbe(TrainerX):
    @classmethod
    def extend_cfg(cls, cfg):
        cfg.TRAINER.MYPROBE = CN(); cfg.TRAINER.MYPROBE.HIDDEN = 8

    def build_model(self):
        h = self.cfg.TRAINER.MYPROBE.HIDDEN
        self.model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, h), nn.ReLU(), nn.Linear(h, self.num_classes))
        self.optim = build_optimizer(self.model, self.cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, self.cfg.OPTIM)
        self.register_model("model", self.model, self.optim, self.sched)

    def forward_backward(self, batch):
        x, y, _ = self.parse_batch_train(batch)  # input, label, domain (as in Dassl)
        loss = F.cross_entropy(self.model(x), y)
        self.model_backward_and_update(loss)
        if self.batch_idx + 1 == self.num_batches:
            self.update_lr()
        return {"loss": loss.item()}
'''

TOY_DATASET = '''
import sys
sys.path.insert(0, {tests!r})
import conftest  # registers ToyImages
'''


def _write(tmp_path):
    (tmp_path / "my_trainer.py").write_text(USER_TRAINER)
    (tmp_path / "toy_dataset.py").write_text(TOY_DATASET.format(tests=osp.join(REPO, "tests")))
    (tmp_path / "method.yaml").write_text(textwrap.dedent("""
        INPUT:
          SIZE: (16, 16)
          TRANSFORMS: ["normalize"]
        DATALOADER:
          NUM_WORKERS: 0
          TRAIN_X:
            BATCH_SIZE: 4
        OPTIM:
          NAME: sgd
          LR: 0.1
          MAX_EPOCH: 2
        TRAINER:
          MYPROBE:
            HIDDEN: 16
    """))
    (tmp_path / "dataset.yaml").write_text("DATASET:\n  NAME: ToyImages\n")


def _train(tmp_path, *extra, root=None):
    args = [sys.executable, osp.join(REPO, "train.py"), "--root", root or str(tmp_path),
            "--trainer", "MyPixelProbe", "--seed", "1",
            "--plugins", str(tmp_path / "toy_dataset.py"), str(tmp_path / "my_trainer.py"),
            "--dataset-config-file", str(tmp_path / "dataset.yaml"),
            "--config-file", str(tmp_path / "method.yaml"), *extra]
    return subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=str(tmp_path))


def test_user_trainer_file_trains_and_evaluates_through_train_py(tmp_path):
    sys.path.insert(0, osp.join(REPO, "tests"))
    from conftest import make_toy_tree

    make_toy_tree(str(tmp_path))
    _write(tmp_path)
    out = tmp_path / "run"
    res = _train(tmp_path, "--output-dir", str(out), "USE_CUDA", "False", "TRAINER.MYPROBE.HIDDEN", "12")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    log = (out / "log.txt").read_text()
    assert "Setting fixed seed: 1" in res.stdout
    assert "HIDDEN: 12" in log  # command-line opts win over the method yaml
    from fsclip.backend import BACKEND  # the log says which engine ran (same environment here)

    assert ("Engine: Dassl (" if BACKEND == "dassl" else "Engine: fsclip's bundled") in log
    assert "Finish training" in log and "* accuracy:" in log.split("Finish training")[1]
    assert (out / "model" / "model.pth.tar-2").exists()
    # eval-only from the saved model reports the same accuracy as the final test
    res2 = _train(tmp_path, "--output-dir", str(tmp_path / "eval"), "--eval-only", "--model-dir", str(out),
                  "--load-epoch", "2", "USE_CUDA", "False", "TRAINER.MYPROBE.HIDDEN", "12")
    assert res2.returncode == 0, res2.stderr[-2000:]
    acc_final = log.split("Finish training")[1].split("* accuracy: ")[1].split("%")[0]
    assert f"* accuracy: {acc_final}%" in res2.stdout


def test_config_errors_are_one_actionable_line(tmp_path):
    _write(tmp_path)
    (tmp_path / "method.yaml").write_text("OPTIM:\n  LRR: 0.1\n")
    res = _train(tmp_path)
    assert res.returncode == 2
    assert "ERROR: Method config file" in res.stdout and "LRR" in res.stdout
    assert "Traceback" not in res.stderr


def test_setup_cfg_merge_order_and_seed_flag(tmp_path):
    ds = tmp_path / "d.yaml"
    ds.write_text("DATASET:\n  NAME: X\n  NUM_SHOTS: 2\n")
    m = tmp_path / "m.yaml"
    m.write_text("DATASET:\n  NUM_SHOTS: 4\n")
    args = build_parser().parse_args(["--dataset-config-file", str(ds), "--config-file", str(m),
                                      "--seed", "3", "--root", "/data", "DATASET.NUM_SHOTS", "8"])
    cfg = setup_cfg(args)
    assert (cfg.DATASET.NAME, cfg.DATASET.NUM_SHOTS, cfg.SEED, cfg.DATASET.ROOT) == ("X", 8, 3, "/data")
    assert cfg.is_frozen()
    with pytest.raises(Exception, match="KEY VALUE"):
        setup_cfg(build_parser().parse_args(["OPTIM.LR"]))


@pytest.mark.parametrize("shots,opts,expected", [
    (1, [], 50), (2, [], 100), (4, [], 100), (8, [], 200), (16, [], 200), (3, [], 100), (32, [], 200),
    (4, ["OPTIM.MAX_EPOCH", "7"], 7),  # explicit on the command line wins
    (0, [], 10),  # no few-shot sampling: MAX_EPOCH unchanged
])
def test_epochs_by_shots_sets_max_epoch_after_merging(tmp_path, shots, opts, expected):
    cfg_file = tmp_path / "m.yaml"
    cfg_file.write_text("OPTIM:\n  MAX_EPOCH: 10\n  EPOCHS_BY_SHOTS: [[1, 50], [2, 100], [4, 100], [8, 200], [16, 200]]\n")
    args = build_parser().parse_args(["--config-file", str(cfg_file), "DATASET.NUM_SHOTS", str(shots), *opts])
    assert setup_cfg(args).OPTIM.MAX_EPOCH == expected


def test_epochs_by_shots_is_off_by_default_and_rejects_a_malformed_table():
    assert setup_cfg(build_parser().parse_args(["DATASET.NUM_SHOTS", "4"])).OPTIM.MAX_EPOCH == 10
    with pytest.raises(ConfigError, match="EPOCHS_BY_SHOTS"):
        setup_cfg(build_parser().parse_args(["DATASET.NUM_SHOTS", "4", "OPTIM.EPOCHS_BY_SHOTS", "[[1]]"]))
