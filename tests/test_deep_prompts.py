"""Deep vision-language prompts (fsclip.prompting.deep) and MaPLe: the replacement rule in both
encoders, the identity cases, MaPLe's coupling functions by hand, the trainer's zero-shot start
on the text side, eval-only reloads and errors, on tiny CLIPs."""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from conftest import method_cfg, set_opts, trainer_configs, zero_shot_logits

import fsclip.datasets  # noqa: F401
import fsclip.trainers  # noqa: F401
from fsclip.backend import build_trainer
from fsclip.clip.compat import import_clip
from fsclip.clip.text import encode_text_embeddings
from fsclip.clip.tiny import build_tiny_clip, save_tiny_clip
from fsclip.errors import ConfigError
from fsclip.prompting.deep import (
    deep_image_features, deep_text_features, encode_deep_text, vision_block_prompts,
)
from fsclip.prompting.prompt_learner import TextPromptLearner
from fsclip.prompting.visual import vit_prompted_tokens
from fsclip.trainers.maple import MultiModalPromptLearner

NAMES = ["cat", "heart-shaped box", "dog"]


@pytest.fixture(scope="module")
def clip3():
    torch.manual_seed(0)
    return build_tiny_clip("ViT", seed=5, image_resolution=64, vision_layers=3, text_layers=3).eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def _block_inputs(blocks, run):
    """The sequence-first inputs ``[L, B, width]`` of every block while ``run()`` runs."""
    seen = []
    hooks = [b.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone())) for b in blocks]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in hooks:
            h.remove()
    return seen


def test_learner_keeps_the_words_after_the_learned_tokens_fixed(clip3):
    learner = TextPromptLearner(clip3, NAMES, ctx_init="a photo of a", learn_init_words=2)
    assert learner.n_ctx == 2 and learner.n_fixed == 2 and tuple(learner.ctx.shape) == (2, 64)
    tok = import_clip().tokenize([f"a photo of a {n}." for n in NAMES])
    with torch.no_grad():
        assert torch.equal(learner.ctx, clip3.token_embedding(tok)[0, 1:3])  # "a photo"
        want = clip3.encode_text(tok)
        assert torch.allclose(learner.text_features(clip3), want, atol=1e-5)  # "of a" stays text


@pytest.mark.parametrize("share_prefix", [True, False])
def test_deep_prompts_equal_to_the_hidden_states_give_clips_text_features(clip3, share_prefix):
    """Identity: replacing the context states entering blocks 1..J-1 by themselves changes nothing."""
    learner = TextPromptLearner(clip3, NAMES, ctx_init="a photo of a", learn_init_words=2)
    learner.share_prefix = share_prefix
    seen = _block_inputs(clip3.transformer.resblocks,
                         lambda: encode_text_embeddings(clip3, learner(), learner.tokens))
    deep = [seen[i][1:3, 0] for i in (1, 2)]  # causal: the same for every class
    want = clip3.encode_text(import_clip().tokenize([f"a photo of a {n}." for n in NAMES]))
    with torch.no_grad():
        assert torch.allclose(deep_text_features(learner, clip3, deep), want, atol=1e-5)
        moved = [d + torch.randn_like(d) for d in deep]  # (a constant shift would vanish in ln_1)
        assert not torch.allclose(deep_text_features(learner, clip3, moved), want, atol=1e-2)


def test_deep_text_replaces_the_context_at_the_input_of_blocks_1_to_J_minus_1(clip3):
    learner = TextPromptLearner(clip3, NAMES, ctx_init="a photo of a", learn_init_words=2)
    deep = [torch.randn(2, 64)]  # J = 2: block 1 only
    seen = _block_inputs(clip3.transformer.resblocks,
                         lambda: encode_deep_text(clip3, learner(), learner.tokens, deep, 2))
    for k in range(len(NAMES)):
        assert torch.equal(seen[1][1:3, k], deep[0])  # replaced, no positional embedding
        assert not torch.equal(seen[2][1:3, k], deep[0])  # block 2 carries block 1's outputs
    plain = _block_inputs(clip3.transformer.resblocks,
                          lambda: encode_text_embeddings(clip3, learner(), learner.tokens))
    assert torch.equal(seen[0], plain[0])  # block 0: CLIP's embedded prompt


