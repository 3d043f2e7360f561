"""CoOp, CoCoOp, ProGrad, KgCoOp: equation parity on tiny CLIPs, checkpoints, the protocol."""

from __future__ import annotations

import os
import os.path as osp

import pytest
import torch
import torch.nn.functional as F
from conftest import method_cfg, set_opts

import fsclip.datasets  # noqa: F401
import fsclip.trainers  # noqa: F401
from fsclip.backend import build_trainer
from fsclip.clip.tiny import build_tiny_clip, save_tiny_clip
from fsclip.trainers.kgcoop import kg_penalty
from fsclip.trainers.prograd import prograd_projection


def save_tiny(tmp_path_factory, arch):
    d = tmp_path_factory.mktemp(f"tiny_{arch}")
    model = build_tiny_clip(arch, image_resolution=64, text_width=128, text_layers=2)
    return save_tiny_clip(model, str(d / "tiny.pt"))


@pytest.fixture(scope="module", params=["RN", "ViT"])
def tiny_path(request, tmp_path_factory):
    """Both image encoders, for the parity tests."""
    return save_tiny(tmp_path_factory, request.param)


@pytest.fixture(scope="module")
def rn_path(tmp_path_factory):
    """One model for the protocol tests (the image encoder is not what they test)."""
    return save_tiny(tmp_path_factory, "RN")


def make_cfg(toy_root, tmp_path, weights, trainer, **opts):
    cfg = method_cfg(toy_root, tmp_path, weights, trainer, 2, "single")  # template "a photo of a {}."
    cfg.DATALOADER.TRAIN_X.BATCH_SIZE = 4
    cfg.OPTIM.NAME = "sgd"
    cfg.OPTIM.LR = 0.01
    cfg.OPTIM.MAX_EPOCH = 2
    node = cfg.TRAINER[{"CoOp": "COOP", "CoCoOp": "COCOOP", "ProGrad": "PROGRAD", "KgCoOp": "KGCOOP"}[trainer]]
    node.CTX_INIT = "a photo of a"
    return set_opts(cfg, **opts)


def zero_shot_logits(trainer, images):
    """CLIP's zero-shot logits with the dataset template, computed from images by hand."""
    model = trainer.clip_model
    with torch.no_grad():
        f = F.normalize(model.encode_image(images).float(), dim=-1)
    return model.logit_scale.exp().item() * f @ trainer.text_weights.t()


def test_coop_from_the_template_is_zero_shot_clip_before_any_step(toy_root, tmp_path, tiny_path):
    trainer = build_trainer(make_cfg(toy_root, tmp_path, tiny_path, "CoOp"))
    learner = trainer.prompt_learner
    assert learner.prefix_shared
    images = next(iter(trainer.test_loader))["img"]
    with torch.no_grad():
        torch.testing.assert_close(trainer.class_text_features(), trainer.text_weights, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(trainer.model_inference(images), zero_shot_logits(trainer, images),
                                   rtol=1e-4, atol=1e-4)
        learner.share_prefix = False  # the plain path: the template's prompts, exactly
        torch.testing.assert_close(trainer.class_text_features(), trainer.text_weights, rtol=0, atol=1e-7)


def test_cocoop_with_a_silent_meta_net_is_coop(toy_root, tmp_path, tiny_path):
    """Eq. (4) with h_theta(x) = 0: every image gets CoOp's prompts, so zero-shot CLIP's logits."""
    trainer = build_trainer(make_cfg(toy_root, tmp_path, tiny_path, "CoCoOp"))
    learner = trainer.prompt_learner
    assert [k for k in learner.state_dict()] == ["ctx", "meta_net.linear1.weight", "meta_net.linear1.bias",
                                                 "meta_net.linear2.weight", "meta_net.linear2.bias"]
    images = next(iter(trainer.test_loader))["img"]
    with torch.no_grad():
        learner.meta_net.linear2.weight.zero_()
        learner.meta_net.linear2.bias.zero_()
        torch.testing.assert_close(trainer.model_inference(images), zero_shot_logits(trainer, images),
                                   rtol=1e-4, atol=1e-4)


def test_cocoop_prompts_are_per_image(toy_root, tmp_path, rn_path):
    """A batch's logits are each image's own: image b with its own context v + h(x_b)."""
    trainer = build_trainer(make_cfg(toy_root, tmp_path, rn_path, "CoCoOp"))
    learner = trainer.prompt_learner
    torch.manual_seed(0)
    f = torch.randn(3, trainer.text_weights.shape[1])
    with torch.no_grad():
        batch = trainer.logits(f)
        for b in range(3):
            fb = F.normalize(f[b], dim=0)
            ctx = learner.ctx + learner.meta_net(fb[None])[0]
            w = F.normalize(learner.text_features(trainer.clip_model, ctx).float(), dim=-1)
            torch.testing.assert_close(batch[b], trainer.logit_scale * w @ fb, rtol=1e-5, atol=1e-4)
        assert not torch.allclose(batch[0], batch[1])


# ------------------------------------------------------------------------- ProGrad
def test_prograd_projection_by_hand():
    g_d = torch.tensor([1.0, 0.0])
    # conflicting (dot -1): remove lambda times the component along g_g
    g_g = torch.tensor([-1.0, 1.0])
    torch.testing.assert_close(prograd_projection(g_d, g_g, 1.0), torch.tensor([0.5, 0.5]))
    assert abs(float(prograd_projection(g_d, g_g, 1.0) @ g_g)) < 1e-7  # lambda 1: orthogonal to g_g
    torch.testing.assert_close(prograd_projection(g_d, g_g, 0.8), torch.tensor([0.6, 0.4]))
    # agreeing (dot 1) and orthogonal: unchanged; a zero g_g (student = teacher): unchanged
    for g in (torch.tensor([1.0, 1.0]), torch.tensor([0.0, 3.0]), torch.zeros(2)):
        assert torch.equal(prograd_projection(g_d, g, 1.0), g_d)
    # a matrix parameter is projected as one flattened vector
    a, b = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[-1.0, 0.0], [0.0, 0.0]])
    torch.testing.assert_close(prograd_projection(a, b, 1.0), torch.tensor([[0.0, 0.0], [0.0, 1.0]]))


