"""Heads over CLIP's frozen global image features, and how they are trained and chosen.

Shared by the linear-head family (CrossModal, WiSEFT, CLIPAdapter, LinearProbe):

* :class:`ViewSampler` draws minibatches from cached features: an epoch-style permutation of
  the samples and, for the train split's ``[N, V, D]`` views, one random view per sample (the
  cached views play the role of the data augmentation an end-to-end trainer would run).
* :class:`LinearHead`: ``logits = scale * normalize(x) W^T`` with ``W`` starting as the
  zero-shot classifier, and WiSE-FT's head interpolation ``alpha W + (1 - alpha) normalize(W_zs)``.
* :func:`warmup_cosine`, :func:`fit_minibatch` and :func:`sweep_linear_head`: AdamW/SGD runs with
  early stopping on the few-shot val split, and the val-driven sweep of the cross-modal recipe.
* :func:`logistic_regression`: multinomial L2-regularised logistic regression by L-BFGS,
  scikit-learn's objective (CoOp's linear probe).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from yacs.config import CfgNode as CN

from fsclip.engine.optim import ConstantWarmupScheduler, LinearWarmupScheduler, adamw
from fsclip.errors import ConfigError

from .search import RunResult, grid_search, train_with_early_stopping


def accuracy(logits: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy in percent."""
    return (logits.argmax(dim=-1) == labels).float().mean().item() * 100


class ViewSampler:
    """Minibatches ``(x [B, D], y [B])`` from ``features`` ``[N, V, D]`` (a random view per sample)
    or ``[N, D]``: samples are drawn without replacement through shuffled passes over the set,
    so every sample is seen once per pass; batches are always full (``min(batch_size, N)``).
    ``drop_last``: a pass's last incomplete batch is dropped (a shuffled DataLoader with
    ``drop_last=True``) instead of being completed from the next pass."""

    def __init__(self, features: Tensor, labels: Tensor, batch_size: int, generator: torch.Generator,
                 drop_last: bool = False) -> None:
        self.features = features if features.dim() == 3 else features.unsqueeze(1)  # [N, V, D]
        self.labels = labels
        self.n, self.v = self.features.shape[:2]
        self.batch_size = max(1, min(int(batch_size), self.n))
        self.gen = generator
        self.drop_last = bool(drop_last)
        self.order: list = []

    def steps_per_epoch(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def next(self) -> Tuple[Tensor, Tensor]:
        if len(self.order) < self.batch_size:
            kept = [] if self.drop_last else self.order
            self.order = kept + torch.randperm(self.n, generator=self.gen).tolist()
        idx, self.order = self.order[:self.batch_size], self.order[self.batch_size:]
        views = torch.randint(self.v, (len(idx),), generator=self.gen).to(self.features.device)
        idx_t = torch.tensor(idx, device=self.features.device)
        return self.features[idx_t, views], self.labels[idx_t.to(self.labels.device)]


def wise_ft_weights(w_ft: Tensor, w_zs: Tensor, alpha: float) -> Tensor:
    """WiSE-FT on a linear head: ``alpha * W_ft + (1 - alpha) * normalize(W_zs)`` (rows)."""
    if alpha == 1.0:
        return w_ft
    return alpha * w_ft + (1.0 - alpha) * F.normalize(w_zs, dim=-1)


class LinearHead(nn.Module):
    """``logits = scale * normalize(x) @ W^T`` (no bias), ``W`` [K, D] initialised from the
    zero-shot classifier ``W_zs`` (kept as a buffer for the WiSE-FT interpolation); ``scale`` is
    fixed (CLIP's logit scale). ``forward(x, alpha)`` uses ``wise_ft_weights(W, W_zs, alpha)``,
    so ``alpha = 1`` is the fine-tuned head and ``alpha = 0`` zero-shot CLIP. ``alpha`` (a
    buffer) is the interpolation chosen for evaluation."""

    def __init__(self, zero_shot: Tensor, scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(zero_shot.detach().clone().float())  # W [K, D]
        self.register_buffer("zero_shot", zero_shot.detach().clone().float())  # W_zs [K, D]
        self.register_buffer("alpha", torch.tensor(1.0))
        self.scale = float(scale)

    def weights(self, alpha: Optional[float] = None) -> Tensor:
        a = float(self.alpha) if alpha is None else float(alpha)
        return wise_ft_weights(self.weight, self.zero_shot, a)

    def forward(self, x: Tensor, alpha: Optional[float] = 1.0) -> Tensor:
        """``alpha=None`` uses the stored ``alpha``."""
        return self.scale * F.normalize(x.float(), dim=-1) @ self.weights(alpha).t()  # [B, K]


def warmup_cosine(optimizer: torch.optim.Optimizer, iters: int, warmup_iters: int = 0,
                  warmup_type: str = "linear", warmup_lr: float = 1e-5) -> Any:
    """Per-step schedule: cosine annealing over ``iters`` steps, after ``warmup_iters`` warmup
    steps that start at ``warmup_lr`` (``linear``: then grow to the base LR; ``constant``: stay)."""
    sched: Any = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, iters))
    if warmup_iters > 0:
        cls = LinearWarmupScheduler if warmup_type == "linear" else ConstantWarmupScheduler
        sched = cls(optimizer, sched, int(warmup_iters), float(warmup_lr))
    return sched


