"""CLIP-SVD's parity tests: the singular-value modules against nn.MultiheadAttention / nn.Linear
(unchanged s) and against attention computed by hand with U diag(s') V^T (changed s); the
untrained trainer against zero-shot CLIP; the merged export against the adapted model; the
parameter count at ViT-B/16 size; checkpoints holding only s; the on-disk SVD cache."""

from __future__ import annotations

import contextlib
import io
import math
import os
import os.path as osp

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from kit_learning import kit_trainer

from fsclip.clip.loader import kit_model_names, load_clip
from fsclip.errors import ConfigError
from fsclip.lowrank import (SVDLinear, SVDMultiheadAttention, apply_svd, count_svd_params, merge_svd,
                            svd_factors, svd_state_dict, weight_matrices)

D, H, L, N = 16, 2, 5, 3


def causal_mask(n: int) -> torch.Tensor:
    return torch.full((n, n), float("-inf")).triu(1)  # CLIP's text mask


def svd64(w: torch.Tensor):
    """The reference factorisation, in float64."""
    return torch.linalg.svd(w.double(), full_matrices=False)


def wrapped(params="qkvo"):
    torch.manual_seed(0)
    base = nn.MultiheadAttention(D, H)
    nn.init.normal_(base.in_proj_bias), nn.init.normal_(base.out_proj.bias)
    w = {"q": base.in_proj_weight[:D], "k": base.in_proj_weight[D:2 * D], "v": base.in_proj_weight[2 * D:],
         "o": base.out_proj.weight}
    return base, SVDMultiheadAttention(base, svd_factors({p: w[p] for p in params}))


