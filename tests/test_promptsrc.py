"""PromptSRC: the self-regulating losses (Eq. 3-5) and GPA weights (Eq. 7) against their formulas
on small tensors, the trainer's total loss (Eq. 6) from its parts, GPA over real epochs, the
checkpoint holding the aggregate, the text-side start at the template, errors, configs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import method_cfg, set_opts, trainer_configs

import fsclip.datasets  # noqa: F401
import fsclip.trainers  # noqa: F401
from fsclip.adapt.prompts import prompt_classifier
from fsclip.backend import build_trainer
from fsclip.clip.tiny import build_tiny_clip, save_tiny_clip
from fsclip.errors import ConfigError
from fsclip.trainers.promptsrc import PromptSRC, gpa_weights, scl_l1, scl_logits


def test_l1_consistency_is_the_mean_absolute_difference():
    a = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
    b = torch.tensor([[0.8, 0.6], [0.0, 1.0]])
    assert scl_l1(a, b).item() == pytest.approx((0.2 + 0.2 + 1.0 + 1.0) / 4)
    assert scl_l1(a, a).item() == 0.0


def test_logit_kl_by_hand_and_as_the_official_kl_div():
    torch.manual_seed(0)
    logits, zs = torch.randn(3, 5) * 4, torch.randn(3, 5) * 4
    total = 0.0
    for b in range(3):
        p = torch.softmax(zs[b], 0)
        q = torch.softmax(logits[b], 0)
        total += sum(float(p[k] * math.log(p[k] / q[k])) for k in range(5))  # KL(p_zs || p~)
    assert scl_logits(logits, zs).item() == pytest.approx(total / 15, rel=1e-5)
    official = F.kl_div(F.log_softmax(logits, 1), F.log_softmax(zs, 1), reduction="sum", log_target=True) / 15
    assert scl_logits(logits, zs).item() == pytest.approx(official.item(), rel=1e-5)
    assert abs(scl_logits(zs, zs).item()) < 1e-7
    assert scl_logits(logits, zs).item() != pytest.approx(scl_logits(zs, logits).item(), rel=1e-3)  # direction


def test_gpa_weights_are_the_normalised_gaussian_over_epochs():
    w = gpa_weights(5, 3.0, 1.0)
    dens = [math.exp(-0.5 * (e - 3.0) ** 2) for e in range(1, 6)]
    assert w == pytest.approx([d / sum(dens) for d in dens])
    assert sum(w) == pytest.approx(1.0) and max(range(5), key=w.__getitem__) == 2  # epoch 3 = mu
    assert gpa_weights(20, 15, 1)[14] > 0.39 and gpa_weights(20, 15, 1)[0] < 1e-20  # base-to-new: epochs 13-17
    with pytest.raises(ConfigError, match="GPA_STD"):
        gpa_weights(5, 3.0, 0.0)


# ------------------------------------------------------------------ the trainer on ToyImages
@pytest.fixture(scope="module")
def tiny_vit_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_vit_src") / "tiny.pt"
    return save_tiny_clip(build_tiny_clip("ViT", image_resolution=64, text_layers=2), str(path))


def make_cfg(toy_root, tmp_path, weights, **opts):
    cfg = method_cfg(toy_root, tmp_path, weights, "PromptSRC", 2, "single")
    cfg.DATALOADER.TRAIN_X.BATCH_SIZE = 4
    cfg.OPTIM.NAME = "sgd"
    cfg.OPTIM.LR = 0.1
    cfg.OPTIM.MAX_EPOCH = 3
    cfg.TEST.FINAL_MODEL = "last_step"
    c = cfg.TRAINER.PROMPTSRC
    c.PREC, c.PROMPT_DEPTH_TEXT, c.PROMPT_DEPTH_VISION, c.GPA_MEAN, c.GPA_STD = "fp32", 2, 2, 2.0, 1.0
    return set_opts(cfg, **opts)


def test_total_loss_is_eq6_from_its_parts(toy_root, tmp_path, tiny_vit_path):
    trainer = build_trainer(make_cfg(toy_root, tmp_path, tiny_vit_path))
    assert torch.allclose(trainer.reg_text, prompt_classifier(trainer.clip_model, "ensemble", "ToyImages",
                                                              trainer.classnames))
    batch = next(iter(trainer.train_loader_x))
    images, labels = batch["img"], batch["label"]
    frozen = trainer.batch_frozen(batch, "train")  # f(x) of the same fixed views
    assert torch.allclose(frozen, F.normalize(trainer.clip_model.encode_image(images).float(), dim=-1), atol=2e-3)
    loss, logits, summary = trainer.compute_loss(images, labels, frozen)
    text = F.normalize(trainer.text_features().float(), dim=-1)
    image = F.normalize(trainer.image_features(images).float(), dim=-1)
    zs = trainer.logit_scale * frozen @ trainer.reg_text.t()
    want = (F.cross_entropy(logits, labels) + 10 * (image - frozen).abs().mean()
            + 25 * (text - trainer.reg_text).abs().mean()
            + F.kl_div(logits.log_softmax(1), zs.log_softmax(1), reduction="sum", log_target=True) / logits.numel())
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert summary["l1_image"] > 0 and summary["l1_text"] > 0 and summary["kl"] > 0


def test_text_side_starts_at_the_template_without_deep_text_prompts(toy_root, tmp_path, tiny_vit_path):
    trainer = build_trainer(make_cfg(toy_root, tmp_path, tiny_vit_path, **{"TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT": 1}))
    text = F.normalize(trainer.text_features().float(), dim=-1)
    assert torch.allclose(text, trainer.text_weights, atol=1e-5)  # "a photo of a {}."


def test_gpa_deploys_and_saves_the_gaussian_weighted_prompts(toy_root, tmp_path, tiny_vit_path, monkeypatch):
    cfg = make_cfg(toy_root, tmp_path, tiny_vit_path)
    trainer = build_trainer(cfg)
    per_epoch = []
    original = PromptSRC.after_epoch

    def record(self):
        per_epoch.append({k: v.detach().clone() for k, v in self.prompt_learner.state_dict().items()})
        original(self)

    monkeypatch.setattr(PromptSRC, "after_epoch", record)
    trainer.train()
    w = gpa_weights(3, 2.0, 1.0)
    final = trainer.prompt_learner.state_dict()
    for key in final:
        want = sum(wi * s[key] for wi, s in zip(w, per_epoch))
        assert torch.allclose(final[key], want, atol=1e-6), key
        assert not torch.allclose(final[key], per_epoch[-1][key], atol=1e-4)  # not the last epoch's
    fresh = build_trainer(cfg)
    fresh.load_model(cfg.OUTPUT_DIR)  # the checkpoint of the last epoch holds the aggregate
    assert all(torch.equal(fresh.prompt_learner.state_dict()[k], final[k]) for k in final)


def test_gpa_with_best_val_is_refused(toy_root, tmp_path, tiny_vit_path):
    with pytest.raises(ConfigError, match="last_step"):
        build_trainer(make_cfg(toy_root, tmp_path, tiny_vit_path, **{"TEST.FINAL_MODEL": "best_val"}))


def test_promptsrc_configs_merge_with_the_official_defaults():
    loaded = trainer_configs("PromptSRC")
    b2n = loaded["PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml"]
    c = b2n.TRAINER.PROMPTSRC
    assert (c.N_CTX_TEXT, c.N_CTX_VISION, c.PROMPT_DEPTH_TEXT, c.PROMPT_DEPTH_VISION, c.TEXT_LOSS_WEIGHT,
            c.IMAGE_LOSS_WEIGHT, c.GPA_MEAN, c.GPA_STD) == (4, 4, 9, 9, 25.0, 10.0, 15.0, 1.0)
    assert (b2n.OPTIM.LR, b2n.OPTIM.MAX_EPOCH, b2n.DATALOADER.TRAIN_X.BATCH_SIZE) == (0.0025, 20, 4)
    fs = loaded["PromptSRC/vit_b16_c2_ep50_batch4_4+4ctx_few_shot.yaml"]
    assert (fs.OPTIM.MAX_EPOCH, fs.TRAINER.PROMPTSRC.GPA_MEAN, fs.TRAINER.PROMPTSRC.GPA_STD) == (50, 30.0, 30.0)
    xd = loaded["PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets.yaml"]
    assert (xd.TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT, xd.TRAINER.PROMPTSRC.GPA_MEAN, xd.TRAINER.PROMPTSRC.GPA_STD) \
        == (3, 6.0, 10.0)
    assert all(cfg.TEST.FINAL_MODEL == "last_step" for cfg in loaded.values())
