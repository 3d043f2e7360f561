"""A grid of training settings as one stacked model: every setting's copy of a pooling head is a
slice of stacked parameters ``[S, ...]``, all copies see the same batch in one forward and one
backward, and each setting keeps its own AdamW learning rate, weight decay, cosine schedule and
early-stopping state (SAFE's ``LRS x WDS`` grid; ``trainers/safe.py``).

* ``StackedHead(visual, S)``: S copies of ``make_pooling_head(visual)`` (the attention pool in
  the single-query form of ``attnpool_forward``, or the last ViT block + ``ln_post`` + ``proj``),
  ``[B, ...] -> [S, B, D]``; ``head_state(snapshot)`` gives one setting's weights as the state
  dict of ``make_pooling_head``, so the rest of a trainer never sees the stacking.
* ``StackedAdamW``: torch's AdamW with one parameter group per setting over that setting's
  slices (views of the stacked tensors), so each setting is updated exactly as its own
  ``torch.optim.AdamW`` would update it; settings marked inactive are left untouched.
* ``train_stacked_with_early_stopping`` / ``grid_search_stacked``: the stacked counterparts of
  ``fsclip.adapt.search.train_with_early_stopping`` / ``grid_search``, with the same choices
  (best val accuracy, ties to the first setting in grid order) and the same divergence rules.

The weight gradients of the stacked matrices are written into ``.grad`` buffers kept across
steps (``fsclip.clip.features.weight_product(..., into_grad=True)``). A stacked gradient is S
times a copy's (RN50: 12 x 16 MB per projection); allocated anew every step, as autograd does,
each would come from fresh pages on a CPU (glibc maps blocks over 32 MB with mmap), and the page
faults cost more than the product that fills them.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from fsclip.clip.features import (
    Product, attnpool_params, attnpool_single_query, attnpool_tokens, is_vit, vit_head_params,
    vit_head_single_query, weight_product,
)
from fsclip.engine.optim import adamw

from .heads import make_pooling_head
from .search import RunResult, choose_best, diverged_line, grid_settings, log_result

# parameters that multiply activations (their gradients go into persistent buffers)
MATRICES = ("wq", "wk", "wv", "wc", "wo", "wfc", "wpr", "proj")


class StackedHead(nn.Module):
    """``n`` independent copies of ``make_pooling_head(visual)``, stacked: ``[B, ...] -> [n, B, D]``.

    Every copy starts as the pooling head of ``visual`` (AttnPool_O) and sees the same input.
    Parameters are named as in ``attnpool_params`` / ``vit_head_params`` with a leading setting
    dimension.
    """

    # evaluation (no gradients) runs all images of a batch at once, so each weight is read once
    # per batch, with the settings in groups of about this many images in all: few images (the
    # kit's val splits) share a group, tens of images go one setting at a time (the single-query
    # pool's [settings, heads, images, channels] activations then stay cache-sized)
    eval_images = 64

    def __init__(self, visual: Any, n: int) -> None:
        super().__init__()
        template = make_pooling_head(visual).requires_grad_(False)
        self.vit = is_vit(visual)
        self.n_settings = int(n)
        # kept out of .parameters() and .to(): the copy that head_state writes a setting into
        self._template = [template]
        self.eps = float(template.ln_post.eps) if self.vit else 0.0
        views = self._views(template)
        for name, t in views.items():
            self.register_parameter(name, nn.Parameter(t.detach().unsqueeze(0).repeat(n, *(1,) * t.dim())))
        self.names = list(views)

    def _views(self, head: nn.Module) -> Dict[str, Tensor]:
        if self.vit:
            return vit_head_params(head.block, head.ln_post, head.proj)
        return attnpool_params(head.attnpool)


    def forward(self, x: Tensor) -> Tensor:
        x = x.to(self.wq.dtype)
        params = {name: getattr(self, name) for name in self.names}
        if torch.is_grad_enabled():
            return self._forward(x, params, lambda a, w, t: weight_product(a, w, t, into_grad=True))  # [n, B, D]
        group = max(1, self.eval_images // x.shape[0])
        return torch.cat([self._forward(x, {k: v[s:s + group] for k, v in params.items()}, weight_product)
                          for s in range(0, self.n_settings, group)])

    def _forward(self, x: Tensor, params: Dict[str, Tensor], mm: Product) -> Tensor:
        if self.vit:
            return vit_head_single_query(x, **params, mm=mm, eps=self.eps)
        return attnpool_single_query(attnpool_tokens(x), **params, mm=mm)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop the gradients autograd allocates; the matrices' buffers are overwritten anyway."""
        for name in self.names:
            if name not in MATRICES:
                getattr(self, name).grad = None

    @torch.no_grad()
    def finite(self) -> Tensor:
        """``[n]`` bool: the settings whose weights hold no NaN or infinity (as ``all_finite``)."""
        ok = torch.ones(self.n_settings, dtype=torch.bool, device=self.wq.device)
        for name in self.names:
            ok &= torch.isfinite(getattr(self, name).reshape(self.n_settings, -1).sum(dim=1))
        return ok

    @torch.no_grad()
    def snapshot(self, s: int) -> Dict[str, Tensor]:
        """A copy of setting ``s``'s weights (for early stopping)."""
        return {name: getattr(self, name)[s].clone() for name in self.names}

    @torch.no_grad()
    def head_state(self, snapshot: Mapping[str, Tensor]) -> Dict[str, Tensor]:
        """The state dict of ``make_pooling_head(visual)`` holding ``snapshot``'s weights."""
        template = self._template[0]
        for name, view in self._views(template).items():
            view.copy_(snapshot[name])
        return {k: v.clone() for k, v in template.state_dict().items()}


