"""Checkpoint layout, round trip, weights-only loading and legacy (pickled-object) files."""

from __future__ import annotations

import os
import os.path as osp

import pytest
import torch

from fsclip.engine.checkpoint import (load_checkpoint, load_pretrained_weights, resume_from_checkpoint,
                                      save_checkpoint)


def _state(model, epoch=3, val_result=None):
    return {"state_dict": model.state_dict(), "epoch": epoch, "optimizer": None,
            "scheduler": None, "val_result": val_result}


def test_layout_pointer_file_and_module_prefix_stripped(tmp_path):
    model = torch.nn.DataParallel(torch.nn.Linear(3, 2))
    path = save_checkpoint(_state(model), str(tmp_path / "prompt_learner"))
    assert osp.basename(path) == "model.pth.tar-3"
    assert (tmp_path / "prompt_learner" / "checkpoint").read_text() == "model.pth.tar-3\n"
    ckpt = torch.load(path, weights_only=True)  # plain torch can read it without our loader
    assert set(ckpt) == {"state_dict", "epoch", "optimizer", "scheduler", "val_result"}
    assert set(ckpt["state_dict"]) == {"weight", "bias"}
    assert not [f for f in os.listdir(tmp_path / "prompt_learner") if f.startswith(".tmp")]


def test_is_best_copies_and_custom_name(tmp_path):
    model = torch.nn.Linear(3, 2)
    save_checkpoint(_state(model), str(tmp_path), is_best=True)
    assert (tmp_path / "model-best.pth.tar").exists()
    save_checkpoint(_state(model, val_result=81.5), str(tmp_path), model_name="model-best.pth.tar")
    assert load_checkpoint(str(tmp_path / "model-best.pth.tar"))["val_result"] == 81.5


def test_resume_restores_weights_optimizer_and_epoch(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    save_checkpoint({"state_dict": model.state_dict(), "epoch": 7, "optimizer": opt.state_dict(),
                     "scheduler": None, "val_result": None}, str(tmp_path))
    fresh = torch.nn.Linear(3, 2)
    fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    assert resume_from_checkpoint(str(tmp_path), fresh, fresh_opt) == 7
    assert torch.equal(fresh.weight, model.weight)
    assert fresh_opt.state_dict()["state"].keys() == opt.state_dict()["state"].keys()


class LegacySchedulerObject:
    """Like Dassl's warmup successor: an arbitrary object pickled inside a checkpoint."""

    def __init__(self):
        self.last_epoch = 4


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_legacy_checkpoint_with_pickled_objects_loads_weights_without_running_code(tmp_path, capsys):
    model = torch.nn.Linear(3, 2)
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pth.tar-5"
    torch.save({"state_dict": model.state_dict(), "epoch": 5, "optimizer": None,
                "scheduler": {"successor": LegacySchedulerObject(), "evil": Evil(str(marker))},
                "val_result": None}, str(path))
    with pytest.raises(Exception):
        torch.load(str(path), weights_only=True)
    ckpt = load_checkpoint(str(path))
    assert torch.equal(ckpt["state_dict"]["weight"], model.weight)
    assert ckpt["epoch"] == 5
    assert not marker.exists(), "a callable from the file was executed"
    assert "placeholder" in repr(ckpt["scheduler"]["successor"])
    assert "replaced by inert placeholders" in capsys.readouterr().out


def test_missing_and_corrupt_files_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="No checkpoint file"):
        load_checkpoint(str(tmp_path / "nope.pth"))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="bad.pth"):
        load_checkpoint(str(bad))


def test_load_pretrained_weights_takes_matching_keys_only(tmp_path, capsys):
    src = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    save_checkpoint(_state(src), str(tmp_path))
    dst = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 5))
    before = dst[1].weight.clone()
    load_pretrained_weights(dst, str(tmp_path / "model.pth.tar-3"))
    assert torch.equal(dst[0].weight, src[0].weight)
    assert torch.equal(dst[1].weight, before)
    assert "Layers discarded" in capsys.readouterr().out
