"""The hooks fsclip-explain reads models through (fsclip.explain.hooks): ``image_logits`` of every
registered trainer against its evaluation logits, with gradients; ``attention_maps`` rows that
sum to one, against the modules' own attention computed by hand (CLIP's attention pool and ViT
block, VT-CLIP's zero-initialised decoder, DPT's prompted forward and CAVPT, SAFE's two pools)."""

from __future__ import annotations

import contextlib
import io
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import make_toy_tree, method_cfg, set_opts

import fsclip.trainers  # noqa: F401
from fsclip.adapt.heads import DeeperHead, make_pooling_head, pooling_head_attention, trunk_forward
from fsclip.backend import TRAINER_REGISTRY, build_trainer
from fsclip.clip.attention import (
    attnpool_attention, encoder_attention, grid_rows, recorded_attention, vit_block_attention,
)
from fsclip.clip.features import attnpool_forward, resnet_trunk, vit_tokens
from fsclip.clip.tiny import build_tiny_clip, save_tiny_clip
from fsclip.errors import ConfigError
from fsclip.explain.hooks import attention_maps, trainers_with
from fsclip.kit.realsize import DPT, SMOKE_BUDGETS

BUILT_IN = sorted(t for t in TRAINER_REGISTRY.registered_names()
                  if TRAINER_REGISTRY.get(t).__module__.startswith("fsclip.trainers."))
# every trainer on the ViT (all of them take one); on the ResNet those whose image path differs by
# architecture beyond G (their own image_logits, the dense stems, the pools)
RN_TOO = {"ZeroshotCLIP", "CoOp", "CoCoOp", "SAFE", "VTCLIP", "CALIP", "CLIPLoRA"}
CASES = [(t, a) for t in BUILT_IN for a in ("RN", "ViT") if a == "ViT" or t in RN_TOO]
WITH_MAPS = {"ZeroshotCLIP", "ZeroshotCLIP2", "CoOp", "CoCoOp", "ProGrad", "KgCoOp", "SAFE", "SAFE_A", "VTCLIP",
             *DPT}
# the tiny CLIPs have one text block: deep prompts in the first block only
TINY_DEPTH = {"MaPLe": ["TRAINER.MAPLE.PROMPT_DEPTH", 1],
              "PromptSRC": ["TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT", 1, "TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION", 1]}
