"""Trainer lifecycle, printed lines (byte-for-byte formats log tools parse), checkpoints, resume."""

from __future__ import annotations

from conftest import set_opts

import os
import os.path as osp
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fsclip.backend import BACKEND, TRAINER_REGISTRY, TrainerX, build_trainer
from fsclip.engine.logger import setup_logger
from fsclip.engine.optim import build_lr_scheduler, build_optimizer

CALLS = []

TRAIN_LINE = re.compile(
    r"^epoch \[\d+/\d+\] batch \[\d+/\d+\] time \d+\.\d{3} \(\d+\.\d{3}\) data \d+\.\d{3} \(\d+\.\d{3}\) "
    r"loss \d+\.\d{4} \(\d+\.\d{4}\) acc \d+\.\d{4} \(\d+\.\d{4}\) lr \d\.\d{4}e[-+]\d{2} eta \d+:\d{2}:\d{2}$"
)


if "ToyLinear" not in TRAINER_REGISTRY.registered_names():

    @TRAINER_REGISTRY.register()
    class ToyLinear(TrainerX):
        """A linear classifier on raw pixels that records its lifecycle calls."""

        def check_cfg(self, cfg):
            CALLS.append("check_cfg")

        def build_data_loader(self):
            CALLS.append("build_data_loader")
            super().build_data_loader()

        def build_model(self):
            CALLS.append("build_model")
            self.model = nn.Linear(3 * 16 * 16, self.num_classes)
            self.optim = build_optimizer(self.model, self.cfg.OPTIM)
            self.sched = build_lr_scheduler(self.optim, self.cfg.OPTIM)
            self.register_model("model", self.model, self.optim, self.sched)

        def before_train(self):
            CALLS.append("before_train")
            super().before_train()

        def before_epoch(self):
            CALLS.append("before_epoch")

        def after_epoch(self):
            CALLS.append("after_epoch")
            super().after_epoch()

        def after_train(self):
            CALLS.append("after_train")
            super().after_train()

        def forward_backward(self, batch):
            image, label, domain = self.parse_batch_train(batch)
            assert domain.shape == label.shape  # Dassl's (input, label, domain)
            output = self.model(image.flatten(1))
            loss = F.cross_entropy(output, label)
            self.model_backward_and_update(loss)
            if (self.batch_idx + 1) == self.num_batches:
                self.update_lr()
            acc = (output.argmax(1) == label).float().mean() * 100
            return {"loss": loss.item(), "acc": acc.item()}

        def model_inference(self, image):
            return self.model(image.flatten(1))


def _cfg(toy_cfg, **opts):
    toy_cfg.TRAINER.NAME = "ToyLinear"
    toy_cfg.OPTIM.NAME = "sgd"
    toy_cfg.OPTIM.LR = 0.5
    toy_cfg.OPTIM.MAX_EPOCH = 2
    toy_cfg.OPTIM.LR_SCHEDULER = "cosine"
    toy_cfg.TRAIN.PRINT_FREQ = 100
    return set_opts(toy_cfg, **opts)


def test_lifecycle_order_and_attributes(toy_cfg):
    CALLS.clear()
    cfg = _cfg(toy_cfg)
    trainer = build_trainer(cfg)
    assert CALLS == ["check_cfg", "build_data_loader", "build_model"]
    for attr in ("dm", "lab2cname", "num_classes", "device", "evaluator", "train_loader_x",
                 "val_loader", "test_loader", "epoch", "start_epoch", "max_epoch", "output_dir"):
        assert hasattr(trainer, attr), attr
    assert trainer.num_classes == 3 and trainer.device.type == "cpu"
    trainer.train()
    assert CALLS[3:] == ["before_train", "before_epoch", "after_epoch", "before_epoch", "after_epoch",
                         "after_train"]
    assert trainer.num_batches == len(trainer.train_loader_x) and trainer.batch_idx == trainer.num_batches - 1


