"""CoOp's training protocol for a module on cached image views, with early stopping on val.

CoOp (and VT-CLIP, CALIP-FS, which follow it) train with ``cfg.OPTIM``: SGD, a cosine schedule
over ``OPTIM.MAX_EPOCH`` epochs after a constant warmup epoch, stepped once per epoch, batches
of ``DATALOADER.TRAIN_X.BATCH_SIZE`` images drawn without replacement (Dassl's RandomSampler with
the last incomplete batch dropped). Here each image of a batch comes as one of its cached
augmented views, drawn at random: the views play the role of CLIP's random-crop-and-flip
augmentation. The module is validated every ``eval_every`` epochs and the best epoch is kept
(``fsclip.adapt.search.train_with_early_stopping``).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import torch
import torch.nn as nn
from torch import Tensor

from fsclip.engine.optim import build_lr_scheduler, build_optimizer

from .search import RunResult, train_with_early_stopping


class _PerEpoch:
    """Steps ``scheduler`` once every ``steps`` calls (a per-epoch schedule driven per step)."""

    def __init__(self, scheduler: Any, steps: int) -> None:
        self.scheduler, self.steps, self.calls = scheduler, steps, 0

    def step(self) -> None:
        self.calls += 1
        if self.calls % self.steps == 0:
            self.scheduler.step()


def steps_per_epoch(num_images: int, batch_size: int) -> int:
    """Batches per epoch: the last incomplete one is dropped, as Dassl's training loader does
    (one batch of every image when there are fewer than ``batch_size``)."""
    return num_images // max(1, min(int(batch_size), num_images))


def fit_epochs(module: nn.Module, batch_loss: Callable[[Tensor, Tensor], Tensor], num_images: int,
               num_views: int, val_accuracy: Callable[[], float], optim_cfg: Any, lr: float,
               weight_decay: float, batch_size: int, seed: int, eval_every: int = 1, patience: int = 0,
               params: Optional[Dict[str, Any]] = None, log: Callable[[str], None] = print) -> RunResult:
    """Train ``module`` for ``optim_cfg.MAX_EPOCH`` epochs; keep the epoch best on val.

    ``batch_loss(idx, views)`` gets the image indices of a batch and one view index per image
    (CPU long tensors) and returns the loss. ``val_accuracy()`` evaluates the module (in eval
    mode) on the val split. ``lr`` and ``weight_decay`` replace ``OPTIM.LR`` and
    ``OPTIM.WEIGHT_DECAY``; everything else (optimizer, momentum, schedule, warmup) comes from
    ``optim_cfg``. The returned step counts optimisation steps (``step / steps_per_epoch``
    epochs).
    """
    epochs = int(optim_cfg.MAX_EPOCH)
    if epochs < 1:
        raise ValueError(f"OPTIM.MAX_EPOCH must be >= 1, got {epochs}")
    bs = max(1, min(int(batch_size), num_images))
    per_epoch = steps_per_epoch(num_images, bs)
    ocfg = optim_cfg.clone()
    ocfg.defrost()
    ocfg.LR = float(lr)
    ocfg.WEIGHT_DECAY = float(weight_decay)
    optimizer = build_optimizer([p for p in module.parameters() if p.requires_grad], ocfg)
    scheduler = _PerEpoch(build_lr_scheduler(optimizer, ocfg), per_epoch)
    gen = torch.Generator().manual_seed(seed)
    order = torch.empty(0, dtype=torch.long)
    losses: list = []
    lrs: list = []  # the learning rate of each step
    report_every = max(1, epochs // 10)

    def step(i: int) -> Tensor:
        nonlocal order
        b = (i - 1) % per_epoch
        if b == 0:
            order = torch.randperm(num_images, generator=gen)
        idx = order[b * bs:(b + 1) * bs]
        views = torch.randint(num_views, (len(idx),), generator=gen)
        loss = batch_loss(idx, views)
        losses.append(float(loss.detach()))
        lrs.append(optimizer.param_groups[0]["lr"])
        return loss

    def evaluate() -> float:
        acc = val_accuracy()
        epoch = len(losses) // per_epoch
        if epoch and (epoch % report_every == 0 or epoch == epochs):
            recent = losses[-per_epoch * max(1, int(eval_every)):]
            log(f"epoch [{epoch}/{epochs}] loss {sum(recent) / len(recent):.4f} val acc {acc:.2f}% lr {lrs[-1]:.4e}")
        return acc

    return train_with_early_stopping(module, step, evaluate, optimizer, scheduler, epochs * per_epoch,
                                     per_epoch * max(1, int(eval_every)), int(patience), params)
