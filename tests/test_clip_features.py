"""fsclip.clip.features: dense features reproduce CLIP's own image encoders exactly."""

from __future__ import annotations

import copy
import time

import pytest
import torch
import torch.nn.functional as F

from fsclip.clip.features import (
    attnpool_dense, attnpool_forward, encode_image_with_dense, is_vit, resnet_trunk, vit_head,
    vit_project_tokens, vit_run_blocks, vit_tokens,
)
from fsclip.clip.tiny import build_tiny_clip

IMAGES = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
TIGHT = dict(rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def rn():
    return build_tiny_clip("RN", seed=3)


@pytest.fixture(scope="module")
def vit():
    return build_tiny_clip("ViT", seed=4, vision_layers=3)


def test_is_vit(rn, vit):
    assert is_vit(vit) and is_vit(vit.visual)
    assert not is_vit(rn) and not is_vit(rn.visual)


@torch.no_grad()
def test_resnet_trunk_and_attnpool_reproduce_visual(rn):
    dense = resnet_trunk(rn.visual, IMAGES)
    assert dense.shape == (3, 8 * 32, 2, 2)  # width 8 -> 256 channels, 64 px -> 2x2
    expected = rn.visual(IMAGES)
    torch.testing.assert_close(attnpool_forward(rn.visual.attnpool, dense), expected, **TIGHT)
    torch.testing.assert_close(attnpool_forward(rn, resnet_trunk(rn, IMAGES)), rn.encode_image(IMAGES), **TIGHT)
    assert dense.std() > 0.01  # random BN statistics: the map is not degenerate
    pooled, dense2 = encode_image_with_dense(rn, IMAGES)
    torch.testing.assert_close(pooled, expected, **TIGHT)
    torch.testing.assert_close(dense2, dense, **TIGHT)


@torch.no_grad()
def test_attnpool_dense(rn):
    pool = rn.visual.attnpool
    dense = resnet_trunk(rn, IMAGES)
    tokens = attnpool_dense(pool, dense)
    assert tokens.shape == (3, 1 + 4, 64)
    # spatial token j is c_proj(v_proj(x_j + p_j)), computed independently
    x = dense[:, :, 1, 0] + pool.positional_embedding[1 + 2]  # row-major position (1, 0) -> 2
    torch.testing.assert_close(tokens[:, 3], pool.c_proj(pool.v_proj(x)), **TIGHT)
    # with uniform attention (q = 0) the pooled output is the mean of all value tokens
    flat = copy.deepcopy(pool)
    flat.q_proj.weight.zero_()
    flat.q_proj.bias.zero_()
    torch.testing.assert_close(attnpool_forward(flat, dense), attnpool_dense(flat, dense).mean(dim=1), **TIGHT)
    # ... but not with CLIP's real queries
    assert not torch.allclose(attnpool_forward(pool, dense), tokens.mean(dim=1), atol=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("skipped", [0, 1, 2, 3])
def test_vit_tokens_blocks_head_reproduce_visual(vit, skipped):
    tokens = vit_tokens(vit.visual, IMAGES, n_last_blocks_skipped=skipped)
    assert tokens.shape == (3, 1 + 16, 64)  # 64 px / patch 16 -> 4x4 grid + class token
    final = vit_run_blocks(vit.visual, tokens, start=3 - skipped)
    torch.testing.assert_close(vit_head(vit.visual, final), vit.visual(IMAGES), **TIGHT)


@torch.no_grad()
def test_vit_skipped_tokens_differ_and_project(vit):
    last = vit_tokens(vit, IMAGES)
    before = vit_tokens(vit, IMAGES, 1)
    assert not torch.allclose(last, before)
    torch.testing.assert_close(vit_run_blocks(vit, before, 2, 3), last, **TIGHT)
    projected = vit_project_tokens(vit, last)
    assert projected.shape == (3, 17, 64)
    torch.testing.assert_close(projected[:, 0], vit_head(vit, last), **TIGHT)
    pooled, tokens = encode_image_with_dense(vit, IMAGES)
    torch.testing.assert_close(pooled, vit.encode_image(IMAGES), **TIGHT)
    torch.testing.assert_close(tokens, last, **TIGHT)


def test_fine_tune_last_block_only(vit):
    model = copy.deepcopy(vit)
    with torch.no_grad():
        frozen = vit_tokens(model, IMAGES, n_last_blocks_skipped=1)
    feats = vit_head(model, vit_run_blocks(model, frozen, start=2))
    feats.pow(2).sum().backward()
    assert model.visual.transformer.resblocks[2].mlp.c_fc.weight.grad is not None
    assert model.visual.transformer.resblocks[1].mlp.c_fc.weight.grad is None
    assert model.visual.conv1.weight.grad is None


@torch.no_grad()
def test_inputs_are_cast_to_the_weight_dtype(rn, vit):
    from fsclip.clip.compat import import_clip

    for model in (rn, vit):
        half = copy.deepcopy(model)
        import_clip().model.convert_weights(half)  # CLIP's mixed fp16 layout (LayerNorm/BN fp32)
        pooled, dense = encode_image_with_dense(half, IMAGES)  # float32 images in
        assert pooled.dtype == dense.dtype == torch.float16
        # fp16 rounding: the single-query attention pool sums in another order than CLIP's
        torch.testing.assert_close(pooled, half.encode_image(IMAGES), rtol=1e-3, atol=5e-4)
        torch.testing.assert_close(pooled.float(), model.encode_image(IMAGES), rtol=0.01, atol=0.01)
    pooled = attnpool_forward(rn, resnet_trunk(rn, IMAGES).double())  # cast to the pool's dtype
    assert pooled.dtype == torch.float32


def test_clear_errors(rn, vit):
    with pytest.raises(TypeError, match="ResNet"):
        resnet_trunk(vit, IMAGES)
    with pytest.raises(TypeError, match="ViT"):
        vit_tokens(rn, IMAGES)
    with pytest.raises(ValueError, match="64 px"):
        attnpool_forward(rn, torch.zeros(1, 256, 3, 3))
    with pytest.raises(ValueError, match="input resolution 64"):
        vit_tokens(vit, torch.zeros(1, 3, 96, 96))
    with pytest.raises(ValueError, match="0..3"):
        vit_tokens(vit, IMAGES, n_last_blocks_skipped=4)


def test_tiny_models_are_fast_and_deterministic():
    start = time.perf_counter()
    a = build_tiny_clip("RN", seed=7)
    b = build_tiny_clip("ViT", seed=7)
    assert time.perf_counter() - start < 2.0  # ~0.1 s each on an idle 2-core CPU
    state = torch.get_rng_state()
    again = build_tiny_clip("RN", seed=7)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    for key, value in a.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    assert not torch.equal(a.token_embedding.weight, build_tiny_clip("RN", seed=8).token_embedding.weight)
    assert b.visual.transformer.resblocks[0].attn.num_heads == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@torch.no_grad()
def test_cuda_fp16_parity(rn, vit):
    from fsclip.clip.compat import import_clip

    clip = import_clip()
    for model in (rn, vit):
        half = copy.deepcopy(model).cuda()
        clip.model.convert_weights(half)  # CLIP's CUDA precision
        images = IMAGES.cuda()
        expected = half.encode_image(images)
        got, _ = encode_image_with_dense(half, images)
        assert got.dtype == torch.float16
        torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(F.normalize(got.float(), dim=-1),
                                   F.normalize(model.encode_image(IMAGES).cuda(), dim=-1),
                                   rtol=0.02, atol=0.02)


@pytest.mark.parametrize("width,heads_side", [(8, 2), (16, 4)])
def test_single_query_attnpool_matches_clip_with_gradients(width, heads_side):
    """The fast pool equals CLIP's AttentionPool2d in value and in parameter gradients."""
    model = build_tiny_clip("RN", seed=5, vision_width=width, image_resolution=32 * heads_side)
    pool = model.visual.attnpool.float().train()
    dense = torch.randn(4, pool.positional_embedding.shape[1], heads_side, heads_side,
                        generator=torch.Generator().manual_seed(1))
    fast = attnpool_forward(pool, dense)
    ref = pool(dense)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    target = torch.randn_like(ref)
    params = list(pool.parameters())
    g_fast = torch.autograd.grad((fast * target).sum(), params, allow_unused=True)
    g_ref = torch.autograd.grad((ref * target).sum(), params)
    for p, a, b in zip(params, g_fast, g_ref):
        # the key bias shifts all scores of a head equally, so its gradient is 0 in both
        a = torch.zeros_like(p) if a is None else a
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