def test_printed_lines_match_dassl_formats_and_log_file(toy_cfg, capsys):
    cfg = _cfg(toy_cfg)
    setup_logger(cfg.OUTPUT_DIR)
    trainer = build_trainer(cfg)
    trainer.train()
    out = capsys.readouterr().out
    lines = out.splitlines()
    # Dassl's build lines (cfg.VERBOSE), in its order
    loading = [l for l in lines if l.startswith("Loading ")]
    assert loading[:3] == [f"Loading trainer: {cfg.TRAINER.NAME}", f"Loading dataset: {cfg.DATASET.NAME}",
                           f"Loading evaluator: {cfg.TEST.EVALUATOR}"]
    train_lines = [l for l in lines if l.startswith("epoch [")]
    assert len(train_lines) == 2 * len(trainer.train_loader_x)  # few batches -> every batch printed
    for line in train_lines:
        assert TRAIN_LINE.match(line), line
    i = lines.index("Finish training")
    assert lines[i + 1] == "Deploy the last-epoch model"
    assert lines[i + 2] == "Evaluate on the *test* set"
    assert lines[i + 3] == "=> result"
    total = len(trainer.dm.dataset.test)
    assert lines[i + 4] == f"* total: {total:,}"
    correct = int(re.match(r"\* correct: ([\d,]+)$", lines[i + 5]).group(1).replace(",", ""))
    acc = 100.0 * correct / total
    assert lines[i + 6] == f"* accuracy: {acc:.1f}%"
    assert lines[i + 7] == f"* error: {100 - acc:.1f}%"
    assert re.match(r"^\* macro_f1: \d+\.\d%$", lines[i + 8])
    assert re.match(r"^Elapsed: \d+:\d{2}:\d{2}$", lines[i + 9])
    with open(osp.join(cfg.OUTPUT_DIR, "log.txt")) as f:
        logged = f.read()
    assert "Finish training" in logged and f"* accuracy: {acc:.1f}%" in logged
    # checkpoint layout after the last epoch
    assert (open(osp.join(cfg.OUTPUT_DIR, "model", "checkpoint")).read() == "model.pth.tar-2\n")


def test_existing_log_is_never_overwritten(tmp_path):
    (tmp_path / "log.txt").write_text("old run\n")
    path = setup_logger(str(tmp_path))
    print("new run")
    assert path != str(tmp_path / "log.txt") and path.startswith(str(tmp_path / "log.txt-"))
    assert (tmp_path / "log.txt").read_text() == "old run\n"


def test_best_val_saves_best_and_deploys_it(toy_cfg, capsys):
    cfg = _cfg(toy_cfg, **{"TEST.FINAL_MODEL": "best_val"})
    trainer = build_trainer(cfg)
    trainer.train()
    out = capsys.readouterr().out
    assert out.count("Evaluate on the *val* set") == 2
    assert "Deploy the model with the best val performance" in out
    assert osp.exists(osp.join(cfg.OUTPUT_DIR, "model", "model-best.pth.tar"))
    assert re.search(r"Load .*model-best\.pth\.tar to model \(epoch=\d, val_result=\d+\.\d\)", out)


def test_resume_continues_from_saved_epoch(toy_cfg, capsys):
    cfg = _cfg(toy_cfg, **{"TRAIN.CHECKPOINT_FREQ": 1, "OPTIM.MAX_EPOCH": 1})
    build_trainer(cfg).train()
    cfg.OPTIM.MAX_EPOCH = 3
    trainer = build_trainer(cfg)
    trainer.train()
    out = capsys.readouterr().out
    assert "Found checkpoint at" in out and "Previous epoch: 1" in out
    assert "epoch [2/3]" in out and "epoch [1/3]" not in out


def test_eval_only_loads_epoch_and_gives_same_accuracy(toy_cfg):
    cfg = _cfg(toy_cfg)
    trainer = build_trainer(cfg)
    trainer.train()
    acc = trainer.test()
    fresh = build_trainer(cfg)
    fresh.load_model(cfg.OUTPUT_DIR, epoch=2)
    assert fresh.test() == pytest.approx(acc)
    with pytest.raises(FileNotFoundError, match="--load-epoch"):
        fresh.load_model(cfg.OUTPUT_DIR, epoch=9)


@pytest.mark.skipif(BACKEND != "bundled", reason="Dassl's evaluator saves a numpy matrix, not loadable weights-only")
def test_per_class_result_and_confusion_matrix(toy_cfg, capsys):
    cfg = _cfg(toy_cfg, **{"TEST.PER_CLASS_RESULT": True, "TEST.COMPUTE_CMAT": True})
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    trainer = build_trainer(cfg)
    trainer.test()
    out = capsys.readouterr().out
    assert "* class: 0 (red square)\ttotal: 4" in out
    cmat = torch.load(osp.join(cfg.OUTPUT_DIR, "cmat.pt"), weights_only=True)
    assert cmat.shape == (3, 3) and torch.allclose(cmat.sum(1), torch.ones(3, dtype=cmat.dtype))
