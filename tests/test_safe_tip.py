"""SAFE / SAFE-A / Tip-Adapter(-F): equation parity, cached == uncached, the test-split guard."""

from __future__ import annotations

from conftest import method_cfg, set_opts

import os.path as osp

import pytest
import torch
import torch.nn.functional as F

import fsclip.datasets  # noqa: F401
import fsclip.trainers  # noqa: F401
from fsclip.adapt.heads import trunk_forward
from fsclip.adapt.tip import CacheAdapter, cache_keys_from_views, tip_logits
from fsclip.adapt.trainer import EarlyTestAccessError
from fsclip.backend import build_trainer
from fsclip.clip.text import text_classifier
from fsclip.clip.tiny import build_tiny_clip, save_tiny_clip


@pytest.fixture(scope="module", params=["RN", "ViT"])
def tiny_path(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(f"tiny_{request.param}")
    return save_tiny_clip(build_tiny_clip(request.param, image_resolution=64), str(d / "tiny.pt"))


def make_cfg(toy_root, tmp_path, weights, trainer, **opts):
    cfg = method_cfg(toy_root, tmp_path, weights, trainer, 2, "single")
    cfg.TRAINER.SAFE.ITERS = 10
    cfg.TRAINER.SAFE.EVAL_EVERY = 5
    cfg.TRAINER.SAFE.LRS = [1e-3]
    cfg.TRAINER.SAFE.WDS = [0.0]
    cfg.TRAINER.TIP.EPOCHS = 2
    cfg.TRAINER.TIP.SEARCH_STEP = [8, 4]
    return set_opts(cfg, **opts)


def first_test_batch(trainer):
    batch = next(iter(trainer.test_loader))
    return batch["img"], batch["label"]


def test_safe_with_unchanged_pooling_equals_zero_shot(toy_root, tmp_path, tiny_path):
    """Eq. 3-4 with AttnPool_F = AttnPool_O: normalize((1 + beta) f) = normalize(f)."""
    trainer = build_trainer(make_cfg(toy_root, tmp_path, tiny_path, "SAFE", **{"TRAINER.SAFE.BETA": 0.7}))
    images, _ = first_test_batch(trainer)
    safe = trainer.model_inference(images)
    model = trainer.clip_model
    with torch.no_grad():
        w = text_classifier(model, trainer.classnames, ["a photo of a {}."]).float()
        f = F.normalize(model.encode_image(images).float(), dim=-1)
        zero_shot = model.logit_scale.exp() * f @ w.t()
        blended = 0.7 * trainer.head_o(trunk_forward(model.visual, images)) + \
            trainer.head_f(trunk_forward(model.visual, images))
    assert torch.allclose(blended, 1.7 * model.encode_image(images).float(), atol=1e-4, rtol=1e-4)
    assert torch.allclose(safe, zero_shot, atol=1e-4, rtol=1e-4)


def test_safe_beta_is_applied_at_evaluation(toy_root, tmp_path, tiny_path):
    trainer = build_trainer(make_cfg(toy_root, tmp_path, tiny_path, "SAFE"))
    with torch.no_grad():
        for p in trainer.head_f.parameters():
            p.add_(0.05 * torch.randn_like(p))
    images, _ = first_test_batch(trainer)
    dense = trunk_forward(trainer.visual, images)
    for beta in (0.0, 0.5, 2.0):
        trainer.cfg.defrost()
        trainer.cfg.TRAINER.SAFE.BETA = beta
        expected = trainer.clip_logits(beta * trainer.head_o(dense) + trainer.head_f(dense))
        assert torch.allclose(trainer.model_inference(images), expected, atol=1e-5)


def test_tip_adapter_logits_equal_eq8_by_hand():
    torch.manual_seed(0)
    nk, k, d = 6, 3, 5
    keys = F.normalize(torch.randn(nk, d), dim=-1)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    values = F.one_hot(labels, k).float()
    w = F.normalize(torch.randn(k, d), dim=-1)
    f = F.normalize(torch.randn(4, d), dim=-1)
    alpha, gamma, scale = 1.7, 5.5, 100.0
    by_hand = torch.zeros(4, k)
    for b in range(4):
        for c in range(k):
            by_hand[b, c] = scale * float(f[b] @ w[c])
            for j in range(nk):
                if labels[j] == c:
                    by_hand[b, c] += alpha * torch.exp(torch.tensor(-gamma * (1 - float(f[b] @ keys[j]))))
    assert torch.allclose(tip_logits(f, keys, values, w, scale, alpha, gamma), by_hand, atol=1e-4)
    adapter = CacheAdapter(nk, d, k)
    adapter.set_cache(keys, values)
    adapter.alpha.fill_(alpha)
    adapter.gamma.fill_(gamma)
    assert torch.allclose(adapter(f, w, scale), by_hand, atol=1e-4)


def test_cache_keys_average_raw_views_then_normalise():
    """As Tip-Adapter's official code: mean of the raw view features, then L2-normalised (views
    are not normalised first, which would give [0.707, 0.707] here)."""
    views = torch.tensor([[[3.0, 0.0], [0.0, 2.0]], [[1.0, 1.0], [1.0, 1.0]]])  # two images, two views
    keys = cache_keys_from_views(views)
    assert torch.allclose(keys, torch.tensor([[0.8321, 0.5547], [0.7071, 0.7071]]), atol=1e-4)
    assert torch.allclose(keys, F.normalize(views.mean(dim=1), dim=-1))


@pytest.mark.parametrize("trainer_name", ["SAFE", "SAFE_A", "TipAdapter", "TipAdapterF"])
def test_cached_and_uncached_paths_give_the_same_logits(toy_root, tmp_path, tiny_path, trainer_name):
    cfg = make_cfg(toy_root, tmp_path, tiny_path, trainer_name, **{"TRAINER.FEATURES.DTYPE": "fp32"})
    trainer = build_trainer(cfg)
    trainer.train()
    images, _ = first_test_batch(trainer)
    n = images.shape[0]
    cached = trainer.logits_from_dense(trainer.features("test")[:n, 0])
    uncached = trainer.model_inference(images)
    assert torch.allclose(cached, uncached, atol=1e-4, rtol=1e-4)
    # fp16 storage (the default) changes logits only within fp16 rounding
    cfg16 = make_cfg(toy_root, tmp_path / "fp16", tiny_path, trainer_name)
    t16 = build_trainer(cfg16)
    t16.load_model(cfg.OUTPUT_DIR)
    t16._test_allowed = True
    approx = t16.logits_from_dense(t16.features("test")[:n, 0])
    assert torch.allclose(approx, uncached, atol=0.05 * uncached.abs().max().item() + 1e-3)


def test_test_split_is_never_read_before_final_evaluation(toy_root, tmp_path, tiny_path, monkeypatch):
    import fsclip.adapt.extract as extract

    events = []
    real_read = extract.read_image

    def recording_read(path):
        events.append(("read", path))
        return real_read(path)

    monkeypatch.setattr(extract, "read_image", recording_read)
    trainer = build_trainer(make_cfg(toy_root, tmp_path, tiny_path, "SAFE_A"))
    with pytest.raises(EarlyTestAccessError):
        trainer.features("test")
    real_fit = trainer.fit

    def fit_then_mark():
        real_fit()
        events.append(("fit done", None))

    trainer.fit = fit_then_mark
    evaluated = []
    real_evaluate = trainer.evaluator.evaluate
    trainer.evaluator.evaluate = lambda: evaluated.append(1) or real_evaluate()
    trainer.train()
    test_paths = {d.impath for d in trainer.dm.dataset.test}
    marker = events.index(("fit done", None))
    assert not [p for kind, p in events[:marker] if p in test_paths]
    assert {p for kind, p in events[marker:]} >= test_paths
    assert len(evaluated) == 1, "the test split must be evaluated exactly once per run"


def test_eval_only_reloads_trained_model(toy_root, tmp_path, tiny_path):
    cfg = make_cfg(toy_root, tmp_path, tiny_path, "SAFE_A")
    trainer = build_trainer(cfg)
    trainer.train()
    acc = trainer.test()
    fresh = build_trainer(cfg)
    fresh.load_model(cfg.OUTPUT_DIR)
    assert fresh.test() == pytest.approx(acc)
    assert torch.equal(fresh.adapter.keys, trainer.adapter.keys)
    assert osp.exists(osp.join(cfg.OUTPUT_DIR, "attnpool_f", "model-best.pth.tar"))