def fit_minibatch(module: nn.Module, logits_fn: Callable[[Tensor], Tensor], samplers: Sequence[ViewSampler],
                  optimizer: torch.optim.Optimizer, scheduler: Any, iters: int, eval_every: int,
                  eval_fn: Callable[[], float], patience: int = 0,
                  params: Optional[Dict[str, Any]] = None, score_initial: bool = True,
                  eval_offset: int = 0) -> RunResult:
    """Cross-entropy on one batch from each sampler per step (concatenated: image and text halves
    in the cross-modal recipe), with early stopping on ``eval_fn`` (val accuracy);
    ``score_initial`` and ``eval_offset`` as in ``train_with_early_stopping``."""

    def step(_: int) -> Tensor:
        xs, ys = zip(*(s.next() for s in samplers))
        return F.cross_entropy(logits_fn(torch.cat(xs)), torch.cat(ys))

    return train_with_early_stopping(module, step, eval_fn, optimizer, scheduler, int(iters), int(eval_every),
                                     int(patience), params, score_initial=score_initial, eval_offset=eval_offset)


def add_linear_head_cfg(node: CN) -> CN:
    """The sweep keys of the cross-modal recipe (linzhiqiu/cross_modal_adaptation), shared by
    CrossModal and WiSEFT."""
    # Steps per run (AdamW, cosine schedule over them) and val checks every EVAL_EVERY steps
    node.ITERS = 12800
    node.EVAL_EVERY = 100
    # Stop a run after PATIENCE val checks without improvement (0: never stop early)
    node.PATIENCE = 0
    # Linear warmup from WARMUP_LR over the first WARMUP_ITERS steps
    node.WARMUP_ITERS = 50
    node.WARMUP_LR = 1e-5
    # Grid searched on val: learning rates x weight decays x batch sizes
    node.LRS = [1e-3, 1e-4]
    node.WDS = [0.0, 1e-2, 1e-4]
    node.BATCH_SIZES = [8, 32]
    # Loop rules: "fsclip" or "code" (the reference's; see sweep_linear_head)
    node.RULES = "fsclip"
    return node


