"""Tip-Adapter's cache model (SAFE Eq. 5-8), shared by TipAdapter, TipAdapterF and SAFE-A.

Keys F_train [NK, D] are the few-shot image features averaged over the augmented views, then
L2-normalised (the raw features are averaged, as the official code builds them), values
L_train [NK, N] their one-hot labels. For a normalised test feature f:

    logits = alpha * phi(f F_train^T) L_train + logit_scale * f W_c^T,   phi(x) = exp(-gamma (1 - x))
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from fsclip.engine.optim import adamw

from .extract import view_batches


def cache_keys_from_views(view_features: Tensor) -> Tensor:
    """[NK, V, D] raw per-view features -> [NK, D] keys: the mean over views, then L2-normalised
    (Tip-Adapter's official cache: views are not normalised before averaging)."""
    return F.normalize(view_features.float().mean(dim=1), dim=-1)


def one_hot_values(labels: Tensor, num_classes: int) -> Tensor:
    """Eq. 6: L_train = OneHot(labels), [NK, N] float."""
    return F.one_hot(labels.long(), num_classes).float()


def cache_logits(affinity: Tensor, values: Tensor, gamma: float) -> Tensor:
    """phi(affinity) L_train with phi(x) = exp(-gamma (1 - x)); affinity [B, NK] -> [B, N]."""
    return torch.exp(-gamma * (1.0 - affinity)) @ values


def tip_logits(features: Tensor, keys: Tensor, values: Tensor, text_weights: Tensor, logit_scale: float,
               alpha: float, gamma: float) -> Tensor:
    """Eq. 8 for normalised ``features`` [B, D], ``keys`` [NK, D], ``text_weights`` [N, D]."""
    clip = logit_scale * features @ text_weights.t()  # [B, N]
    return clip + alpha * cache_logits(features @ keys.t(), values, gamma)


def search_alpha_gamma(clip_logits: Tensor, affinity: Tensor, values: Tensor, labels: Tensor,
                       alphas: Sequence[float], gammas: Sequence[float]) -> Tuple[float, float, float]:
    """Grid search of (alpha, gamma) by accuracy of Eq. 8 on a validation set.

    ``clip_logits`` [B, N] and ``affinity`` [B, NK] are precomputed; returns
    ``(alpha, gamma, accuracy%)``; ties keep the first (smallest gamma, then alpha) setting.
    """
    best = (float(alphas[0]), float(gammas[0]), -1.0)
    for gamma in gammas:
        cl = cache_logits(affinity, values, float(gamma))
        for alpha in alphas:
            acc = ((clip_logits + float(alpha) * cl).argmax(1) == labels).float().mean().item() * 100
            if acc > best[2]:
                best = (float(alpha), float(gamma), acc)
    return best


def search_grid(scale: float, steps: int, start: float = 0.1) -> list:
    """Tip-Adapter's search values: ``steps`` points from ``start`` towards ``scale``."""
    return [start + i * (scale - start) / steps for i in range(steps)]


class CacheAdapter(torch.nn.Module):
    """Tip-Adapter's cache model with its settings as state: keys (trainable in Tip-Adapter-F),
    one-hot values, alpha and gamma. ``forward(f)`` gives Eq. 8's cache term plus CLIP's term."""

    def __init__(self, num_keys: int, dim: int, num_classes: int) -> None:
        super().__init__()
        self.keys = torch.nn.Parameter(torch.zeros(num_keys, dim))  # F_train [NK, D]
        self.register_buffer("values", torch.zeros(num_keys, num_classes))  # L_train [NK, N]
        self.register_buffer("alpha", torch.tensor(1.0))
        self.register_buffer("gamma", torch.tensor(1.0))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a cache built on another dataset (e.g. ImageNet, evaluated on ImageNet-V2) has its own size
        keys, values = state_dict.get(prefix + "keys"), state_dict.get(prefix + "values")
        if keys is not None and keys.shape != self.keys.shape:
            self.keys = torch.nn.Parameter(torch.zeros(keys.shape, device=self.keys.device))
        if values is not None and values.shape != self.values.shape:
            self.values = torch.zeros(values.shape, device=self.values.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def set_cache(self, keys: Tensor, values: Tensor) -> None:
        if keys.shape != self.keys.shape or values.shape != self.values.shape:
            raise ValueError(f"cache of shape {tuple(keys.shape)}/{tuple(values.shape)} does not fit "
                             f"{tuple(self.keys.shape)}/{tuple(self.values.shape)}")
        self.keys.copy_(keys)
        self.values.copy_(values)

    def forward(self, features: Tensor, text_weights: Tensor, logit_scale: float,
                alpha: Optional[float] = None, gamma: Optional[float] = None) -> Tensor:
        """Eq. 8 for normalised ``features`` [B, D]; alpha/gamma default to the stored ones."""
        a = self.alpha if alpha is None else alpha
        g = self.gamma if gamma is None else gamma
        clip = logit_scale * features @ text_weights.t()
        return clip + a * torch.exp(-g * (1.0 - features @ self.keys.t())) @ self.values


def fit_cache_adapter(adapter: CacheAdapter, view_features: Tensor, labels: Tensor, val_features: Tensor,
                      val_labels: Tensor, text_weights: Tensor, logit_scale: float, tcfg: Any,
                      finetune: bool, seed: int = 0, log=print) -> Dict[str, float]:
    """Build the cache from few-shot view features and choose everything on validation.

    ``view_features`` [NK, V, D] (any norm), ``val_features`` [M, D]. With ``finetune``
    (Tip-Adapter-F) the keys are trained with cross-entropy on Eq. 8 at the initial alpha/gamma
    (AdamW, cosine schedule, a random view per image per step), keeping the epoch with the best
    validation accuracy. Then alpha and gamma are searched on validation (Tip-Adapter's grid).
    If the fine-tuning diverges (loss NaN/inf) the run fails with a ``TrainingDivergedError``
    naming ``TRAINER.TIP.LR``.
    """
    device = adapter.keys.device
    num_classes = text_weights.shape[0]
    adapter.set_cache(cache_keys_from_views(view_features).to(device), one_hot_values(labels, num_classes).to(device))
    val_f = F.normalize(val_features.float(), dim=-1).to(device)
    val_y = val_labels.to(device)
    alpha0, gamma0 = float(tcfg.INIT_ALPHA), float(tcfg.INIT_GAMMA)
    out: Dict[str, float] = {}
    if finetune:
        from .search import choose_best, train_with_early_stopping

        n, v = view_features.shape[:2]
        bs = min(int(tcfg.BATCH_SIZE), n)
        per_epoch = math.ceil(n / bs)
        steps = int(tcfg.EPOCHS) * per_epoch
        next_batch = view_batches(n, v, bs, seed)
        opt = adamw([adapter.keys], lr=float(tcfg.LR), eps=float(tcfg.EPS),
                    weight_decay=float(tcfg.WEIGHT_DECAY))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        train_y = labels.to(device)

        def step(_: int) -> Tensor:
            idx, views = next_batch()
            f = F.normalize(view_features[idx, views].float().to(device), dim=-1)
            return F.cross_entropy(adapter(f, text_weights, logit_scale, alpha0, gamma0), train_y[idx])

        def evaluate() -> float:
            with torch.no_grad():
                pred = adapter(val_f, text_weights, logit_scale, alpha0, gamma0).argmax(1)
            return (pred == val_y).float().mean().item() * 100

        res = train_with_early_stopping(adapter, step, evaluate, opt, sched, steps, per_epoch,
                                        params={"lr": float(tcfg.LR), "weight_decay": float(tcfg.WEIGHT_DECAY)},
                                        log=log)
        choose_best([res], keys={"lr": "TRAINER.TIP.LR", "weight_decay": "TRAINER.TIP.WEIGHT_DECAY"}, log=None)
        out["finetune_val_acc"] = res.val_acc
        out["finetune_epoch"] = res.step / per_epoch
        log(f"* cache keys fine-tuned: best val accuracy {res.val_acc:.2f}% after {res.step} steps")
    with torch.no_grad():
        clip = logit_scale * val_f @ text_weights.t()
        affinity = val_f @ adapter.keys.t()
        gammas = search_grid(float(tcfg.SEARCH_SCALE[0]), int(tcfg.SEARCH_STEP[0]))
        alphas = search_grid(float(tcfg.SEARCH_SCALE[1]), int(tcfg.SEARCH_STEP[1]))
        alpha, gamma, acc = search_alpha_gamma(clip, affinity, adapter.values, val_y, alphas, gammas)
        adapter.alpha.fill_(alpha)
        adapter.gamma.fill_(gamma)
    out.update(alpha=alpha, gamma=gamma, val_acc=acc)
    return out
