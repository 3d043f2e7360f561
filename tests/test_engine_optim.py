"""Optimizer and LR-scheduler builders: CoOp's per-epoch LRs and weights-only state."""

from __future__ import annotations

import io

import pytest
import torch

from fsclip.engine.config import get_cfg_default
from fsclip.engine.optim import build_lr_scheduler, build_optimizer


def _optim_cfg(**kw):
    o = get_cfg_default().OPTIM
    for k, v in kw.items():
        setattr(o, k, v)
    return o


def _lrs(o, epochs):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = build_optimizer([p], o)
    sched = build_lr_scheduler(opt, o)
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_coop_cosine_with_constant_warmup_gives_coop_lrs():
    o = _optim_cfg(NAME="sgd", LR=0.002, MAX_EPOCH=5, LR_SCHEDULER="cosine", WARMUP_EPOCH=1,
                   WARMUP_TYPE="constant", WARMUP_CONS_LR=1e-5)
    assert _lrs(o, 5) == pytest.approx([1e-5, 2e-3, 1.809e-3, 1.309e-3, 6.91e-4], rel=1e-3)


def test_linear_warmup_ramps_from_min_lr_then_hands_over():
    o = _optim_cfg(NAME="sgd", LR=0.1, MAX_EPOCH=6, LR_SCHEDULER="single_step", STEPSIZE=(4,),
                   WARMUP_EPOCH=3, WARMUP_TYPE="linear", WARMUP_MIN_LR=1e-4)
    lrs = _lrs(o, 6)
    assert lrs[:3] == pytest.approx([1e-4, 0.1 / 3, 0.2 / 3])
    assert lrs[3] == pytest.approx(0.1)


@pytest.mark.parametrize("name,stepsize,expected", [
    ("single_step", (2,), [1.0, 1.0, 0.1, 0.1, 0.01]),
    ("single_step", (-1,), [1.0] * 5),
    ("multi_step", (1, 3), [1.0, 0.1, 0.1, 0.01, 0.01]),
])
def test_step_schedulers(name, stepsize, expected):
    o = _optim_cfg(NAME="sgd", LR=1.0, MAX_EPOCH=5, LR_SCHEDULER=name, STEPSIZE=stepsize)
    assert _lrs(o, 5) == pytest.approx(expected)


def test_warmup_scheduler_state_is_weights_only_and_resumes_the_same_sequence():
    o = _optim_cfg(NAME="sgd", LR=0.002, MAX_EPOCH=5, LR_SCHEDULER="cosine", WARMUP_EPOCH=1,
                   WARMUP_TYPE="constant", WARMUP_CONS_LR=1e-5)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = build_optimizer([p], o)
    sched = build_lr_scheduler(opt, o)
    for _ in range(2):
        opt.step()
        sched.step()
    buf = io.BytesIO()
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)

    p2 = torch.nn.Parameter(torch.zeros(1))
    opt2 = build_optimizer([p2], o)
    sched2 = build_lr_scheduler(opt2, o)
    opt2.load_state_dict(state["optimizer"])
    sched2.load_state_dict(state["scheduler"])
    rest = []
    for _ in range(3):
        rest.append(opt2.param_groups[0]["lr"])
        opt2.step()
        sched2.step()
    assert rest == pytest.approx([1.809e-3, 1.309e-3, 6.91e-4], rel=1e-3)


@pytest.mark.parametrize("name,cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                      ("adamw", torch.optim.AdamW), ("rmsprop", torch.optim.RMSprop)])
def test_build_optimizer_names(name, cls):
    o = _optim_cfg(NAME=name, LR=0.01, WEIGHT_DECAY=0.1)
    opt = build_optimizer(torch.nn.Linear(2, 2), o)
    assert isinstance(opt, cls)
    assert opt.param_groups[0]["lr"] == 0.01 and opt.param_groups[0]["weight_decay"] == 0.1


def test_staged_lr_gives_base_layers_a_smaller_lr():
    model = torch.nn.Sequential()
    model.add_module("backbone", torch.nn.Linear(2, 2))
    model.add_module("head", torch.nn.Linear(2, 2))
    o = _optim_cfg(NAME="sgd", LR=0.1, STAGED_LR=True, NEW_LAYERS=("head",), BASE_LR_MULT=0.1)
    opt = build_optimizer(model, o)
    lrs = sorted(g["lr"] for g in opt.param_groups)
    assert lrs == pytest.approx([0.01, 0.1])


def test_unknown_names_raise_clear_errors():
    with pytest.raises(ValueError, match="OPTIM.NAME"):
        build_optimizer(torch.nn.Linear(2, 2), _optim_cfg(NAME="lamb"))
    opt = build_optimizer(torch.nn.Linear(2, 2), _optim_cfg(NAME="sgd"))
    with pytest.raises(ValueError, match="OPTIM.LR_SCHEDULER"):
        build_lr_scheduler(opt, _optim_cfg(LR_SCHEDULER="poly"))
    with pytest.raises(ValueError, match="WARMUP_TYPE"):
        build_lr_scheduler(opt, _optim_cfg(LR_SCHEDULER="cosine", WARMUP_EPOCH=1, WARMUP_TYPE="exp"))


@pytest.mark.parametrize("name", ["adam", "amsgrad", "adamw"])
def test_fused_optimizers_follow_the_default_update(name):
    """The fused kernel (taken where torch has one) must give the default implementation's steps."""
    o = _optim_cfg(NAME=name, LR=0.01, WEIGHT_DECAY=0.1)
    torch.manual_seed(0)
    init = [torch.randn(8, 5), torch.randn(5)]
    grads = [[torch.randn_like(t) for t in init] for _ in range(4)]
    ours = [torch.nn.Parameter(t.clone()) for t in init]
    plain = [torch.nn.Parameter(t.clone()) for t in init]
    opt = build_optimizer(ours, o)
    cls = {"adamw": torch.optim.AdamW}.get(name, torch.optim.Adam)
    ref = cls(plain, lr=0.01, weight_decay=0.1, betas=(o.ADAM_BETA1, o.ADAM_BETA2), amsgrad=name == "amsgrad",
              foreach=False)
    for g in grads:
        for p, q, gi in zip(ours, plain, g):
            p.grad, q.grad = gi.clone(), gi.clone()
        opt.step()
        ref.step()
    for p, q in zip(ours, plain):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6)
    assert not torch.equal(ours[0].detach(), init[0])


def test_adamw_helper_uses_the_fused_kernel_on_cpu_where_torch_has_it():
    from packaging.version import Version

    from fsclip.engine.optim import adamw

    opt = adamw([torch.nn.Parameter(torch.zeros(3))], lr=0.1, weight_decay=0.01)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["weight_decay"] == 0.01
    has_cpu_kernel = Version(torch.__version__.split("+")[0]) >= Version("2.4")
    assert bool(opt.defaults.get("fused")) == has_cpu_kernel
