"""SAFE's grid as one stacked model (fsclip.adapt.stacked) against the sequential reference, and
diverging settings (fsclip.adapt.search) in SAFE, SAFE's stacked grid and Tip-Adapter-F."""

from __future__ import annotations

import contextlib
import copy
import io
import math
import os.path as osp
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from kit_learning import REPO, kit_trainer

from fsclip.adapt.heads import make_pooling_head
from fsclip.adapt.search import RunResult, TrainingDivergedError, grid_search, train_with_early_stopping
from fsclip.adapt.stacked import StackedAdamW, StackedHead, cross_entropy_per_setting
from fsclip.clip.features import resnet_trunk, vit_head, vit_run_blocks, vit_tokens
from fsclip.clip.loader import kit_model_names
from fsclip.clip.tiny import build_tiny_clip
from fsclip.errors import UserFacingError

needs_kit = pytest.mark.skipif(not {"MicroRN", "MicroViT"} <= set(kit_model_names()), reason="kit weights missing")


# ----------------------------------------------------------------------------- divergence
def _linear_run(losses, accs, eval_every=1, params=None):
    """train_with_early_stopping on a 2->1 linear layer with scripted losses and val accuracies."""
    module = nn.Linear(2, 1)
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    acc_iter = iter(accs)
    lines = []

    def step(i):
        return module(torch.ones(1, 2)).sum() * 0 + losses[i - 1]

    res = train_with_early_stopping(module, step, lambda: next(acc_iter), opt, None, len(losses), eval_every,
                                    params=params, log=lines.append)
    return module, res, lines


def test_a_nan_loss_ends_the_run_as_diverged_with_its_best_weights():
    module, res, lines = _linear_run([1.0, 1.0, math.nan, 1.0], [10.0, 30.0, 20.0, 99.0], params={"lr": 0.1})
    assert res.diverged and res.diverged_step == 3
    assert (res.val_acc, res.step) == (30.0, 1)  # the best evaluation before it diverged
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert torch.equal(module.weight, res.state["weight"])
    assert len(lines) == 1 and "step 3" in lines[0] and "lr=0.1" in lines[0]


def test_weights_turning_nan_count_as_diverged():
    module = nn.Linear(2, 1)
    opt = torch.optim.SGD(module.parameters(), lr=0.1)

    def step(i):
        if i == 3:
            with torch.no_grad():
                module.bias.fill_(math.inf)
        return torch.tensor(1.0, requires_grad=True)  # finite; no gradient reaches the module

    res = train_with_early_stopping(module, step, lambda: 50.0, opt, None, 10, 2, log=lambda _: None)
    assert res.diverged and res.diverged_step == 4 and torch.isfinite(module.bias).all()


def _scripted(params):
    diverged = params["lr"] >= 1
    return RunResult(dict(params), 99.0 if diverged else 10 * params["lr"], 5, {}, [(5, math.nan)], diverged)


def test_grid_search_leaves_diverged_runs_out():
    lines = []
    best = grid_search({"lr": [0.5, 10.0, 0.2]}, _scripted, log=lines.append)
    assert best.params == {"lr": 0.5}
    assert any("lr=10" in line and "diverged" in line for line in lines)


def test_every_run_diverging_is_one_error_naming_the_grid_keys():
    keys = {"lr": "TRAINER.SAFE.LRS", "weight_decay": "TRAINER.SAFE.WDS"}
    with pytest.raises(TrainingDivergedError) as err:
        grid_search({"lr": [10.0, 20.0], "weight_decay": [0.0]}, _scripted, log=lambda _: None, keys=keys)
    message = str(err.value)
    assert isinstance(err.value, UserFacingError) and "\n" not in message
    assert "TRAINER.SAFE.LRS" in message and "TRAINER.SAFE.WDS" in message and "lr=20" in message