def test_prograd_step_applies_the_projected_gradient(toy_root, tmp_path, rn_path):
    """One step with plain SGD (lr 1): the context moves by -Eq.(3) of the CE and KL gradients."""
    trainer = build_trainer(make_cfg(toy_root, tmp_path, rn_path, "ProGrad", **{
        "OPTIM.LR": 1.0, "OPTIM.WARMUP_EPOCH": 0, "OPTIM.MOMENTUM": 0.0, "OPTIM.WEIGHT_DECAY": 0.0}))
    ctx = trainer.prompt_learner.ctx
    torch.manual_seed(0)
    with torch.no_grad():
        ctx.add_(0.05 * torch.randn_like(ctx))  # away from the teacher, so the KL gradient is not 0
    f = trainer.global_features("train")[:, 0]
    y = trainer.labels("train")
    logits = trainer.logits(f)
    teacher = trainer.clip_logits(f)
    ce = F.cross_entropy(logits, y)
    kl = (F.softmax(teacher, 1) * (F.log_softmax(teacher, 1) - F.log_softmax(logits, 1))).sum(1).mean()
    g_d, = torch.autograd.grad(ce, ctx, retain_graph=True)
    g_g, = torch.autograd.grad(kl, ctx)
    before = ctx.detach().clone()
    trainer.forward_backward_features(f, y)
    expected = prograd_projection(g_d, g_g, 1.0)
    torch.testing.assert_close(before - ctx.detach(), expected, rtol=1e-4, atol=1e-6)
    assert (g_d.flatten() @ g_g.flatten()) < 0 or torch.equal(expected, g_d)


# -------------------------------------------------------------------------- KgCoOp
def test_kg_penalty_by_hand():
    w = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), dim=-1)
    w0 = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    l2 = ((w - w0) ** 2).sum(1).mean()  # Eq. (6)
    torch.testing.assert_close(kg_penalty(w, w0, "l2"), l2)
    torch.testing.assert_close(kg_penalty(w, w0, "cosine"), l2 / 2)  # unit vectors: the code's half