class StackedAdamW:
    """AdamW over stacked parameters ``[S, ...]``, setting ``s`` with ``lrs[s]`` and
    ``weight_decays[s]``: torch's AdamW (fused where available, as ``fsclip.engine.optim.adamw``)
    with one parameter group per setting, whose parameters are views of that setting's slices.
    ``optimizer`` is that torch optimizer (give it to an LR scheduler: one schedule per group).
    ``step(active)`` updates only the active settings: an inactive one is not decayed, and its
    moments and step count do not move.
    """

    def __init__(self, params: Sequence[Tensor], lrs: Sequence[float], weight_decays: Sequence[float],
                 **kwargs: Any) -> None:
        self.stacked = list(params)
        if len(lrs) != len(weight_decays):
            raise ValueError(f"{len(lrs)} learning rates for {len(weight_decays)} weight decays")
        self.slices = [[nn.Parameter(p.detach()[s]) for p in self.stacked] for s in range(len(lrs))]
        groups = [{"params": sl, "lr": float(lr), "weight_decay": float(wd)}
                  for sl, lr, wd in zip(self.slices, lrs, weight_decays)]
        self.optimizer = adamw(groups, **kwargs)

    def step(self, active: Optional[Sequence[bool]] = None) -> None:
        for s, slices in enumerate(self.slices):
            on = active is None or bool(active[s])
            for p, sl in zip(self.stacked, slices):
                sl.grad = p.grad[s] if on and p.grad is not None else None
        self.optimizer.step()


def cross_entropy_per_setting(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy over the batch: ``[B, K] -> []`` or, per setting, ``[S, B, K] -> [S]``."""
    if logits.dim() == 2:
        return F.cross_entropy(logits, labels)
    s, b, k = logits.shape
    return F.cross_entropy(logits.reshape(s * b, k), labels.repeat(s), reduction="none").view(s, b).mean(dim=1)


def train_stacked_with_early_stopping(head: StackedHead, step_fn: Callable[[int], Tensor],
                                      eval_fn: Callable[[], Tensor], optimizer: StackedAdamW,
                                      scheduler: Optional[Any], iters: int, eval_every: int, patience: int,
                                      settings: Sequence[Dict[str, Any]],
                                      log: Callable[[str], None] = print) -> List[RunResult]:
    """``train_with_early_stopping`` for every setting of ``head`` at once: one ``RunResult``
    per setting, each exactly what a sequential run of that setting returns (up to float rounding).

    ``step_fn(i)`` returns the ``[S]`` losses of step i (one batch for all settings);
    ``eval_fn()`` the ``[S]`` validation accuracies. A setting stops on its own: after
    ``patience`` evaluations without a gain, or when it diverges (its loss NaN/inf before the
    update, or its weights NaN/inf before an evaluation); a stopped setting no longer changes.
    """
    n = head.n_settings
    accs = [float(a) for a in eval_fn()]
    best_acc, best_step = list(accs), [0] * n
    best = [head.snapshot(s) for s in range(n)]
    history: List[List[tuple]] = [[(0, a)] for a in accs]
    since_best, active, diverged = [0] * n, [True] * n, [False] * n

    def diverge(s: int, i: int) -> None:
        active[s], diverged[s] = False, True
        history[s].append((i, math.nan))
        log(diverged_line(settings[s], i))

    for i in range(1, iters + 1):
        if not any(active):
            break
        head.train()
        losses = step_fn(i)
        for s, ok in enumerate(torch.isfinite(losses).tolist()):
            if active[s] and not ok:
                diverge(s, i)
        if any(active):
            head.zero_grad()
            losses[torch.tensor(active, device=losses.device)].sum().backward()
            optimizer.step(active)
        if scheduler is not None:
            scheduler.step()
        if i % eval_every == 0 or i == iters:
            for s, ok in enumerate(head.finite().tolist()):
                if active[s] and not ok:
                    diverge(s, i)
            if not any(active):
                break
            head.eval()
            accs = [float(a) for a in eval_fn()]
            for s in range(n):
                if not active[s]:
                    continue
                history[s].append((i, accs[s]))
                if accs[s] > best_acc[s]:
                    best_acc[s], best_step[s], since_best[s] = accs[s], i, 0
                    best[s] = head.snapshot(s)
                else:
                    since_best[s] += 1
                    if patience and since_best[s] >= patience:
                        active[s] = False
    head.eval()
    return [RunResult(dict(settings[s]), best_acc[s], best_step[s], head.head_state(best[s]), history[s], diverged[s])
            for s in range(n)]


def grid_search_stacked(grid: Dict[str, Sequence[Any]], run_stacked: Callable[[List[Dict[str, Any]]], List[RunResult]],
                        max_stack: int = 0, log: Callable[[str], None] = print,
                        keys: Optional[Mapping[str, str]] = None) -> RunResult:
    """``grid_search`` with the settings trained together: ``run_stacked(settings)`` trains up to
    ``max_stack`` settings (0: all) as one stacked model and returns their results in order.
    Same choice as ``grid_search`` (ties: first in grid order; diverged runs left out; a
    ``TrainingDivergedError`` naming ``keys`` when all diverged)."""
    settings = grid_settings(grid)
    size = int(max_stack) if int(max_stack) > 0 else len(settings)
    results: List[RunResult] = []
    for start in range(0, len(settings), size):
        for result in run_stacked(settings[start:start + size]):
            log_result(result, log)
            results.append(result)
    return choose_best(results, keys, log=None)
