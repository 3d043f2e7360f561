"""VT-CLIP, CALIP, CALIP-FS and their shared dense features: equations against hand computations
on small tensors, zero-shot parity, cached == uncached, CoOp's schedule, eval-only reloads."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import set_opts, zero_shot_logits
from test_safe_tip import first_test_batch, make_cfg, tiny_path  # noqa: F401  (tiny_path: fixture)

import fsclip.trainers  # noqa: F401
from fsclip.adapt.dense import SpatialBank, SpatialProjection, spatial_stem
from fsclip.adapt.epochs import fit_epochs, steps_per_epoch
from fsclip.adapt.heads import trunk_forward
from fsclip.backend import build_trainer
from fsclip.clip.features import (
    attnpool_all_tokens, attnpool_dense, attnpool_forward, resnet_trunk, vit_project_tokens, vit_tokens,
)
from fsclip.clip.tiny import build_tiny_clip
from fsclip.engine.config import get_cfg_default
from fsclip.errors import ConfigError
from fsclip.trainers.calip import CalipAttention, beta_grid, search_betas
from fsclip.trainers.vtclip import VisualGuidedBlock, VisualGuidedText

TIGHT = dict(rtol=1e-5, atol=1e-5)
IMAGES = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))

# CoOp's optimisation as the configs set it, short
COOP = {"OPTIM.NAME": "sgd", "OPTIM.LR": 0.002, "OPTIM.MAX_EPOCH": 3, "OPTIM.LR_SCHEDULER": "cosine",
        "OPTIM.WARMUP_EPOCH": 1, "OPTIM.WARMUP_TYPE": "constant", "OPTIM.WARMUP_CONS_LR": 1e-5,
        "TRAINER.VTCLIP.HEADS": 4, "TRAINER.CALIP.SEARCH_STEP": [10, 10]}


def cfg_for(toy_root, tmp_path, weights, trainer, **opts):
    return make_cfg(toy_root, tmp_path, weights, trainer, **{**COOP, **opts})


def perturb(module: nn.Module, scale: float = 0.2) -> None:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))


# ------------------------------------------------------------------ dense features
@torch.no_grad()
def test_attnpool_all_tokens_is_the_pool_with_every_query():
    model = build_tiny_clip("RN", seed=3)
    pool = model.visual.attnpool
    dense = resnet_trunk(model, IMAGES)
    out = attnpool_all_tokens(pool, dense)
    assert out.shape == (2, 1 + 4, 64)
    x = dense.flatten(2).permute(2, 0, 1)  # [HW, B, C]
    x = torch.cat([x.mean(dim=0, keepdim=True), x]) + pool.positional_embedding[:, None]
    reference, _ = F.multi_head_attention_forward(
        x, x, x, x.shape[-1], pool.num_heads, None,
        torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]), None, None, False, 0.0,
        pool.c_proj.weight, pool.c_proj.bias, use_separate_proj_weight=True, q_proj_weight=pool.q_proj.weight,
        k_proj_weight=pool.k_proj.weight, v_proj_weight=pool.v_proj.weight, need_weights=False)
    torch.testing.assert_close(out, reference.transpose(0, 1), **TIGHT)
    torch.testing.assert_close(out[:, 0], attnpool_forward(pool, dense), **TIGHT)  # row 0: CLIP's feature
    assert not torch.allclose(out[:, 1:], attnpool_dense(pool, dense)[:, 1:], atol=1e-3)


@torch.no_grad()
@pytest.mark.parametrize("arch", ["RN", "ViT"])
def test_spatial_stem_modes_and_learned_projection_start(arch):
    model = build_tiny_clip(arch, seed=5)
    visual = model.visual
    dense = trunk_forward(visual, IMAGES)
    project = spatial_stem(visual, dense, "project")
    if arch == "RN":
        torch.testing.assert_close(project, attnpool_dense(visual, dense)[:, 1:], **TIGHT)
        torch.testing.assert_close(spatial_stem(visual, dense, "attnpool"),
                                   attnpool_all_tokens(visual, dense)[:, 1:], **TIGHT)
    else:  # the last block over all tokens, then ln_post and proj on each patch token
        final = vit_tokens(visual, IMAGES)
        torch.testing.assert_close(project, vit_project_tokens(visual, final)[:, 1:], **TIGHT)
        torch.testing.assert_close(spatial_stem(visual, dense, "attnpool"), project, **TIGHT)
    assert project.shape == (2, 4 if arch == "RN" else 16, 64)  # 2x2 map or 4x4 patches at 64 px
    learned = SpatialProjection(visual, "learned")
    torch.testing.assert_close(learned(spatial_stem(visual, dense, "learned")), project, **TIGHT)
    assert sum(p.numel() for p in learned.parameters()) > 0
    assert not list(SpatialProjection(visual, "project").parameters())


def test_spatial_bank_stored_and_per_batch_agree():
    model = build_tiny_clip("RN", seed=5)
    trunk = torch.randn(5, 3, 256, 2, 2)  # [N, V, C, H, W] as the feature cache gives

    def fn(d):
        return spatial_stem(model.visual, d, "project")

    stored = SpatialBank(fn, trunk, torch.device("cpu"), 2**30, torch.float32, batch_size=4)
    per_batch = SpatialBank(fn, trunk, torch.device("cpu"), 0, torch.float32)
    assert stored.stored is not None and stored.stored.shape == (5, 3, 4, 64) and per_batch.stored is None
    idx, views = torch.tensor([4, 0, 2]), torch.tensor([2, 1, 0])
    expected = fn(trunk[idx, views])
    torch.testing.assert_close(stored.get(idx, views), expected, **TIGHT)
    torch.testing.assert_close(per_batch.get(idx, views), expected, **TIGHT)


# ------------------------------------------------------------------ VT-CLIP
def layer_norm(x, ln):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def attention_by_hand(query, keys, mha):
    """Multi-head attention ``[K, D]`` x ``[L, D]`` from the module's weights, head by head."""
    heads, d = mha.num_heads, mha.embed_dim // mha.num_heads
    wq, wk, wv = mha.in_proj_weight.chunk(3)
    bq, bk, bv = mha.in_proj_bias.chunk(3)
    outs = []
    for h in range(heads):
        s = slice(h * d, (h + 1) * d)
        q = query @ wq[s].t() + bq[s]
        k = keys @ wk[s].t() + bk[s]
        v = keys @ wv[s].t() + bv[s]
        scores = q @ k.t() / math.sqrt(d)
        weights = torch.exp(scores - scores.max(dim=1, keepdim=True).values)
        outs.append((weights / weights.sum(dim=1, keepdim=True)) @ v)
    return torch.cat(outs, dim=1) @ mha.out_proj.weight.t() + mha.out_proj.bias