def perturb(module: nn.Module, seed: int = 1, scale: float = 0.3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("s"):
                p.mul_(1 + scale * torch.randn(p.shape, generator=g))


def test_unchanged_singular_values_give_the_frozen_modules_bit_for_bit():
    base, m = wrapped()
    x, mask = torch.randn(L, N, D), causal_mask(L)
    assert torch.equal(m(x, x, x, need_weights=False, attn_mask=mask)[0],
                       base(x, x, x, need_weights=False, attn_mask=mask)[0])
    lin = nn.Linear(D, 4 * D)
    y = torch.randn(L, N, D)
    assert torch.equal(SVDLinear(lin, svd_factors({"w": lin.weight})["w"])(y), lin(y))
    half = nn.Linear(D, 4 * D).half()  # fp16 weights (PREC fp16): W kept exactly, s in float32
    wrapped_half = SVDLinear(half, svd_factors({"w": half.weight})["w"])
    assert wrapped_half.sv.s.dtype == torch.float32 and torch.equal(wrapped_half.merged_weight(), half.weight)


def test_changed_singular_values_equal_attention_by_hand():
    """softmax(q k^T / sqrt(d_h) + mask) v with W_p = U_p diag(s_p') V_p^T (float64 SVD), p in q, k, v, o."""
    base, m = wrapped()
    perturb(m)
    x, mask = torch.randn(L, N, D), causal_mask(L)
    w, bias = {}, {p: base.in_proj_bias[i * D:(i + 1) * D] for i, p in enumerate("qkv")}
    bias["o"] = base.out_proj.bias
    for i, p in enumerate("qkvo"):
        u, s, vh = svd64(base.in_proj_weight[i * D:(i + 1) * D] if p != "o" else base.out_proj.weight)
        scale = m.sv[p].s.detach().double() / m.sv[p].s0.double()  # the perturbation of each s
        w[p] = (u * (s * scale)) @ vh
        assert not torch.allclose(w[p].float(), (base.in_proj_weight[i * D:(i + 1) * D] if p != "o"
                                                 else base.out_proj.weight), atol=1e-3)
    xd = x.double()
    q, k, v = ((xd @ w[p].t() + bias[p].double()).reshape(L, N, H, D // H).permute(1, 2, 0, 3) for p in "qkv")
    att = (q @ k.transpose(-1, -2) / math.sqrt(D // H) + mask.double()).softmax(-1)
    ref = (att @ v).permute(2, 0, 1, 3).reshape(L, N, D) @ w["o"].t() + bias["o"].double()
    out = m(x, x, x, attn_mask=mask)[0]
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.sv.parameters())
    assert base.in_proj_weight.grad is None and base.in_proj_bias.grad is None


def test_a_linear_with_changed_singular_values_and_only_some_attention_matrices():
    lin = nn.Linear(D, 4 * D)
    m = SVDLinear(lin, svd_factors({"w": lin.weight})["w"])
    perturb(m, seed=2)
    u, s, vh = svd64(lin.weight)
    x = torch.randn(N, D)
    ref = x.double() @ ((u * (s * m.sv.s.detach().double() / m.sv.s0.double())) @ vh).t() + lin.bias.double()
    torch.testing.assert_close(m(x).double(), ref, atol=1e-5, rtol=1e-5)
    base, only_v = wrapped("v")
    perturb(only_v)
    w_in, w_out = only_v.merged_weights()
    assert torch.equal(w_in[:2 * D], base.in_proj_weight[:2 * D]) and torch.equal(w_out, base.out_proj.weight)
    assert not torch.allclose(w_in[2 * D:], base.in_proj_weight[2 * D:], atol=1e-3)


def test_parameter_count_at_vit_b16_size():
    from fsclip.clip.real_sizes import build_real_size_clip

    model = build_real_size_clip("ViT-B/16", init=False)  # shapes only: no SVD of 144 matrices here
    weights = weight_matrices(model)
    assert len(weights) == 2 * 12 * 6
    assert sum(min(w.shape) for w in weights.values()) == 92_160  # new-methods-facts: 55,296 + 36,864
    assert count_svd_params(12, 6, 768) + count_svd_params(12, 6, 512) == 92_160
    assert tuple(weights["vision_11_c_fc"].shape) == (3072, 768) and tuple(weights["text_0_q"].shape) == (512, 512)


# ------------------------------------------------------------------ the cache
class _Exploit:
    """Unpickling it creates a folder: a full unpickler would run it, weights_only refuses it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.makedirs, (self.path,))


def test_the_svd_cache_is_reused_and_a_bad_file_recomputed(tmp_path, monkeypatch, capsys):
    import fsclip.lowrank.svd_cache as svd

    torch.manual_seed(0)
    weights = {"a": torch.randn(12, 8), "b": torch.randn(8, 20).half()}
    first = svd_factors(weights, str(tmp_path))
    (path,) = [str(p) for p in tmp_path.iterdir()]
    assert "computed and cached" in capsys.readouterr().out
    monkeypatch.setattr(svd, "_decompose", lambda w: pytest.fail("recomputed although cached"))
    again = svd_factors({"a": weights["a"].clone(), "b": weights["b"].float()}, str(tmp_path))  # fp32 copy: same key
    assert "loaded from" in capsys.readouterr().out
    assert all(torch.equal(x, y) for k in first for x, y in zip(first[k], again[k]))
    monkeypatch.undo()

    svd_factors({"a": weights["a"] + 1e-3, "b": weights["b"]}, str(tmp_path))  # other weights: another file
    assert len(os.listdir(tmp_path)) == 2

    bad = {"truncated": open(path, "rb").read()[:100]}
    state = torch.load(path, weights_only=True)
    state["a.U"] = state["a.U"] * 2  # loads fine, does not reproduce W
    buf = io.BytesIO()
    torch.save(state, buf)
    bad["tampered"] = buf.getvalue()
    buf = io.BytesIO()
    torch.save({"format": 1, "payload": _Exploit(str(tmp_path.parent / f"{tmp_path.name}-unpickled"))}, buf)
    bad["pickled object"] = buf.getvalue()
    for what, data in bad.items():
        with open(path, "wb") as f:
            f.write(data)
        got = svd_factors(weights, str(tmp_path))
        out = capsys.readouterr().out
        assert "WARNING: the SVD cache file" in out and "computing the SVD again" in out, what
        assert all(torch.equal(x, y) for k in first for x, y in zip(first[k], got[k])), what
        assert "loaded from" in (svd_factors(weights, str(tmp_path)), capsys.readouterr().out)[1], what  # rewritten
    assert not osp.exists(tmp_path.parent / f"{tmp_path.name}-unpickled")  # weights_only=True: never run


# ------------------------------------------------------------------ the trainer on the kit
needs_kit = pytest.mark.skipif("MicroViT" not in kit_model_names(), reason="kit weights missing")


def build(kit_root, kit_cache, tmp_path, trainer="CLIPSVD", opts=()):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        t = kit_trainer(trainer, "synth_shapes", kit_root, kit_cache, str(tmp_path / trainer), 1, "micro_vit",
                        opts=list(opts))
    t.build_log = buf.getvalue()
    return t


@pytest.fixture(scope="module")
def svd_vit(kit_root, kit_cache, tmp_path_factory):
    return build(kit_root, kit_cache, tmp_path_factory.mktemp("svd_vit"), opts=["TRAINER.CLIP_SVD.LOGIT_SCALE", 0.0])


@pytest.fixture(scope="module")
def images(svd_vit):
    return next(iter(svd_vit.test_loader))["img"][:8]


def eval_logits(t, images):
    t.set_model_mode("eval")
    with torch.no_grad():
        t._eval_text = t.clip_model.encode_text(t.tokens)
        try:
            return t.model_inference(images)
        finally:
            t._eval_text = None


@needs_kit
def test_untrained_equals_zero_shot_clip(svd_vit, images, kit_root, kit_cache, tmp_path):
    zs = build(kit_root, kit_cache, tmp_path, "ZeroshotCLIP")
    frozen = load_clip("MicroViT", device="cpu", precision="fp32").eval()
    with torch.no_grad():  # the adapted encoders with unchanged s are the frozen ones, bit for bit
        assert torch.equal(svd_vit.clip_model.encode_image(images), frozen.encode_image(images))
        assert torch.equal(svd_vit.clip_model.encode_text(svd_vit.tokens), frozen.encode_text(svd_vit.tokens))
    torch.testing.assert_close(eval_logits(svd_vit, images), zs.model_inference(images), atol=1e-5, rtol=1e-5)


@needs_kit
def test_checkpoint_holds_only_the_singular_values_and_counts_per_formula(svd_vit, kit_root, kit_cache, tmp_path):
    m = svd_vit.clip_model
    expected = (count_svd_params(len(m.transformer.resblocks), 6, m.transformer.width)
                + count_svd_params(len(m.visual.transformer.resblocks), 6, m.visual.transformer.width))
    assert sum(p.numel() for p in svd_vit.svd.parameters()) == expected
    assert {id(p) for p in m.parameters() if p.requires_grad} == {id(p) for p in svd_vit.svd.parameters()}
    assert all(p.dtype == torch.float32 for p in svd_vit.svd.parameters())
    svd_vit.save_model(0, str(tmp_path))
    saved = torch.load(tmp_path / "svd" / "model.pth.tar-1", map_location="cpu", weights_only=False)["state_dict"]
    assert all(k.endswith(".s") for k in saved) and sum(v.numel() for v in saved.values()) == expected
    assert len(svd_state_dict(m)) == len(saved)
    # a second build reads the SVD from the cache folder under the feature cache
    assert "computed" in svd_vit.build_log or "loaded from" in svd_vit.build_log
    again = build(kit_root, kit_cache, tmp_path / "again")
    assert f"loaded from {osp.join(kit_cache, 'svd')}" in again.build_log, again.build_log


@needs_kit
def test_merged_export_equals_the_adapted_model(kit_root, kit_cache, tmp_path, images):
    t = build(kit_root, kit_cache, tmp_path)
    untrained = eval_logits(t, images)
    perturb(t.svd, seed=3, scale=0.1)
    adapted = eval_logits(t, images)
    assert not torch.allclose(adapted, untrained, atol=1e-2)  # the change is visible in the logits
    merged = t.export_merged(str(tmp_path / "merged.pth"))
    assert not any(isinstance(mod, (SVDLinear, SVDMultiheadAttention)) for mod in merged.modules())
    assert isinstance(t.clip_model.transformer.resblocks[0].mlp.c_fc, SVDLinear)  # the trainer's copy kept
    state = torch.load(tmp_path / "merged.pth", map_location="cpu", weights_only=True)
    assert not any(".sv." in k for k in state) and "visual.transformer.resblocks.0.mlp.c_fc.weight" in state
    sv = t.svd["vision_0_c_fc"]  # the merged weight is U diag(s') V^T
    frozen = load_clip("MicroViT", device="cpu", precision="fp32").visual.transformer.resblocks[0].mlp.c_fc.weight
    u, s, vh = svd64(frozen)
    by_hand = (u * (s * sv.s.detach().double() / sv.s0.double())) @ vh
    torch.testing.assert_close(state["visual.transformer.resblocks.0.mlp.c_fc.weight"].double(), by_hand,
                               atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        f = F.normalize(merged.encode_image(images).float(), dim=-1)
        w = F.normalize(merged.encode_text(t.tokens).float(), dim=-1)
    torch.testing.assert_close(t.tau * f @ w.t(), adapted, atol=1e-5, rtol=1e-5)


@needs_kit
def test_resnet_and_bad_options_are_one_config_error(kit_root, kit_cache, tmp_path):
    rn = ["MODEL.BACKBONE.NAME", "MicroRN"]
    with pytest.raises(ConfigError, match=r"ENCODERS has \"vision\" but MicroRN is a ResNet.*ENCODERS \[\"text\"\]"):
        build(kit_root, kit_cache, tmp_path / "rn", opts=rn)
    t = build(kit_root, kit_cache, tmp_path / "rn_text", opts=rn + ["TRAINER.CLIP_SVD.ENCODERS", ["text"]])
    assert t.svd and all(k.startswith("text_") for k in t.svd)
    with pytest.raises(ConfigError, match="POSITIONS.*outside"):
        build(kit_root, kit_cache, tmp_path / "i", opts=["TRAINER.CLIP_SVD.POSITIONS", [99]])
    with pytest.raises(ConfigError, match="TRAINER.CLIP_SVD.MATRICES"):
        build(kit_root, kit_cache, tmp_path / "p", opts=["TRAINER.CLIP_SVD.MATRICES", ["x"]])


def test_apply_svd_on_positions_and_merge_in_place(tmp_path):
    if "MicroViT" not in kit_model_names():
        pytest.skip("kit weights missing")
    model = load_clip("MicroViT", device="cpu", precision="fp32")
    sites = apply_svd(model, ["vision"], [1], ["v", "c_proj"], cache_dir="")
    assert list(sites) == ["vision_1_v", "vision_1_c_proj"]
    assert isinstance(model.visual.transformer.resblocks[1].attn, SVDMultiheadAttention)
    assert not isinstance(model.visual.transformer.resblocks[0].attn, SVDMultiheadAttention)
    assert not isinstance(model.visual.transformer.resblocks[1].mlp.c_fc, SVDLinear)
    merge_svd(model)
    assert not any(isinstance(mod, (SVDLinear, SVDMultiheadAttention)) for mod in model.modules())