# ----------------------------------------------------------------------------- stacked parts
def test_stacked_adamw_equals_torch_adamw_per_setting():
    """Each setting's slices move exactly as torch.optim.AdamW (the default implementation, not
    the fused kernel) moves its own copy, with that setting's lr, weight decay and schedule; an
    inactive setting does not move at all."""
    gen = torch.Generator().manual_seed(0)
    lrs, wds = [1e-2, 3e-3, 1e-1], [0.0, 0.5, 1e-2]
    stacked = [torch.randn(3, 4, 5, generator=gen).requires_grad_(), torch.randn(3, 7, generator=gen).requires_grad_()]
    copies = [[p[s].detach().clone().requires_grad_() for p in stacked] for s in range(3)]
    opt = StackedAdamW(stacked, lrs, wds, betas=(0.9, 0.98), eps=1e-6)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt.optimizer, T_max=6)
    refs = [torch.optim.AdamW(c, lr=lr, weight_decay=wd, betas=(0.9, 0.98), eps=1e-6, foreach=False)
            for c, lr, wd in zip(copies, lrs, wds)]
    ref_scheds = [torch.optim.lr_scheduler.CosineAnnealingLR(r, T_max=6) for r in refs]
    for step in range(6):
        grads = [torch.randn(p.shape, generator=gen) for p in stacked]
        for p, g in zip(stacked, grads):
            p.grad = g.clone()
        active = [True, step not in (2, 3), True]
        frozen = [p[1].detach().clone() for p in stacked]
        opt.step(active)
        sched.step()
        for s in range(3):
            if active[s]:
                for c, g in zip(copies[s], grads):
                    c.grad = g[s].clone()
                refs[s].step()
            ref_scheds[s].step()
        for s in range(3):
            for p, c in zip(stacked, copies[s]):
                torch.testing.assert_close(p[s], c, rtol=1e-6, atol=1e-7)
        if not active[1]:
            assert all(torch.equal(p[1], f) for p, f in zip(stacked, frozen))
    assert lrs[0] != lrs[1] and not torch.allclose(stacked[0][0], stacked[0][1])


@pytest.mark.parametrize("arch", ["RN", "ViT"])
def test_stacked_head_equals_independent_heads_in_value_and_gradient(arch):
    model = build_tiny_clip(arch, seed=2)
    images = torch.randn(5, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        dense = vit_tokens(model, images, 1) if arch == "ViT" else resnet_trunk(model, images)
    stacked = StackedHead(model.visual, 3)
    with torch.no_grad():
        for p in stacked.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    heads = []
    for s in range(3):
        head = make_pooling_head(model.visual)
        head.load_state_dict(stacked.head_state(stacked.snapshot(s)))
        heads.append(head)
    weights = F.normalize(torch.randn(4, 64, generator=torch.Generator().manual_seed(2)), dim=-1)
    labels = torch.tensor([0, 1, 2, 3, 1])
    out = stacked(dense)  # [3, 5, 64]
    losses = cross_entropy_per_setting(20 * F.normalize(out, dim=-1) @ weights.t(), labels)
    losses.sum().backward()
    for s, head in enumerate(heads):
        ref = head(dense)
        torch.testing.assert_close(out[s], ref, rtol=1e-5, atol=1e-5)
        loss = F.cross_entropy(20 * F.normalize(ref, dim=-1) @ weights.t(), labels)
        torch.testing.assert_close(losses[s], loss, rtol=1e-5, atol=1e-6)
        loss.backward()
        grads = copy.deepcopy(head)  # the head's gradients, seen through the stacked names
        for p, q in zip(grads.parameters(), head.parameters()):
            p.data = q.grad if q.grad is not None else torch.zeros_like(q)
        for name, g in stacked._views(grads).items():
            torch.testing.assert_close(getattr(stacked, name).grad[s], g, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(out[0], out[1], atol=1e-3)  # the copies really differ
    with torch.no_grad():  # evaluation runs the settings in groups (here of 2, then 1)
        stacked.eval_images = 10
        torch.testing.assert_close(stacked(dense), out.detach())


def test_vit_head_single_query_equals_the_last_block_with_gradients():
    """ViTPoolingHead computes the class token only; same value and gradients as the block."""
    model = build_tiny_clip("ViT", seed=4, vision_layers=3, vision_width=128)
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        tokens = vit_tokens(model, images, 1)
    head = make_pooling_head(model.visual)
    out = head(tokens)
    torch.testing.assert_close(out, vit_head(model, vit_run_blocks(model, tokens, 2)), rtol=1e-5, atol=1e-5)
    full = copy.deepcopy(head)
    x = full.block(tokens.permute(1, 0, 2)).permute(1, 0, 2)
    ref = full.ln_post(x[:, 0]) @ full.proj
    target = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1))
    (out * target).sum().backward()
    (ref * target).sum().backward()
    for (name, p), q in zip(head.named_parameters(), full.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)