def test_kgcoop_penalty_is_zero_at_init_and_enters_the_loss(toy_root, tmp_path, rn_path):
    trainer = build_trainer(make_cfg(toy_root, tmp_path, rn_path, "KgCoOp", **{
        "OPTIM.LR": 1.0, "OPTIM.WARMUP_EPOCH": 0, "OPTIM.MOMENTUM": 0.0, "OPTIM.WEIGHT_DECAY": 0.0}))
    with torch.no_grad():
        assert float(kg_penalty(trainer.class_text_features(), trainer.text_weights)) < 1e-10
    ctx = trainer.prompt_learner.ctx
    with torch.no_grad():
        ctx.add_(0.05 * torch.randn_like(ctx))
    f, y = trainer.global_features("train")[:, 0], trainer.labels("train")
    w = trainer.class_text_features()
    loss = F.cross_entropy(trainer.logits(f, w), y) + 8.0 * kg_penalty(w, trainer.text_weights)
    grad, = torch.autograd.grad(loss, ctx)
    before = ctx.detach().clone()
    summary = trainer.forward_backward_features(f, y)
    assert summary["kg_loss"] > 0
    torch.testing.assert_close(before - ctx.detach(), grad, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- protocol, checkpoints
@pytest.mark.parametrize("trainer_name", ["CoOp", "CoCoOp", "ProGrad", "KgCoOp"])
def test_train_selects_on_val_and_reloads(toy_root, tmp_path, rn_path, trainer_name):
    cfg = make_cfg(toy_root, tmp_path, rn_path, trainer_name, **{"TEST.FINAL_MODEL": "best_val"})
    trainer = build_trainer(cfg)
    trainer.time_start = 0.0
    trainer.fit()
    assert "test" not in trainer._features and not trainer._test_allowed  # training never read test
    best = osp.join(cfg.OUTPUT_DIR, "prompt_learner", "model-best.pth.tar")
    assert osp.exists(best) and osp.exists(osp.join(cfg.OUTPUT_DIR, "prompt_learner", "model.pth.tar-2"))
    trainer.after_train()
    deployed = {k: v.clone() for k, v in trainer.prompt_learner.state_dict().items()}
    acc = trainer.test()
    # eval-only: a fresh trainer loads the same prompts (model-best) and gets the same accuracy
    again = build_trainer(make_cfg(toy_root, tmp_path, rn_path, trainer_name, OUTPUT_DIR=str(tmp_path / "eval")))
    again.load_model(cfg.OUTPUT_DIR)
    for k, v in again.prompt_learner.state_dict().items():
        assert torch.equal(v, deployed[k])
    assert again.test() == acc


def test_last_step_runs_reload_the_last_epoch(toy_root, tmp_path, rn_path):
    cfg = make_cfg(toy_root, tmp_path, rn_path, "CoOp")  # TEST.FINAL_MODEL last_step (CoOp)
    trainer = build_trainer(cfg)
    trainer.train()
    assert not osp.exists(osp.join(cfg.OUTPUT_DIR, "prompt_learner", "model-best.pth.tar"))
    again = build_trainer(make_cfg(toy_root, tmp_path, rn_path, "CoOp", OUTPUT_DIR=str(tmp_path / "eval")))
    again.load_model(cfg.OUTPUT_DIR)  # no --load-epoch: the last checkpoint
    assert torch.equal(again.prompt_learner.ctx, trainer.prompt_learner.ctx)


class _PickledScheduler:
    """Stands for the scheduler object CoOp pickles into its checkpoints."""


def test_coop_checkpoint_files_load(toy_root, tmp_path, rn_path):
    """A checkpoint as CoOp writes it: fp16 ctx, its fixed token buffers, a pickled scheduler."""
    cfg = make_cfg(toy_root, tmp_path, rn_path, "CoOp")
    trainer = build_trainer(cfg)
    ctx = torch.randn_like(trainer.prompt_learner.ctx).half()
    folder = tmp_path / "coop_run" / "prompt_learner"
    os.makedirs(folder)
    state = {"ctx": ctx, "token_prefix": torch.zeros(3, 1, 128).half(), "token_suffix": torch.zeros(3, 72, 128).half()}
    torch.save({"state_dict": state, "epoch": 50, "optimizer": None, "scheduler": _PickledScheduler(),
                "val_result": None}, str(folder / "model.pth.tar-50"))
    trainer.load_model(str(tmp_path / "coop_run"), epoch=50)
    assert torch.equal(trainer.prompt_learner.ctx.detach(), ctx.float())


@pytest.mark.parametrize("opts", [{"TRAINER.COOP.CSC": True, "TRAINER.COOP.CTX_INIT": ""},
                                  {"TRAINER.COOP.CLASS_TOKEN_POSITION": "middle"},
                                  {"TRAINER.COOP.CLASS_TOKEN_POSITION": "front", "TRAINER.PROMPTING.PREFIX_SHARING": False}])
def test_coop_layouts_train(toy_root, tmp_path, rn_path, opts):
    cfg = make_cfg(toy_root, tmp_path, rn_path, "CoOp", **opts)
    trainer = build_trainer(cfg)
    assert not trainer.prompt_learner.prefix_shared
    before = trainer.prompt_learner.ctx.detach().clone()
    trainer.train()
    assert not torch.equal(before, trainer.prompt_learner.ctx.detach())