def test_prefix_shared_and_plain_deep_text_agree_in_values_and_gradients(clip3):
    torch.manual_seed(2)
    grads = []
    for share in (True, False):
        learner = TextPromptLearner(clip3, NAMES, ctx_init="a photo of a", learn_init_words=2)
        learner.share_prefix = share
        torch.manual_seed(3)  # the same deep prompts for both paths
        deep = [torch.randn(2, 64).requires_grad_() for _ in range(2)]
        feats = deep_text_features(learner, clip3, deep)
        feats.pow(2).sum().backward()
        grads.append((feats.detach(), learner.ctx.grad, [d.grad for d in deep]))
    (f1, c1, d1), (f2, c2, d2) = grads
    assert torch.allclose(f1, f2, atol=1e-5) and torch.allclose(c1, c2, atol=1e-4)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(d1, d2))


def test_deep_visual_prompts_enter_as_the_rule_says(clip3, images):
    """V_0 through ln_pre into block 0; V_1 replaces the prompt outputs entering block 1; block 2
    (>= J = 2) sees block 1's prompt outputs."""
    visual = clip3.visual
    v = [torch.randn(2, visual.conv1.out_channels) for _ in range(2)]
    seen = _block_inputs(visual.transformer.resblocks, lambda: deep_image_features(visual, images, v))
    n_img = seen[0].shape[0] - 2
    assert torch.allclose(seen[0][n_img:, 0], visual.ln_pre(v[0]), atol=1e-6)
    assert torch.equal(seen[1][n_img:, 1], v[1])
    with torch.no_grad():
        out1 = visual.transformer.resblocks[1](seen[1])  # block 1's outputs
    assert torch.allclose(seen[2][n_img:], out1[n_img:], atol=1e-6)
    with torch.no_grad():  # no prompt tokens: CLIP's encode_image
        assert torch.equal(vit_prompted_tokens(visual, images, vision_block_prompts(visual, []))[:, 0],
                           vit_prompted_tokens(visual, images, lambda l, x, p: x.new_zeros(0, x.shape[-1]))[:, 0])
        assert torch.allclose(deep_image_features(visual, images, []), clip3.encode_image(images), atol=1e-6)


def test_maple_coupling_functions_by_hand(clip3):
    """Eq. (5): V_i = W_i P_i + b_i for i = 0..J-1; F_1..F_{J-1} identical at init (clones)."""
    torch.manual_seed(4)
    learner = MultiModalPromptLearner(clip3, NAMES, n_ctx=2, ctx_init="a photo of a", depth=3)
    text = [learner.ctx] + learner.text_prompts()
    layers = [learner.proj] + list(learner.compound_prompt_projections)
    vis = learner.visual_prompts()
    assert len(vis) == 3 and all(tuple(x.shape) == (2, clip3.visual.conv1.out_channels) for x in vis)
    for p, f, v in zip(text, layers, vis):
        by_hand = torch.stack([f.weight @ p[j] + f.bias for j in range(p.shape[0])])
        assert torch.allclose(v, by_hand, atol=1e-6)
    assert torch.equal(layers[1].weight, layers[2].weight) and not torch.equal(layers[0].weight, layers[1].weight)
    assert set(learner.state_dict()) == {"ctx", "compound_prompts_text.prompts", "proj.weight", "proj.bias",
                                         "compound_prompt_projections.0.weight", "compound_prompt_projections.0.bias",
                                         "compound_prompt_projections.1.weight", "compound_prompt_projections.1.bias"}
    with pytest.raises(ConfigError, match="PROMPT_DEPTH"):
        MultiModalPromptLearner(clip3, NAMES, depth=4)


# ------------------------------------------------------------------ the trainer on ToyImages
@pytest.fixture(scope="module")
def tiny_vit_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_vit_deep") / "tiny.pt"
    return save_tiny_clip(build_tiny_clip("ViT", image_resolution=64, text_layers=2), str(path))


