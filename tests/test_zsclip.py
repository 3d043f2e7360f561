"""Zero-shot CLIP trainers against clip-anytorch's own computation on a tiny model."""

from __future__ import annotations

import pytest
import torch

import fsclip.datasets  # noqa: F401
import fsclip.trainers  # noqa: F401
from fsclip.backend import build_trainer
from fsclip.cli import extend_cfg
from fsclip.clip.compat import import_clip
from fsclip.clip.tiny import build_tiny_clip, save_tiny_clip
from fsclip.engine.config import get_cfg_default


@pytest.fixture(scope="module", params=["RN", "ViT"])
def tiny_path(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(f"zs_{request.param}")
    return save_tiny_clip(build_tiny_clip(request.param, image_resolution=64, seed=3), str(d / "tiny.pt"))


def _trainer(toy_root, tmp_path, weights, name):
    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.DATASET.NAME = "ToyImages"
    cfg.DATASET.ROOT = toy_root
    cfg.TRAINER.NAME = name
    cfg.MODEL.BACKBONE.NAME = weights
    cfg.INPUT.SIZE = (64, 64)
    cfg.INPUT.TRANSFORMS = ("normalize",)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.OUTPUT_DIR = str(tmp_path / name)
    cfg.USE_CUDA = False
    return build_trainer(cfg)


def clip_reference(model, images, classnames, templates):
    """logit_scale * normalize(encode_image) @ normalize(mean of normalized encode_text).T,
    with clip.tokenize's full 77-token context."""
    clip = import_clip()
    with torch.no_grad():
        f = model.encode_image(images)
        f = f / f.norm(dim=-1, keepdim=True)
        rows = []
        for name in classnames:
            t = model.encode_text(clip.tokenize([tpl.format(name) for tpl in templates]))
            t = t / t.norm(dim=-1, keepdim=True)
            t = t.mean(0)
            rows.append(t / t.norm())
        w = torch.stack(rows)
        return model.logit_scale.exp() * f @ w.t()


@pytest.mark.parametrize("name,templates", [("ZeroshotCLIP", ["a photo of a {}."]),
                                            ("ZeroshotCLIP2", ["a photo of a {}.", "a drawing of a {}."])])
def test_zero_shot_logits_equal_clip_reference(toy_root, tmp_path, tiny_path, name, templates):
    trainer = _trainer(toy_root, tmp_path, tiny_path, name)
    images = next(iter(trainer.test_loader))["img"]
    got = trainer.model_inference(images)
    want = clip_reference(trainer.clip_model, images, trainer.dm.dataset.classnames, templates)
    assert got.shape == (images.shape[0], 3)
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)


def test_zero_shot_run_prints_the_parsable_result(toy_root, tmp_path, tiny_path, capsys):
    trainer = _trainer(toy_root, tmp_path, tiny_path, "ZeroshotCLIP")
    trainer.train()
    out = capsys.readouterr().out
    tail = out.split("Finish training")[1]
    assert "=> result" in tail and "* accuracy:" in tail
