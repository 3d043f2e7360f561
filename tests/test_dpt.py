"""DPT family: visual prompt injection (Eq. 4-6), CAVPT (Eq. 9-10) against hand computations, the
zero-prompt identities, fixed training views, errors, and eval-only reloads on a tiny ViT."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import method_cfg, set_opts, trainer_configs, zero_shot_logits

import fsclip.datasets  # noqa: F401
import fsclip.trainers  # noqa: F401
from fsclip.adapt.extract import ViewDataset
from fsclip.backend import build_trainer
from fsclip.cli import main as cli_main
from fsclip.clip.tiny import build_tiny_clip, save_tiny_clip
from fsclip.errors import ConfigError
from fsclip.prompting.visual import VisualPrompts, vit_prompted_forward, vit_prompted_tokens
from fsclip.prompting.visual_data import FixedViewDataset
from fsclip.prompting.cavpt import CAVPT, cavpt_loss

VARIANTS = ["VPT_CLIP", "VPT_CLIP_CAVPT", "VLP_CLIP", "VLP_CLIP_CAVPT"]


@pytest.fixture(scope="module")
def vit():
    return build_tiny_clip("ViT", seed=3, image_resolution=64, vision_layers=3)


@pytest.fixture(scope="module")
def images():
    return torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))


# ------------------------------------------------------------------ visual prompts (Eq. 4-6)
@pytest.mark.parametrize("deep", [True, False])
def test_zero_length_prompts_give_clips_class_token_exactly(vit, images, deep):
    prompts = VisualPrompts(vit.visual, length=0, deep=deep)
    with torch.no_grad():
        assert torch.equal(vit_prompted_forward(vit.visual, images, prompts), vit.encode_image(images))


def _block_inputs(vit, images, prompts):
    """Sequence-first inputs ``[L, B, width]`` of every block of a prompted forward."""
    seen = []
    hooks = [b.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))
             for b in vit.visual.transformer.resblocks]
    try:
        with torch.no_grad():
            vit_prompted_tokens(vit.visual, images, prompts)
    finally:
        for h in hooks:
            h.remove()
    return seen


def test_deep_prompts_are_replaced_at_every_block(vit, images):
    prompts = VisualPrompts(vit.visual, length=5, deep=True)
    n_img = 1 + (64 // 16) ** 2
    seen = _block_inputs(vit, images, prompts)
    assert len(seen) == 3
    for l, x in enumerate(seen):
        assert x.shape == (n_img + 5, 4, 64)  # image tokens + this block's 5 prompts, nothing piled up
        for b in range(4):  # the prompt slots hold P_l itself, not the previous block's outputs
            assert torch.equal(x[n_img:, b], prompts.prompts[l].detach())


def test_shallow_prompts_enter_once_and_are_carried(vit, images):
    prompts = VisualPrompts(vit.visual, length=5, deep=False)
    n_img = 1 + (64 // 16) ** 2
    seen = _block_inputs(vit, images, prompts)
    assert torch.equal(seen[0][n_img:, 0], prompts.prompts[0].detach())
    for l in (1, 2):  # Z_{l-1}: block l-1's outputs at the prompt slots
        with torch.no_grad():
            out = vit.visual.transformer.resblocks[l - 1](seen[l - 1])
        assert seen[l].shape == (n_img + 5, 4, 64)
        assert torch.equal(seen[l], out)
        assert not torch.equal(seen[l][n_img:, 0], prompts.prompts[0].detach())


def test_prompt_depth_and_gradients(vit, images):
    prompts = VisualPrompts(vit.visual, length=3, deep=True, depth=2)
    seen = _block_inputs(vit, images, prompts)
    assert [x.shape[0] for x in seen] == [20, 20, 17]  # the last block gets no prompts
    vit_prompted_forward(vit.visual, images, prompts).sum().backward()
    assert prompts.prompts.grad is not None and (prompts.prompts.grad.abs().sum(dim=(1, 2)) > 0).all()
    assert all(p.grad is None for p in vit.visual.parameters() if not p.requires_grad)


def test_prompts_need_a_vit():
    with pytest.raises(TypeError, match="ViT"):
        VisualPrompts(build_tiny_clip("RN", image_resolution=64).visual)


# ------------------------------------------------------------------ CAVPT (Eq. 9-10)
def _layer_norm(v):
    return (v - v.mean()) / torch.sqrt(v.var(unbiased=False) + 1e-5)


@pytest.mark.parametrize("official", [False, True])
def test_cavpt_equals_hand_computation(official):
    torch.manual_seed(0)
    B, N, K_T, D, d, K = 2, 5, 3, 6, 8, 7
    kw = dict(query="linear", attn_dim=4, extra_tokens=2, detach=True, output="ln_query") if official else {}
    m = CAVPT(D, d, K, **kw)
    for p in m.parameters():  # non-trivial LayerNorm affine parameters too
        torch.nn.init.normal_(p, std=0.5)
    tokens, text = torch.randn(B, N, d), torch.randn(B, K_T, D)
    prompts, logits = m(tokens, text)
    assert prompts.shape == (B, K_T, d) and logits.shape == (B, K_T, K)
    W = {n: p.detach() for n, p in m.named_parameters()}
    for b in range(B):
        kv = torch.cat([tokens[b], W["extra"]]) if official else tokens[b]
        for j in range(K_T):
            if official:
                q0 = W["query.weight"] @ text[b, j] + W["query.bias"]
                q, a = W["q_proj.weight"] @ q0, 4
            else:
                h = torch.relu(W["query.0.weight"] @ text[b, j] + W["query.0.bias"])
                q0 = q = W["query.2.weight"] @ h + W["query.2.bias"]
                a = d
            scores = torch.stack([q @ (W["k_proj.weight"] @ kv[i]) for i in range(len(kv))]) / math.sqrt(a)
            out = sum(w * (W["v_proj.weight"] @ kv[i]) for i, w in enumerate(torch.softmax(scores, 0)))
            z = _layer_norm(out) * W["ln.weight"] + W["ln.bias"]
            assert torch.allclose(logits[b, j], W["classifier.weight"] @ z, atol=1e-5)
            if official:  # LN(out + q)
                want = _layer_norm(out + q0) * W["out.weight"] + W["out.bias"]
            else:  # Eq. 9: LP(LN(softmax(q^T k) v) + s_l)
                want = W["out.weight"] @ (z + tokens[b, 0]) + W["out.bias"]
            assert torch.allclose(prompts[b, j], want, atol=1e-5)


def test_cavpt_detach_stops_gradients_to_the_tokens():
    tokens = torch.randn(1, 4, 8, requires_grad=True)
    CAVPT(6, 8, 5, detach=True, output="ln_query")(tokens, torch.randn(1, 2, 6))[0].sum().backward()
    assert tokens.grad is None
    CAVPT(6, 8, 5)(tokens, torch.randn(1, 2, 6))[0].sum().backward()
    assert tokens.grad is not None and tokens.grad.abs().sum() > 0


def test_cavpt_loss_equals_hand_computation():
    torch.manual_seed(1)
    L, B, K_T, K = 2, 3, 3, 5
    layer_logits = [torch.randn(B, K_T, K) for _ in range(L)]
    selected = torch.tensor([[1, 0, 4], [2, 3, 0], [4, 1, 2]])
    labels = torch.tensor([0, 1, 2])  # image 0: slot 1; image 1: no slot; image 2: slot 2
    soft, terms, matched = 0.0, [], []
    for lg in layer_logits:
        for b in range(B):
            for j in range(K_T):
                logp = torch.log_softmax(lg[b, j], 0)
                if selected[b, j] == labels[b]:  # one-hot target
                    soft += -logp[labels[b]]
                    matched.append(-logp[labels[b]])
                else:  # y_i = 1/K
                    soft += -logp.mean()
                terms.append(1)
    assert torch.allclose(cavpt_loss(layer_logits, selected, labels, "soft"), soft / len(terms))
    assert torch.allclose(cavpt_loss(layer_logits, selected, labels, "matched"), torch.stack(matched).mean())
    none = cavpt_loss(layer_logits, selected, torch.tensor([3, 4, 3]), "matched")
    assert none.item() == 0.0


# ------------------------------------------------------------------ trainers on ToyImages
@pytest.fixture(scope="module")
def tiny_vit_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_vit") / "tiny.pt"
    return save_tiny_clip(build_tiny_clip("ViT", image_resolution=64), str(path))


def make_cfg(toy_root, tmp_path, weights, trainer, **opts):
    cfg = method_cfg(toy_root, tmp_path, weights, trainer, 3, "single")
    cfg.DATALOADER.TRAIN_X.BATCH_SIZE = 4
    cfg.OPTIM.NAME = "sgd"
    cfg.OPTIM.LR = 0.1
    cfg.OPTIM.MAX_EPOCH = 2
    cfg.TEST.FINAL_MODEL = "best_val"
    cfg.TRAINER.DPT.PREC = "fp32"
    cfg.TRAINER.DPT.VPT.LENGTH = 2
    cfg.TRAINER.DPT.TEXT.N_CTX = 2
    cfg.TRAINER.DPT.CAVPT.TOPK = 2
    return set_opts(cfg, **opts)


def test_vpt_without_prompt_tokens_equals_zero_shot(toy_root, tmp_path, tiny_vit_path):
    trainer = build_trainer(make_cfg(toy_root, tmp_path, tiny_vit_path, "VPT_CLIP",
                                     **{"TRAINER.DPT.VPT.LENGTH": 0}))
    images = next(iter(trainer.test_loader))["img"]
    assert torch.allclose(trainer.model_inference(images), zero_shot_logits(trainer, images), atol=1e-5)


def test_vlp_without_visual_prompts_and_template_context_equals_zero_shot(toy_root, tmp_path, tiny_vit_path):
    trainer = build_trainer(make_cfg(toy_root, tmp_path, tiny_vit_path, "VLP_CLIP", **{
        "TRAINER.DPT.VPT.LENGTH": 0, "TRAINER.DPT.TEXT.CTX_INIT": "a photo of a"}))
    assert trainer.prompt_learner.prefix_shared
    images = next(iter(trainer.test_loader))["img"]
    assert torch.allclose(trainer.model_inference(images), zero_shot_logits(trainer, images), atol=1e-4)
    trainer.set_model_mode("train")  # the training path (text encoded with gradients) agrees too
    logits, _ = trainer.forward_logits(images, None)
    assert torch.allclose(logits, zero_shot_logits(trainer, images), atol=1e-4)


def test_fixed_views_are_the_cached_views(toy_root, tmp_path, tiny_vit_path):
    """The training view (i, v) has the pixels whose frozen feature the cache holds."""
    trainer = build_trainer(make_cfg(toy_root, tmp_path, tiny_vit_path, "VPT_CLIP_CAVPT"))
    ds = trainer.train_loader_x.dataset
    assert isinstance(ds, FixedViewDataset)
    views = ViewDataset([d.impath for d in ds.items], ds.transform, 3, ds.seed, ds.root)
    frozen = trainer.frozen_features("train")  # [N, 3, D]
    for i, v in [(0, 0), (0, 2), (len(ds) - 1, 1)]:
        img = ds[(i, v)]["img"]
        assert torch.equal(img, views[i][v])
        want = F.normalize(trainer.clip_model.encode_image(img[None]).float(), dim=-1)[0]
        assert torch.allclose(frozen[i, v], want, atol=2e-3)  # stored in fp16
    batch = next(iter(trainer.train_loader_x))
    assert set(batch) >= {"img", "label", "index", "view"} and batch["img"].shape[0] == 4


def test_resnet_backbone_is_one_error_line(toy_root, tmp_path, capsys):
    rn = save_tiny_clip(build_tiny_clip("RN", image_resolution=64), str(tmp_path / "rn.pt"))
    with pytest.raises(ConfigError, match="needs|ResNet"):
        build_trainer(make_cfg(toy_root, tmp_path, rn, "VPT_CLIP"))
    code = cli_main(["--root", toy_root, "--trainer", "VPT_CLIP", "--output-dir", str(tmp_path / "o"),
                     "DATASET.NAME", "ToyImages", "MODEL.BACKBONE.NAME", rn, "INPUT.SIZE", "(64, 64)",
                     "DATALOADER.NUM_WORKERS", "0", "USE_CUDA", "False"])
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("ERROR")]
    assert code == 2 and len(lines) == 1 and "ViT" in lines[0], lines


@pytest.mark.parametrize("trainer_name", VARIANTS)
def test_train_then_eval_only_reloads_every_learned_part(toy_root, tmp_path, tiny_vit_path, trainer_name):
    cfg = make_cfg(toy_root, tmp_path, tiny_vit_path, trainer_name)
    trainer = build_trainer(cfg)
    trainer.train()
    images = next(iter(trainer.test_loader))["img"]
    trained = trainer.model_inference(images)
    fresh = build_trainer(cfg)
    assert not torch.allclose(fresh.model_inference(images), trained)
    fresh.load_model(cfg.OUTPUT_DIR)
    assert torch.allclose(fresh.model_inference(images), trained, atol=1e-6)
    names = set(fresh.get_model_names())
    assert "visual_prompts" in names
    assert ("cavpt" in names) == trainer_name.endswith("CAVPT")
    assert ("prompt_learner" in names) == trainer_name.startswith("VLP")


def test_configs_merge_and_official_presets_select_the_codes_choices():
    loaded = trainer_configs(*VARIANTS)  # every key exists
    assert len(loaded) == 20  # vit_b32, vit_b16, official, micro_vit (+ VPT_CLIP's *_shallow)
    paper, official = loaded["VLP_CLIP_CAVPT/vit_b32.yaml"], loaded["VLP_CLIP_CAVPT/official.yaml"]
    assert (paper.OPTIM.MAX_EPOCH, paper.OPTIM.WARMUP_EPOCH, paper.OPTIM.WARMUP_CONS_LR) == (200, 10, 1e-5)
    assert paper.TRAINER.DPT.VPT.LENGTH == 10 and paper.TRAINER.DPT.TEXT.N_CTX == 16
    c = official.TRAINER.DPT.CAVPT
    assert (c.QUERY, c.QUERY_TEXT, c.ATTN_DIM, c.EXTRA_TOKENS, c.DETACH, c.OUTPUT, c.LOSS, c.LOSS_WEIGHT,
            c.REPLACE_VPT) == ("linear", "learned", 32, 10, True, "ln_query", "matched", 0.3, True)
    assert official.TRAINER.DPT.GUIDANCE_EPOCHS == 30 and official.OPTIM.MAX_EPOCH == 60
    assert not loaded["VPT_CLIP/vit_b32_shallow.yaml"].TRAINER.DPT.VPT.DEEP
    assert all(cfg.TEST.FINAL_MODEL == "best_val" for cfg in loaded.values())


def test_official_variant_trains(toy_root, tmp_path, tiny_vit_path):
    """The code's CAVPT (replacing the deep prompts in the last block) and VLP guidance losses."""
    cfg = make_cfg(toy_root, tmp_path, tiny_vit_path, "VLP_CLIP_CAVPT", **{
        "TRAINER.DPT.CAVPT.QUERY": "linear", "TRAINER.DPT.CAVPT.QUERY_TEXT": "learned",
        "TRAINER.DPT.CAVPT.ATTN_DIM": 32, "TRAINER.DPT.CAVPT.EXTRA_TOKENS": 10, "TRAINER.DPT.CAVPT.DETACH": True,
        "TRAINER.DPT.CAVPT.OUTPUT": "ln_query", "TRAINER.DPT.CAVPT.LOSS": "matched",
        "TRAINER.DPT.CAVPT.REPLACE_VPT": True, "TRAINER.DPT.GUIDANCE_EPOCHS": 1})
    trainer = build_trainer(cfg)
    assert trainer.vpt.depth == 1  # tiny ViT: 2 blocks, the last one has CAVPT only
    trainer.train()
    assert trainer.prompt_learner.ctx.grad is not None