def block_by_hand(text, visual, block):
    """One pre-norm decoder block on one image: text ``[K, D]``, V_s ``[L, D]``."""
    h = layer_norm(text, block.ln_self)
    x = text + attention_by_hand(h, h, block.self_attn)
    x = x + attention_by_hand(layer_norm(x, block.ln_cross), visual, block.cross_attn)
    lin1, lin2 = block.ffn[0], block.ffn[3]
    hidden = layer_norm(x, block.ln_ffn) @ lin1.weight.t() + lin1.bias
    hidden = 0.5 * hidden * (1 + torch.erf(hidden / math.sqrt(2)))  # GELU
    return x + hidden @ lin2.weight.t() + lin2.bias


@torch.no_grad()
@pytest.mark.parametrize("layers", [1, 2])
def test_visual_guided_text_matches_the_decoder_equations_by_hand(layers):
    torch.manual_seed(0)
    k, length, d, heads, b = 3, 5, 8, 2, 2
    module = VisualGuidedText(build_tiny_clip("RN").visual, "project", d, heads, layers, 2.0, 0.1).eval()
    perturb(module, 0.3)  # every sublayer, including the zero-initialised outputs, now acts
    text = F.normalize(torch.randn(k, d), dim=-1)
    stem = torch.randn(b, length, d)
    out = module(text, stem)
    assert out.shape == (b, k, d)
    for i in range(b):
        visual = layer_norm(stem[i], module.ln_visual)
        x = text
        for block in module.blocks:
            x = block_by_hand(x, visual, block)
        torch.testing.assert_close(out[i], x, rtol=1e-4, atol=1e-5)  # Eq. 5: T_c + CrossAttn(...)
    assert not torch.allclose(out[0], out[1])  # VT_c depends on the image