# ----------------------------------------------------------------------------- SAFE on the kit
def _fit(kit_root, kit_cache, out, kit_cfg, opts, trainer="SAFE"):
    """fit_safe then the final test of a kit run: (best RunResult, test accuracy, printed lines)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        t = kit_trainer(trainer, "synth_shapes", kit_root, kit_cache, str(out), 1, kit_cfg, 2, opts)
        best = t.fit_safe()
        acc = t.test()
    return best, acc, buf.getvalue().splitlines()


SMALL_GRID = ["TRAINER.SAFE.ITERS", 40, "TRAINER.SAFE.EVAL_EVERY", 10, "TRAINER.SAFE.PATIENCE", 2,
              "TRAINER.SAFE.LRS", "[1e-3, 1e-4]", "TRAINER.SAFE.WDS", "[0.0, 0.1]"]


@needs_kit
@pytest.mark.parametrize("kit_cfg", ["micro_rn", "micro_vit"])
def test_batched_grid_chooses_what_the_sequential_grid_chooses(kit_root, kit_cache, tmp_path, kit_cfg):
    """Same setting and step, val and test accuracy within float rounding; every setting's
    val accuracy and stopping step too (2 x 2 grid in stacks of at most 3: two stacked runs)."""
    seq = _fit(kit_root, kit_cache, tmp_path / "seq", kit_cfg, SMALL_GRID + ["TRAINER.SAFE.GRID_BATCHED", False])
    bat = _fit(kit_root, kit_cache, tmp_path / "bat", kit_cfg,
               SMALL_GRID + ["TRAINER.SAFE.GRID_BATCHED", True, "TRAINER.SAFE.GRID_MAX_STACK", 3])
    assert bat[0].params == seq[0].params and bat[0].step == seq[0].step
    assert bat[0].val_acc == pytest.approx(seq[0].val_acc, abs=1e-4)
    assert bat[1] == pytest.approx(seq[1], abs=1e-4)
    searched = [[line for line in run[2] if line.startswith("* search:")] for run in (seq, bat)]
    assert len(searched[0]) == 4 and searched[0] == searched[1]
    assert any("trained together" in line for line in bat[2])
    assert bat[0].step > 0  # training moved the chosen setting off AttnPool_O


@needs_kit
@pytest.mark.parametrize("batched", [False, True])
def test_a_diverging_setting_is_left_out_and_the_run_finishes(kit_root, kit_cache, tmp_path, batched):
    opts = ["TRAINER.SAFE.ITERS", 20, "TRAINER.SAFE.EVAL_EVERY", 10, "TRAINER.SAFE.WDS", "[0.0]",
            "TRAINER.SAFE.GRID_BATCHED", batched]
    best, acc, lines = _fit(kit_root, kit_cache, tmp_path / "mixed", "micro_rn",
                            opts + ["TRAINER.SAFE.LRS", "[1e-3, 1e9]"])
    alone, acc_alone, _ = _fit(kit_root, kit_cache, tmp_path / "alone", "micro_rn", opts + ["TRAINER.SAFE.LRS", "[1e-3]"])
    assert best.params["lr"] == 1e-3 and not best.diverged
    assert (best.step, best.val_acc, acc) == (alone.step, pytest.approx(alone.val_acc), pytest.approx(acc_alone))
    assert any(line.startswith("* diverged:") and "lr=1e+09, weight_decay=0" in line for line in lines)
    assert any(line.startswith("* search: lr=1e+09") and "diverged" in line for line in lines)


@needs_kit
def test_every_setting_diverging_is_one_error_line_in_the_log(kit_root, kit_cache, tmp_path):
    from kit_learning import config_file

    out = tmp_path / "run"
    args = [sys.executable, osp.join(REPO, "train.py"), "--root", kit_root, "--trainer", "SAFE", "--seed", "1",
            "--dataset-config-file", osp.join(REPO, "configs", "datasets", "synth_shapes.yaml"),
            "--config-file", config_file("SAFE", "micro_rn"), "--output-dir", str(out),
            "DATASET.NUM_SHOTS", "1", "USE_CUDA", "False", "TRAINER.FEATURES.CACHE_DIR", kit_cache,
            "TRAINER.SAFE.ITERS", "10", "TRAINER.SAFE.LRS", "[1e9, 1e10]", "TRAINER.SAFE.WDS", "[0.0]"]
    res = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    errors = [line for line in res.stdout.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1 and "TRAINER.SAFE.LRS" in errors[0] and "lr=1e+10" in errors[0]
    assert "Traceback" not in res.stderr
    assert errors[0] in (out / "log.txt").read_text()


@needs_kit
def test_tip_adapter_f_diverging_is_one_error_naming_its_key(kit_root, kit_cache, tmp_path):
    t = kit_trainer("TipAdapterF", "synth_shapes", kit_root, kit_cache, str(tmp_path), 1, "micro_rn", 1,
                    ["TRAINER.TIP.LR", 1e9, "TRAINER.TIP.EPOCHS", 3])
    with contextlib.redirect_stdout(io.StringIO()), pytest.raises(TrainingDivergedError, match="TRAINER.TIP.LR"):
        t.fit()


@pytest.mark.parametrize("lrs", [[1e30], [1e-3, 1e30]])
def test_the_linear_sweep_leaves_diverged_runs_out_and_names_its_keys(lrs, capsys):
    """The cross-modal sweep (fsclip.adapt.linear) under the same rules: a diverged lr is left
    out; every run diverging is one error naming the trainer's keys."""
    from yacs.config import CfgNode as CN

    from fsclip.adapt.linear import add_linear_head_cfg, sweep_linear_head

    gen = torch.Generator().manual_seed(0)
    node = add_linear_head_cfg(CN())
    node.ITERS, node.EVAL_EVERY, node.WARMUP_ITERS, node.LRS, node.WDS, node.BATCH_SIZES = 6, 3, 0, lrs, [1e-2], [4]
    views, labels = torch.randn(8, 2, 16, generator=gen), torch.arange(8) % 4
    args = (F.normalize(torch.randn(4, 16, generator=gen), dim=-1), 50.0, views, labels, views[:, 0], labels, node)
    lines = []
    if len(lrs) == 1:
        with pytest.raises(TrainingDivergedError, match="TRAINER.CROSSMODAL.LRS / TRAINER.CROSSMODAL.WDS"):
            sweep_linear_head(*args, log=lines.append, node_name="TRAINER.CROSSMODAL")
    else:
        best = sweep_linear_head(*args, log=lines.append, node_name="TRAINER.CROSSMODAL")
        assert best.params["lr"] == 1e-3 and not best.diverged
    printed = capsys.readouterr().out.splitlines()  # the run's own line (printed), the search's (log)
    assert any(line.startswith("* diverged:") and "lr=1e+30" in line for line in printed)
    assert any(line.startswith("* search: lr=1e+30") and "diverged" in line for line in lines)