def sweep_linear_head(zero_shot: Tensor, scale: float, views: Tensor, labels: Tensor, val_features: Tensor,
                      val_labels: Tensor, hcfg: Any, seed: int = 0,
                      text: Optional[Tuple[Tensor, Tensor]] = None, text_ratio: float = 0.5,
                      log: Callable[[str], None] = print, node_name: str = "") -> RunResult:
    """Fine-tune a :class:`LinearHead` from ``zero_shot`` for every (lr, weight decay, batch size)
    of ``hcfg`` and keep the run with the best val accuracy.

    ``views`` [N, V, D] image features; ``text`` optional ``(features [M, D], labels [M])``
    extra samples that fill ``int(batch * text_ratio)`` of each batch (cross-modal training).
    ``hcfg.RULES`` "fsclip" (default): the image part of a batch is drawn by image (a random
    cached view each), the head is validated before training and after steps EVAL_EVERY,
    2 EVAL_EVERY, ... and the last; a batch size is kept when its image part is <= the images
    and its text part <= the text samples (none kept: the smallest, its parts capped, with a
    note). "code" (linzhiqiu/cross_modal_adaptation's loop): every cached view is a row of the
    image set, drawn in shuffled passes with the last incomplete batch dropped; the head is
    validated after steps 1, EVAL_EVERY + 1, 2 EVAL_EVERY + 1, ... only; a batch size is kept
    when each non-empty part is < the rows (text samples) there are, and none kept is a
    ConfigError. Both keep the first best val accuracy (ties: the earlier step).
    Diverged runs are left out (``grid_search``); ``node_name`` (e.g. ``TRAINER.CROSSMODAL``)
    names the config keys in the errors.
    """
    prefix = f"{node_name}." if node_name else ""
    rules = str(getattr(hcfg, "RULES", "fsclip"))
    if rules not in ("fsclip", "code"):
        raise ConfigError(f'{prefix}RULES must be "fsclip" or "code", got "{rules}"')
    code = rules == "code"
    if code:  # [N * V, D] rows, as the reference's image set holds one row per view
        labels = labels.repeat_interleave(views.shape[1]) if views.dim() == 3 else labels
        views = views.flatten(0, 1) if views.dim() == 3 else views
    n = views.shape[0]
    m = 0 if text is None else text[0].shape[0]
    sizes = [int(b) for b in hcfg.BATCH_SIZES]
    text_part = {b: int(b * text_ratio) if text is not None else 0 for b in sizes}
    split = {b: (b - text_part[b], text_part[b]) for b in sizes}  # (image, text) samples per batch
    if code:
        valid = [b for b in sizes if (split[b][0] == 0 or split[b][0] < n) and (split[b][1] == 0 or split[b][1] < m)]
        if not valid:
            raise ConfigError(
                f"{prefix}BATCH_SIZES {sizes}: none fits under {prefix}RULES code (a batch's image part must be "
                f"< the {n} training rows (images x cached views) and its text part < the {m} text samples): "
                f"add a smaller batch size to {prefix}BATCH_SIZES, or set {prefix}RULES fsclip")
    else:
        valid = [b for b in sizes if split[b][0] <= n and split[b][1] <= m]
        if not valid:
            valid = [min(sizes)]
            log(f"Note: every batch size in {sizes} exceeds the {n} images; using {valid[0]} with its parts capped")
    val_x, val_y = val_features.float(), val_labels

    def run(params: Dict[str, Any]) -> RunResult:
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        head = LinearHead(zero_shot, scale).to(views.device)
        n_img, n_txt = split[params["batch_size"]]
        samplers = [ViewSampler(views, labels, n_img, gen, drop_last=code)] if n_img > 0 or not code else []
        if n_txt > 0:
            samplers.append(ViewSampler(text[0], text[1], n_txt, gen, drop_last=code))
        opt = adamw([head.weight], lr=params["lr"], weight_decay=params["weight_decay"])
        sched = warmup_cosine(opt, int(hcfg.ITERS), int(hcfg.WARMUP_ITERS), "linear", float(hcfg.WARMUP_LR))

        def evaluate() -> float:
            with torch.no_grad():
                return accuracy(head(val_x), val_y)

        return fit_minibatch(head, head, samplers, opt, sched, int(hcfg.ITERS), int(hcfg.EVAL_EVERY), evaluate,
                             int(hcfg.PATIENCE), params, score_initial=not code, eval_offset=1 if code else 0)

    grid = {"lr": [float(x) for x in hcfg.LRS], "weight_decay": [float(x) for x in hcfg.WDS], "batch_size": valid}
    keys = {"lr": "LRS", "weight_decay": "WDS", "batch_size": "BATCH_SIZES"}
    return grid_search(grid, run, log=log, keys={k: f"{node_name}.{v}" for k, v in keys.items()} if node_name else None)


# --------------------------------------------------------------------------- logistic regression
def logistic_regression(x: Tensor, y: Tensor, num_classes: int, C: float, max_iter: int = 1000,
                        tol: float = 1e-4, dtype: torch.dtype = torch.float64,
                        report: Optional[Dict[str, Any]] = None) -> Tuple[Tensor, Tensor]:
    """Multinomial logistic regression with an L2 penalty on the weights (not the bias):
    ``min_{W, b}  C * sum_i CE(W x_i + b, y_i) + 0.5 * ||W||^2`` (scikit-learn's
    ``LogisticRegression(penalty="l2", C=C)`` objective, multinomial for every number of
    classes), solved by L-BFGS (strong Wolfe line search, history 10) in ``dtype``.

    The objective is divided by ``C * N`` for conditioning (same minimiser; scikit-learn's lbfgs
    does the same); the run stops when the largest gradient entry of that scaled objective is
    below ``tol`` or after ``max_iter`` iterations. Returns ``W`` [K, D] and ``b`` [K] in
    ``x``'s dtype and device. The objective is strictly convex in ``W``, so any solver that
    converges finds the same ``W``. ``report`` (a dict), when given, receives ``iterations``
    and ``converged`` (the largest gradient entry at the returned weights is <= ``tol``).
    """
    xd, yd = x.to(dtype), y.long()
    n, d = xd.shape
    w = torch.zeros(num_classes, d, dtype=dtype, device=x.device, requires_grad=True)
    b = torch.zeros(num_classes, dtype=dtype, device=x.device, requires_grad=True)
    reg = 0.5 / (float(C) * n)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=int(max_iter), max_eval=int(max_iter) * 2,
                            tolerance_grad=float(tol), tolerance_change=1e-14, history_size=10,
                            line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(xd @ w.t() + b, yd) + reg * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    if report is not None:
        closure()
        grad = max(float(w.grad.abs().max()), float(b.grad.abs().max()))
        report.update(iterations=int(opt.state[w].get("n_iter", 0)), converged=grad <= float(tol))
    return w.detach().to(x.dtype), b.detach().to(x.dtype)