def test_fresh_block_is_identity_and_trains_away_from_it():
    block = VisualGuidedBlock(8, 2, 4.0, 0.0)
    text, visual = torch.randn(1, 3, 8), torch.randn(2, 5, 8)
    assert torch.equal(block(text, visual), text.expand(2, -1, -1))
    loss = block(text, visual).pow(3).sum()
    loss.backward()
    assert block.cross_attn.out_proj.weight.grad.abs().sum() > 0 and block.ffn[-1].weight.grad.abs().sum() > 0


def zero_outputs(module: VisualGuidedText) -> None:
    with torch.no_grad():
        for block in module.blocks:
            for out in (block.self_attn.out_proj, block.cross_attn.out_proj, block.ffn[-1]):
                out.weight.zero_()
                out.bias.zero_()


@pytest.mark.parametrize("visual_mode", ["project", "learned"])
def test_vtclip_with_zeroed_attention_output_equals_zero_shot(toy_root, tmp_path, tiny_path, visual_mode):
    trainer = build_trainer(cfg_for(toy_root, tmp_path, tiny_path, "VTCLIP",
                                    **{"TRAINER.VTCLIP.LAYERS": 2, "TRAINER.VTCLIP.VISUAL": visual_mode}))
    images, _ = first_test_batch(trainer)
    zero_shot = zero_shot_logits(trainer, images)
    torch.testing.assert_close(trainer.model_inference(images), zero_shot, rtol=1e-4, atol=1e-4)  # as built
    perturb(trainer.vt)
    assert not torch.allclose(trainer.model_inference(images), zero_shot, atol=1e-2)
    zero_outputs(trainer.vt)  # the rest (norms, q/k/v, V_s projection) stays perturbed
    torch.testing.assert_close(trainer.model_inference(images), zero_shot, rtol=1e-4, atol=1e-4)


def test_vtclip_config_errors(toy_root, tmp_path, tiny_path):
    with pytest.raises(ConfigError, match="HEADS"):
        build_trainer(cfg_for(toy_root, tmp_path, tiny_path, "VTCLIP", **{"TRAINER.VTCLIP.HEADS": 5}))
    with pytest.raises(ConfigError, match="VISUAL"):
        build_trainer(cfg_for(toy_root, tmp_path, tiny_path, "VTCLIP", **{"TRAINER.VTCLIP.VISUAL": "maskclip"}))


# ------------------------------------------------------------------ CALIP
def calip_by_hand(f, fs, ft, alpha_t, alpha_s, beta2, beta3, scale, module=None):
    """CALIP's logits for one image, sums written out; with ``module``, CALIP-FS's layers."""
    f, fs, ft = F.normalize(f, dim=-1), F.normalize(fs, dim=-1), F.normalize(ft, dim=-1)
    length, k = fs.shape[0], ft.shape[0]

    def qkv(x):
        if module is None:
            return x, x, x
        w, b = module.pre.delta.weight, module.pre.delta.bias
        d = x.shape[-1]
        return tuple(x + x @ w[i * d:(i + 1) * d].t() + b[i * d:(i + 1) * d] for i in range(3))

    def post(x):
        return x if module is None else x + x @ module.post.delta.weight.t() + module.post.delta.bias

    q_s, k_s, v_s = qkv(fs)
    q_t, k_t, v_t = qkv(ft)
    logits = torch.zeros(k)
    fv_a_rows = []
    for j in range(length):  # text-guided visual: softmax over classes
        e = torch.stack([torch.exp(q_s[j] @ k_t[c] / alpha_s) for c in range(k)])
        fv_a_rows.append(post(sum(e[c] / e.sum() * v_t[c] for c in range(k))))
    fv_a = torch.stack(fv_a_rows).mean(0) + torch.stack(fv_a_rows).max(0).values
    for c in range(k):  # visual-guided text: softmax over positions
        e = torch.stack([torch.exp(q_t[c] @ k_s[j] / alpha_t) for j in range(length)])
        ft_a = post(sum(e[j] / e.sum() * v_s[j] for j in range(length)))
        logits[c] = scale * (f @ ft[c] + beta2 * (f @ ft_a) + beta3 * (fv_a @ ft[c]))
    return logits