IMAGES = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
LABELS = torch.tensor([0, 2, 1])
HW = {"RN": 4, "ViT": 16}  # tiny CLIPs at 64 px: a 2x2 attention-pool map, a 4x4 patch grid


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A toy dataset, the tiny CLIPs, and a cache of built trainers (``train``: trained with the
    smoke budgets; else every learnable part of the method moved off its initial value, so that
    no method is in its zero-shot identity case)."""
    root = tmp_path_factory.mktemp("hooks")
    make_toy_tree(str(root))
    weights = {a: save_tiny_clip(build_tiny_clip(a, image_resolution=64), str(root / f"{a}.pt")) for a in HW}
    built = {}

    def trainer(name: str, arch: str, train: bool = False, perturb: bool = True, **opts):
        key = (name, arch, train, perturb, tuple(sorted(opts.items())))
        if key not in built:
            cfg = method_cfg(str(root), root / f"{name}_{arch}_{len(built)}", weights[arch], name, 2, "single")
            cfg.merge_from_list(list(SMOKE_BUDGETS.get(name, [])) + TINY_DEPTH.get(name, []))
            set_opts(cfg, **opts)
            with contextlib.redirect_stdout(io.StringIO()):
                t = build_trainer(cfg)
                if train:
                    t.train()
            if perturb and not train:
                gen = torch.Generator().manual_seed(7)
                with torch.no_grad():
                    for model in t._models.values():
                        for p in [*model.parameters(), *model.buffers()]:
                            if p.is_floating_point():
                                p.add_(0.05 * torch.randn(p.shape, generator=gen).to(p))
            t.set_model_mode("eval")
            built[key] = t
        return built[key]

    return trainer


# ------------------------------------------------------------------------------ image_logits
@pytest.mark.parametrize("name,arch", CASES, ids=["-".join(c) for c in CASES])
def test_image_logits_are_the_eval_logits_with_gradients(world, name, arch):
    t = world(name, arch)
    with torch.no_grad():
        reference = t.restrict_logits(t.model_inference(IMAGES))
    images = IMAGES.clone().requires_grad_(True)
    logits = t.image_logits(images)
    torch.testing.assert_close(logits, reference, rtol=1e-5, atol=1e-5)
    logits[torch.arange(3), logits.argmax(dim=1)].sum().backward()  # gradients reach the pixels
    assert images.grad is not None and images.grad.abs().sum() > 0, name


@pytest.mark.parametrize("name,arch", CASES, ids=["-".join(c) for c in CASES])
def test_model_inference_itself_masks_classes_outside_the_label_subset(world, name, arch):
    """ImageNet-A/R score 200 of ImageNet's classes: real Dassl's test loop calls model_inference
    bare, so every trainer's model_inference applies the dataset's label_subset itself."""
    t = world(name, arch)
    dataset = t.dm.dataset
    dataset.label_subset = (0, 2)
    try:
        with torch.no_grad():
            logits = t.model_inference(IMAGES)
    finally:
        del dataset.label_subset
    assert torch.isneginf(logits[:, 1]).all() and torch.isfinite(logits[:, [0, 2]]).all(), name


def test_every_method_has_image_logits_and_the_documented_ones_have_maps():
    assert set(trainers_with("image_logits")) >= set(BUILT_IN)
    assert {t for t in trainers_with("attention_maps") if t in BUILT_IN} == WITH_MAPS


def test_a_method_without_maps_is_one_error_naming_those_with_them(world):
    with pytest.raises(ConfigError, match=r"TipAdapter has no attention maps .*SAFE.*VTCLIP"):
        attention_maps(world("TipAdapter", "RN"), IMAGES)


# ------------------------------------------------------------------------------ attention_maps
MAP_CASES = [c for c in CASES if c[0] in WITH_MAPS]


@pytest.mark.parametrize("name,arch", MAP_CASES, ids=["-".join(c) for c in MAP_CASES])
def test_attention_rows_sum_to_one_on_the_grid_and_come_with_the_eval_logits(world, name, arch):
    t = world(name, arch)
    with torch.no_grad():
        out = t.attention_maps(IMAGES, LABELS)
        torch.testing.assert_close(out["logits"], t.restrict_logits(t.model_inference(IMAGES)), rtol=1e-5, atol=1e-5)
    side = int(math.sqrt(HW[arch]))
    maps = {k: v for k, v in out.items() if "/" not in k and k != "logits"}
    assert maps, out.keys()
    for key, m in maps.items():
        assert m.shape[0] == 3 and m.shape[-2:] == (side, side), (key, m.shape)
        assert (m >= 0).all()
        torch.testing.assert_close(m.sum(dim=(-2, -1)) + out[f"{key}/rest"], torch.ones(m.shape[:2]), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------ the CLIP modules
@torch.no_grad()
def test_attnpool_attention_is_the_pools_own_softmax():
    pool = build_tiny_clip("RN", seed=3, image_resolution=64).visual
    dense = resnet_trunk(pool, IMAGES)
    weights = attnpool_attention(pool.attnpool, dense)  # [B, H, 1 + HW]
    p = pool.attnpool
    x = dense.flatten(2).permute(2, 0, 1)
    x = torch.cat([x.mean(dim=0, keepdim=True), x]) + p.positional_embedding[:, None]
    _, reference = F.multi_head_attention_forward(
        x[:1], x, x, x.shape[-1], p.num_heads, None, torch.cat([p.q_proj.bias, p.k_proj.bias, p.v_proj.bias]),
        None, None, False, 0.0, p.c_proj.weight, p.c_proj.bias, use_separate_proj_weight=True,
        q_proj_weight=p.q_proj.weight, k_proj_weight=p.k_proj.weight, v_proj_weight=p.v_proj.weight,
        need_weights=True, average_attn_weights=False)
    torch.testing.assert_close(weights, reference[:, :, 0], rtol=1e-5, atol=1e-6)
    # the pooled feature is these weights on the values: c_proj(sum_l a_hl v_hl)
    tokens = x.permute(1, 0, 2)
    v = F.linear(tokens, p.v_proj.weight, p.v_proj.bias).view(3, 5, p.num_heads, -1).transpose(1, 2)  # [B, H, L, d]
    mixed = (weights.unsqueeze(-1) * v).sum(dim=2).reshape(3, -1)
    torch.testing.assert_close(F.linear(mixed, p.c_proj.weight, p.c_proj.bias), attnpool_forward(p, dense),
                               rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_vit_block_attention_and_recorded_attention_are_the_blocks_own():
    model = build_tiny_clip("ViT", seed=3, image_resolution=64)
    last = model.visual.transformer.resblocks[-1]
    tokens = vit_tokens(model, IMAGES, n_last_blocks_skipped=1)  # [B, 17, width]
    weights = vit_block_attention(last, tokens)  # [B, H, 17, 17]
    assert weights.shape == (3, last.attn.num_heads, 17, 17)
    # the block's attention output is these weights on its values, through out_proj
    h = last.ln_1(tokens)
    w = last.attn.embed_dim
    v = F.linear(h, last.attn.in_proj_weight[2 * w:], last.attn.in_proj_bias[2 * w:])
    v = v.view(3, 17, last.attn.num_heads, -1).transpose(1, 2)  # [B, H, L, d]
    out = (weights @ v).transpose(1, 2).reshape(3, 17, w)
    torch.testing.assert_close(last.attn.out_proj(out), last.attention(h.permute(1, 0, 2)).permute(1, 0, 2),
                               rtol=1e-4, atol=1e-5)
    with recorded_attention([last.attn]) as seen:
        model.encode_image(IMAGES)
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], weights, rtol=1e-5, atol=1e-6)
    name, rows = encoder_attention(model, IMAGES)
    assert name == "cls"
    torch.testing.assert_close(rows, weights[:, :, 0])


def test_grid_rows_are_row_major_and_keep_the_rest():
    rows = torch.arange(1.0, 8.0).expand(2, 7)  # [cls, 4 patches, 2 prompts]
    maps, rest = grid_rows(rows, 1, 4)
    assert maps[0].tolist() == [[2.0, 3.0], [4.0, 5.0]]
    assert rest.tolist() == [1.0 + 6.0 + 7.0] * 2
    with pytest.raises(ValueError):
        grid_rows(rows, 1, 3)


@torch.no_grad()
def test_deeper_head_attention_is_its_pools_after_its_stages():
    visual = build_tiny_clip("RN", seed=3, image_resolution=64).visual
    head = DeeperHead(visual, 1).eval()  # copies of layer4 + the attention pool
    x = trunk_forward(visual, IMAGES)
    before4 = visual.layer3(visual.layer2(visual.layer1(visual.avgpool(visual.relu3(visual.bn3(visual.conv3(
        visual.relu2(visual.bn2(visual.conv2(visual.relu1(visual.bn1(visual.conv1(IMAGES)))))))))))))
    torch.testing.assert_close(pooling_head_attention(head, before4), attnpool_attention(visual.attnpool, x))
    torch.testing.assert_close(pooling_head_attention(make_pooling_head(visual), x),
                               attnpool_attention(visual.attnpool, x))


# ------------------------------------------------------------------------------ the methods
@torch.no_grad()
def test_vtclip_zero_initialised_decoder_maps_are_the_cross_attention_of_the_text(world):
    """A fresh decoder leaves the text stream at T_c (zero output projections), so every block's
    queries are LN(T_c): softmax((LN(T_c) Wq + bq)(V_s Wk + bk)^T / sqrt(d)) per head, by hand."""
    t = world("VTCLIP", "ViT", perturb=False, **{"TRAINER.VTCLIP.LAYERS": 2})
    out = t.attention_maps(IMAGES, LABELS)
    dense = trunk_forward(t.visual, IMAGES)
    vs = t.vt.ln_visual(t.vt.project(t.stem(dense)))  # V_s [B, HW, D]
    pred = out["logits"].argmax(dim=1)
    for l, block in enumerate(t.vt.blocks, start=1):
        attn, d_model = block.cross_attn, vs.shape[-1]
        heads = attn.num_heads
        d = d_model // heads
        q = F.linear(block.ln_cross(t.text_weights), attn.in_proj_weight[:d_model], attn.in_proj_bias[:d_model])
        k = F.linear(vs, attn.in_proj_weight[d_model:2 * d_model], attn.in_proj_bias[d_model:2 * d_model])
        q = q.view(-1, heads, d).transpose(0, 1)  # [H, K, d]
        k = k.view(3, -1, heads, d).permute(0, 2, 1, 3)  # [B, H, HW, d]
        weights = (q.unsqueeze(0) @ k.transpose(-2, -1) / math.sqrt(d)).softmax(dim=-1)  # [B, H, K, HW]
        for tag, cls in (("pred", pred), ("true", LABELS)):
            expected = weights[torch.arange(3), :, cls].reshape(3, heads, 4, 4)
            torch.testing.assert_close(out[f"layer{l}_{tag}"], expected, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(out["layer1_true"][1], out["layer1_true"][1].mean())  # not uniform


def _last_block_input(t, images):
    seen = []
    hook = t.visual.transformer.resblocks[-1].register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    try:
        t.model_inference(images)
    finally:
        hook.remove()
    return seen[-1].permute(1, 0, 2)  # [B, 17 + prompts, width]


@torch.no_grad()
@pytest.mark.parametrize("name", ["VPT_CLIP", "VLP_CLIP_CAVPT"])
def test_dpt_maps_come_from_the_prompted_forward_of_the_eval(world, name):
    t = world(name, "ViT")
    out = t.attention_maps(IMAGES, LABELS)
    seq = _last_block_input(t, IMAGES)  # what the last block saw in the trainer's eval: image tokens + prompts
    assert seq.shape[1] > 17
    cls_row = vit_block_attention(t.visual.transformer.resblocks[-1], seq)[:, :, 0]
    torch.testing.assert_close(out["cls"], cls_row[:, :, 1:17].reshape(3, -1, 4, 4), rtol=1e-5, atol=1e-6)
    _, zero_shot = encoder_attention(t.clip_model, IMAGES)  # the unprompted encoder attends elsewhere
    assert (out["cls"] - zero_shot[:, :, 1:].reshape(out["cls"].shape)).abs().max() > 1e-3
    if name.endswith("CAVPT"):
        c = t.cavpt[-1]
        tokens = seq[:, :17]
        queries = t.text_weights[out["cavpt/classes"]]  # [B, K_T, D]: the hand-crafted queries (paper)
        scores = c.q_proj(c.query(queries)) @ c.k_proj(tokens).transpose(1, 2) * c.dim ** -0.5
        torch.testing.assert_close(out["cavpt"], scores.softmax(dim=-1)[:, :, 1:].reshape(3, -1, 4, 4),
                                   rtol=1e-5, atol=1e-6)
        assert out["cavpt"].shape[1] == t.topk == out["cavpt/classes"].shape[1]


@torch.no_grad()
@pytest.mark.parametrize("arch", ["RN", "ViT"])
def test_safe_maps_are_the_original_pool_beside_the_fine_tuned_one(world, arch):
    t = world("SAFE", arch)
    zs = world("ZeroshotCLIP", arch)
    out = t.attention_maps(IMAGES)
    clip = zs.attention_maps(IMAGES)["cls" if arch == "ViT" else "attnpool"]
    torch.testing.assert_close(out["attnpool_o"], clip, rtol=1e-4, atol=1e-6)  # AttnPool_O is CLIP's pool
    saved = {k: v.clone() for k, v in t.head_f.state_dict().items()}
    try:
        gen = torch.Generator().manual_seed(2)
        for p in t.head_f.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
        moved = t.attention_maps(IMAGES)
    finally:
        t.head_f.load_state_dict(saved)
    torch.testing.assert_close(moved["attnpool_o"], out["attnpool_o"])
    assert (moved["attnpool_f"] - out["attnpool_f"]).abs().max() > 1e-3