def make_cfg(toy_root, tmp_path, weights, trainer, **opts):
    cfg = method_cfg(toy_root, tmp_path, weights, trainer, 2, "single")
    cfg.DATALOADER.TRAIN_X.BATCH_SIZE = 4
    cfg.OPTIM.NAME = "sgd"
    cfg.OPTIM.LR = 0.1
    cfg.OPTIM.MAX_EPOCH = 2
    cfg.TEST.FINAL_MODEL = "best_val"
    cfg.TRAINER[trainer.upper()].PREC = "fp32"
    cfg.TRAINER[trainer.upper()].PROMPT_DEPTH = 2
    return set_opts(cfg, **opts)


def test_maple_at_depth_1_starts_from_clips_text_classifier(toy_root, tmp_path, tiny_vit_path):
    trainer = build_trainer(make_cfg(toy_root, tmp_path, tiny_vit_path, "MaPLe",
                                     **{"TRAINER.MAPLE.PROMPT_DEPTH": 1}))
    text = F.normalize(trainer.text_features().float(), dim=-1)
    assert torch.allclose(text, trainer.text_weights, atol=1e-5)  # "a photo of a {}." of W
    images = next(iter(trainer.test_loader))["img"]
    logits, aux = trainer.forward_logits(images, None)  # V_0 = F_0(P_0): two extra image tokens
    want = trainer.logit_scale * F.normalize(aux["features"].float(), dim=-1) @ trainer.text_weights.t()
    assert torch.allclose(logits, want, atol=1e-4)
    assert not torch.allclose(logits, zero_shot_logits(trainer, images), atol=1e-3)


def test_maple_trains_and_eval_only_reloads_it(toy_root, tmp_path, tiny_vit_path):
    cfg = make_cfg(toy_root, tmp_path, tiny_vit_path, "MaPLe")
    trainer = build_trainer(cfg)
    assert trainer.get_model_names() == ["prompt_learner"] and not trainer.per_class_state()
    before = {k: v.clone() for k, v in trainer.prompt_learner.state_dict().items()}
    trainer.train()
    after = trainer.prompt_learner.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before)  # every part learns
    assert all(not p.requires_grad for p in trainer.clip_model.parameters())
    images = next(iter(trainer.test_loader))["img"]
    trained = trainer.model_inference(images)
    fresh = build_trainer(cfg)
    assert not torch.allclose(fresh.model_inference(images), trained)
    fresh.load_model(cfg.OUTPUT_DIR)
    assert torch.allclose(fresh.model_inference(images), trained, atol=1e-6)


def test_maple_refuses_a_resnet(toy_root, tmp_path):
    rn = save_tiny_clip(build_tiny_clip("RN", image_resolution=64), str(tmp_path / "rn.pt"))
    with pytest.raises(ConfigError, match="ResNet"):
        build_trainer(make_cfg(toy_root, tmp_path, rn, "MaPLe"))


def test_maple_configs_merge_with_the_official_defaults():
    loaded = trainer_configs("MaPLe")
    b2n = loaded["MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml"]
    m = b2n.TRAINER.MAPLE
    assert (m.N_CTX, m.CTX_INIT, m.PROMPT_DEPTH, m.PREC) == (2, "a photo of a", 9, "fp16")
    assert (b2n.OPTIM.LR, b2n.OPTIM.MAX_EPOCH, b2n.DATALOADER.TRAIN_X.BATCH_SIZE, b2n.OPTIM.WARMUP_EPOCH,
            b2n.OPTIM.WARMUP_CONS_LR, b2n.MODEL.BACKBONE.NAME) == (0.0035, 5, 4, 1, 1e-5, "ViT-B/16")
    xd = loaded["MaPLe/vit_b16_c2_ep2_batch4_2ctx_cross_datasets.yaml"]
    assert (xd.OPTIM.LR, xd.OPTIM.MAX_EPOCH, xd.TRAINER.MAPLE.PROMPT_DEPTH) == (0.0026, 2, 3)
    assert loaded["MaPLe/vit_b16_fewshot.yaml"].OPTIM.MAX_EPOCH == 50
    assert set(loaded) >= {"MaPLe/micro_vit.yaml"}