@torch.no_grad()
@pytest.mark.parametrize("learnable", [False, True])
def test_calip_attention_matches_the_equations_by_hand(learnable):
    torch.manual_seed(0)
    b, length, k, d = 2, 4, 3, 6
    module = CalipAttention(d, learnable)
    if learnable:
        perturb(module, 0.3)
    module.alpha_t.fill_(0.3)
    module.alpha_s.fill_(0.7)
    module.beta2.fill_(1.3)
    module.beta3.fill_(0.4)
    image, spatial, text = torch.randn(b, d), torch.randn(b, length, d), torch.randn(k, d)
    out = module(image, spatial, text, 50.0)
    for i in range(b):
        expected = calip_by_hand(image[i], spatial[i], text, 0.3, 0.7, 1.3, 0.4, 50.0, module if learnable else None)
        torch.testing.assert_close(out[i], expected, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_untrained_calip_fs_is_calip():
    torch.manual_seed(0)
    free, fs = CalipAttention(6), CalipAttention(6, learnable=True)
    image, spatial, text = torch.randn(2, 6), torch.randn(2, 4, 6), torch.randn(3, 6)
    torch.testing.assert_close(fs(image, spatial, text, 10.0, (0.8, 0.3)), free(image, spatial, text, 10.0, (0.8, 0.3)))


def test_search_betas_equals_brute_force_and_keeps_the_first_tie():
    gen = torch.Generator().manual_seed(0)
    base, t2, t3 = (torch.randn(30, 4, generator=gen) for _ in range(3))
    labels = torch.randint(4, (30,), generator=gen)
    beta2s, beta3s = beta_grid(2.0, 8), beta_grid(0.5, 5)
    assert beta2s[0] == 0.0 and beta2s[-1] == 2.0 and len(beta3s) == 6
    best = (None, None, -1.0)
    for b2 in beta2s:
        for b3 in beta3s:
            acc = float(((base + b2 * t2 + b3 * t3).argmax(1) == labels).float().mean() * 100)
            if acc > best[2]:
                best = (b2, b3, acc)
    got = search_betas(base, t2, t3, labels, beta2s, beta3s, chunk=50)  # a few beta3 values per pass
    assert got[:2] == pytest.approx(best[:2]) and got[2] == pytest.approx(best[2])
    # nothing to gain: zero-shot (0, 0) is kept
    assert search_betas(base, torch.zeros_like(t2), torch.zeros_like(t3), labels, beta2s, beta3s)[:2] == (0.0, 0.0)


def test_calip_with_betas_zero_equals_zero_shot(toy_root, tmp_path, tiny_path):
    trainer = build_trainer(cfg_for(toy_root, tmp_path, tiny_path, "CALIP", **{"TRAINER.FEATURES.PROMPTS": "single"}))
    images, _ = first_test_batch(trainer)
    zero_shot = zero_shot_logits(trainer, images)
    assert float(trainer.calip.beta2) == 0.0 and float(trainer.calip.beta3) == 0.0
    torch.testing.assert_close(trainer.model_inference(images), zero_shot, rtol=1e-4, atol=1e-4)
    trainer.calip.beta2.fill_(1.0)
    trainer.calip.beta3.fill_(0.5)
    assert not torch.allclose(trainer.model_inference(images), zero_shot, atol=1e-2)
    with pytest.raises(ConfigError, match="VISUAL"):
        build_trainer(cfg_for(toy_root, tmp_path, tiny_path, "CALIP", **{"TRAINER.CALIP.VISUAL": "learned"}))


# ------------------------------------------------------------------ training and protocol
def test_fit_epochs_follows_coop_schedule_and_keeps_the_best_epoch(monkeypatch):
    import fsclip.adapt.epochs as epochs

    cfg = get_cfg_default()
    set_opts(cfg, **{k: v for k, v in COOP.items() if k.startswith("OPTIM")})
    cfg.OPTIM.MAX_EPOCH = 4
    module = nn.Linear(2, 1)
    optimizers, lrs, seen, accs = [], [], [], iter([50.0, 10.0, 80.0, 20.0, 30.0])
    real_build = epochs.build_optimizer
    monkeypatch.setattr(epochs, "build_optimizer", lambda *a: optimizers.append(real_build(*a)) or optimizers[-1])

    def batch_loss(idx, views):
        seen.append((idx.tolist(), views.tolist()))
        lrs.append(optimizers[0].param_groups[0]["lr"])
        return module(torch.ones(len(idx), 2)).sum()

    res = fit_epochs(module, batch_loss, 70, 3, lambda: next(accs), cfg.OPTIM, 0.002, 0.0, 32, seed=0)
    assert steps_per_epoch(70, 32) == 2 and steps_per_epoch(10, 32) == 1
    assert len(seen) == 8 and all(len(i) == 32 and max(v) < 3 for i, v in seen)
    epoch1 = seen[0][0] + seen[1][0]
    assert len(set(epoch1)) == 64  # drawn without replacement within an epoch
    expected = [1e-5, 0.002, 0.002 * (1 + math.cos(math.pi / 4)) / 2, 0.002 * (1 + math.cos(math.pi / 2)) / 2]
    assert lrs[::2] == pytest.approx(expected) and lrs[1::2] == pytest.approx(expected)  # per epoch
    assert res.val_acc == 80.0 and res.step == 4  # epoch 2 of 4 was the best on val


@pytest.mark.parametrize("trainer_name", ["VTCLIP", "CALIP", "CALIP_FS"])
def test_cached_and_uncached_logits_agree_and_eval_only_reloads(toy_root, tmp_path, tiny_path, trainer_name):
    cfg = cfg_for(toy_root, tmp_path, tiny_path, trainer_name, **{"TRAINER.FEATURES.DTYPE": "fp32"})
    trainer = build_trainer(cfg)
    trainer.train()
    images, _ = first_test_batch(trainer)
    n = images.shape[0]
    cached = trainer.logits_from_dense(trainer.features("test")[:n, 0])
    torch.testing.assert_close(cached, trainer.model_inference(images), rtol=1e-4, atol=1e-4)
    module = trainer.vt if trainer_name == "VTCLIP" else trainer.calip
    fresh = build_trainer(cfg)
    fresh.load_model(cfg.OUTPUT_DIR)
    fresh_module = fresh.vt if trainer_name == "VTCLIP" else fresh.calip
    for (name, a), b in zip(module.state_dict().items(), fresh_module.state_dict().values()):
        assert torch.equal(a, b), name  # weights and chosen betas/alphas come back
    torch.testing.assert_close(fresh.model_inference(images), trainer.model_inference(images))


def test_a_sweep_of_the_three_runs_each_image_through_the_trunk_once(toy_root, tmp_path, tiny_path):
    """Shots x seeds x the three methods on one shared cache: every image goes through CLIP's
    trunk once per feature space (augmented train views; eval view), whichever run needs it first."""
    computed, train_paths, eval_paths = 0, set(), set()
    for shots in (1, 2):
        for seed in (1, 2):
            for name in ("VTCLIP", "CALIP", "CALIP_FS"):
                cfg = cfg_for(toy_root, tmp_path, tiny_path, name, **{"DATASET.NUM_SHOTS": shots, "SEED": seed,
                                                                      "OPTIM.MAX_EPOCH": 1})
                cfg.OUTPUT_DIR = str(tmp_path / "out" / f"{name}_{shots}_{seed}")
                trainer = build_trainer(cfg)
                trainer.train()
                computed += trainer.cache.computed
                data = trainer.dm.dataset
                train_paths |= {d.impath for d in data.train_x}
                eval_paths |= {d.impath for d in data.val + data.test}
    assert computed == len(train_paths) + len(eval_paths)
