"""CLIP-LoRA's parity tests: the low-rank attention against nn.MultiheadAttention and against
attention computed by hand with W + s B A; the zero-initialised trainer against zero-shot CLIP;
the merged export against the unmerged model; checkpoints holding only the factors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from kit_learning import kit_trainer

from fsclip.clip.loader import kit_model_names
from fsclip.errors import ConfigError
from fsclip.lowrank import LoRAMultiheadAttention, apply_lora, count_lora_params, lora_state_dict, merge_lora

D, H, L, N = 16, 2, 5, 3


def causal_mask(n: int) -> torch.Tensor:
    return torch.full((n, n), float("-inf")).triu(1)  # CLIP's text mask


def wrapped(params=("q", "k", "v", "o"), r=2, alpha=1.0, dropout=0.25, random_b=False):
    torch.manual_seed(0)
    base = nn.MultiheadAttention(D, H)
    nn.init.normal_(base.in_proj_bias), nn.init.normal_(base.out_proj.bias)
    m = LoRAMultiheadAttention(base, params, r, alpha, dropout)
    if random_b:
        for pair in m.lora.values():
            nn.init.normal_(pair.lora_B)
    return base, m


def by_hand(m: LoRAMultiheadAttention, x: torch.Tensor, mask, alpha: float, r: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(d_h) + mask) v through W_p + (alpha / sqrt r) B_p A_p, p in q, k, v, o."""
    s, b = alpha / math.sqrt(r), m.base
    w = {p: b.in_proj_weight[i * D:(i + 1) * D] for i, p in enumerate("qkv")}
    bias = {p: b.in_proj_bias[i * D:(i + 1) * D] for i, p in enumerate("qkv")}
    w["o"], bias["o"] = b.out_proj.weight, b.out_proj.bias
    for p, pair in m.lora.items():
        w[p] = w[p] + s * pair.lora_B @ pair.lora_A
    q, k, v = ((x @ w[p].t() + bias[p]).reshape(L, N, H, D // H).permute(1, 2, 0, 3) for p in "qkv")
    att = (q @ k.transpose(-1, -2) / math.sqrt(D // H) + mask).softmax(-1)
    out = (att @ v).permute(2, 0, 1, 3).reshape(L, N, D)
    return out @ w["o"].t() + bias["o"]


def test_init_and_scaling():
    _, m = wrapped(r=4, alpha=2.0)
    for pair in m.lora.values():
        assert pair.lora_B.abs().sum() == 0 and pair.lora_A.abs().sum() > 0  # B zero, A not
        assert pair.lora_A.abs().max() <= 1 / math.sqrt(D)  # Kaiming-uniform (a = sqrt 5): bound 1/sqrt(fan_in)
        assert pair.scale == pytest.approx(2.0 / 2.0)  # alpha / sqrt(r), not alpha / r
        assert pair.lora_A.shape == (4, D) and pair.lora_B.shape == (D, 4)


def test_zero_b_equals_multihead_attention_in_both_paths():
    base, m = wrapped(dropout=0.9)
    x, mask = torch.randn(L, N, D), causal_mask(L)
    ref = base(x, x, x, need_weights=False, attn_mask=mask)[0]
    m.eval()
    assert torch.equal(m(x, x, x, need_weights=False, attn_mask=mask)[0], ref)  # folded path: bit for bit
    m.train()  # dropout on the LoRA branch only: with B = 0 the frozen path is untouched
    torch.testing.assert_close(m(x, x, x, need_weights=False, attn_mask=mask)[0], ref, atol=1e-6, rtol=1e-5)


def test_nonzero_b_equals_attention_by_hand_in_both_paths():
    _, m = wrapped(r=2, alpha=1.0, random_b=True)
    x, mask = torch.randn(L, N, D), causal_mask(L)
    ref = by_hand(m, x, mask, 1.0, 2)
    m.eval()
    torch.testing.assert_close(m(x, x, x, attn_mask=mask)[0], ref, atol=1e-5, rtol=1e-5)
    m.train()
    for pair in m.lora.values():
        pair.dropout = nn.Identity()  # the by-hand path (p > 0, training) without the random mask
    torch.testing.assert_close(m(x, x, x, attn_mask=mask)[0], ref, atol=1e-5, rtol=1e-5)
    out = m(x, x, x, attn_mask=mask)[0]
    out.sum().backward()
    assert all(p.grad is not None for p in m.lora.parameters()) and m.base.in_proj_weight.grad is None


def test_dropout_masks_the_branch_input_in_training():
    _, m = wrapped(params=("q",), dropout=0.5, random_b=True)
    x = torch.randn(L, N, D)
    m.train()
    a, b = m(x, x, x)[0], m(x, x, x)[0]
    assert not torch.allclose(a, b)  # a fresh mask per call
    m.eval()
    assert torch.equal(m(x, x, x)[0], m(x, x, x)[0])


def test_param_count_formula():
    assert count_lora_params(12, 3, 2, 768) + count_lora_params(12, 3, 2, 512) == 184_320  # ViT-B/16 defaults


needs_kit = pytest.mark.skipif("MicroViT" not in kit_model_names(), reason="kit weights missing")


def build(kit_root, kit_cache, tmp_path, trainer="CLIPLoRA", cfg="micro_vit", opts=()):
    return kit_trainer(trainer, "synth_shapes", kit_root, kit_cache, str(tmp_path / f"{trainer}_{cfg}"), 1, cfg,
                       opts=list(opts))


@pytest.fixture(scope="module")
def lora_vit(kit_root, kit_cache, tmp_path_factory):
    return build(kit_root, kit_cache, tmp_path_factory.mktemp("lora_vit"), opts=["TRAINER.CLIP_LORA.LOGIT_SCALE", 0.0])


@pytest.fixture(scope="module")
def images(lora_vit):
    return next(iter(lora_vit.test_loader))["img"][:8]


@needs_kit
def test_zero_init_equals_zero_shot_clip(lora_vit, images, kit_root, kit_cache, tmp_path):
    zs = build(kit_root, kit_cache, tmp_path, "ZeroshotCLIP")
    names = list(lora_vit.lora.keys())
    n_text = len(lora_vit.clip_model.transformer.resblocks)
    n_vis = len(lora_vit.clip_model.visual.transformer.resblocks)
    assert sum(k.startswith("text_") for k in names) == n_text and sum(k.startswith("vision_") for k in names) == n_vis
    lora_vit.set_model_mode("eval")
    lora_vit._eval_text = lora_vit.clip_model.encode_text(lora_vit.tokens).detach()
    try:
        got = lora_vit.model_inference(images)
    finally:
        lora_vit._eval_text = None
    torch.testing.assert_close(got, zs.model_inference(images), atol=1e-5, rtol=1e-5)


@needs_kit
def test_checkpoint_holds_only_the_factors_and_counts_per_formula(lora_vit, tmp_path):
    m = lora_vit.clip_model
    width_text, width_vis = m.transformer.width, m.visual.transformer.width
    expected = (count_lora_params(len(m.transformer.resblocks), 3, 2, width_text)
                + count_lora_params(len(m.visual.transformer.resblocks), 3, 2, width_vis))
    assert sum(p.numel() for p in lora_vit.lora.parameters()) == expected
    trainable = {id(p) for p in m.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in lora_vit.lora.parameters()}  # only the registered factors train
    assert all(p.requires_grad and p.dtype == torch.float32 for p in lora_vit.lora.parameters())
    lora_vit.save_model(0, str(tmp_path))
    saved = torch.load(tmp_path / "lora" / "model.pth.tar-1", map_location="cpu", weights_only=False)["state_dict"]
    assert all(k.endswith(("lora_A", "lora_B")) for k in saved) and sum(v.numel() for v in saved.values()) == expected
    assert len(lora_state_dict(m)) == len(saved)


@needs_kit
def test_merged_export_equals_the_unmerged_model(kit_root, kit_cache, tmp_path, images):
    t = build(kit_root, kit_cache, tmp_path)
    torch.manual_seed(1)
    for p in t.lora.parameters():
        if p.shape[1] == 2:  # B [d, r]
            nn.init.normal_(p, std=0.2)
    t.set_model_mode("eval")
    with torch.no_grad():
        t._eval_text = t.clip_model.encode_text(t.tokens)
        unmerged = t.model_inference(images)
        t._eval_text = None
    merged = t.export_merged(str(tmp_path / "merged.pth"))
    assert not any(isinstance(mod, LoRAMultiheadAttention) for mod in merged.modules())
    assert isinstance(t.clip_model.transformer.resblocks[0].attn, LoRAMultiheadAttention)  # trainer's copy unmerged
    state = torch.load(tmp_path / "merged.pth", map_location="cpu")
    assert not any("lora" in k for k in state) and "transformer.resblocks.0.attn.in_proj_weight" in state
    with torch.no_grad():
        f = F.normalize(merged.encode_image(images).float(), dim=-1)
        w = F.normalize(merged.encode_text(t.tokens).float(), dim=-1)
    torch.testing.assert_close(t.tau * f @ w.t(), unmerged, atol=1e-5, rtol=1e-5)


@needs_kit
def test_resnet_adapts_the_text_encoder_only(kit_root, kit_cache, tmp_path):
    t = build(kit_root, kit_cache, tmp_path, cfg="micro_rn", opts=["TRAINER.CLIP_LORA.ENCODERS", ["text", "vision"]])
    assert t.lora and all(k.startswith("text_") for k in t.lora)
    with pytest.raises(ConfigError, match=r"TRAINER.CLIP_LORA.ENCODERS is \['vision'\]"):
        build(kit_root, kit_cache, tmp_path / "v", cfg="micro_rn", opts=["TRAINER.CLIP_LORA.ENCODERS", ["vision"]])
    with pytest.raises(ConfigError, match="POSITIONS.*outside"):
        build(kit_root, kit_cache, tmp_path / "i", cfg="micro_rn", opts=["TRAINER.CLIP_LORA.POSITIONS", [99]])
    with pytest.raises(ConfigError, match="TRAINER.CLIP_LORA.PARAMS"):
        build(kit_root, kit_cache, tmp_path / "p", cfg="micro_rn", opts=["TRAINER.CLIP_LORA.PARAMS", ["x"]])


def test_apply_lora_on_positions_and_merge_in_place():
    from fsclip.clip.loader import load_clip

    if "MicroViT" not in kit_model_names():
        pytest.skip("kit weights missing")
    model = load_clip("MicroViT", device="cpu", precision="fp32")
    sites = apply_lora(model, ["vision"], [0], ["v"], r=2, alpha=1.0, dropout=0.0)
    assert list(sites) == ["vision_0"] and list(sites["vision_0"].lora) == ["v"]
    assert not isinstance(model.transformer.resblocks[0].attn, LoRAMultiheadAttention)
    merge_lora(model)
    assert not any(isinstance(mod, LoRAMultiheadAttention) for mod in model.modules())
