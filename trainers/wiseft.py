"""WiSE-FT (Wortsman et al., CVPR 2022) on a linear head, as the few-shot papers run it (SAFE
Table I's "WiSE-FT" row, the uni-modal baseline of the cross-modal paper):

  head        logits = s * normalize(x) W^T, W starts as W_zs (zero-shot classifier), s CLIP's logit scale
  training    fine-tune W on the few-shot images only (cached views), cross-entropy
  WiSE-FT     W(alpha) = alpha * W_ft + (1 - alpha) * normalize(W_zs)      alpha = 0: zero-shot CLIP

The fine-tuning is the cross-modal recipe without text samples (same sweep and schedule, see
``trainers/cross_modal.py``); alpha is then chosen on the few-shot val split from
TRAINER.WISEFT.ALPHAS (WiSE-FT's grid 0, 0.1, ..., 1), ties going to the alpha nearest 0.5
(WiSE-FT's default mixing). TRAINER.WISEFT.ALPHA >= 0 fixes alpha instead of choosing it.
TRAINER.WISEFT.RULES "code" fine-tunes under the cross-modal reference's loop rules (its
uni-modal mode; see ``trainers/cross_modal.py``).

mlfoundations/wise-ft builds its zero-shot head with the logit scale inside the weights
(s * W_zs, plus a zero bias) and interpolates every weight; since s is a constant, its
interpolated logits are s * normalize(x) W(alpha)^T, ours. Keeping s outside the weights makes
AdamW's step size mean the same as in the cross-modal sweep; we train no bias.
"""

from __future__ import annotations

from typing import Callable, Sequence, Tuple

import torch
from yacs.config import CfgNode as CN

from fsclip.adapt.linear import accuracy, add_linear_head_cfg
from fsclip.backend import TRAINER_REGISTRY
from fsclip.errors import ConfigError

from .cross_modal import CrossModal


@TRAINER_REGISTRY.register()
class WiSEFT(CrossModal):
    """Uni-modal linear head from the zero-shot classifier, interpolated back towards it."""

    cfg_node = "WISEFT"
    text_samples = False

    @classmethod
    def extend_cfg(cls, cfg) -> None:
        super(CrossModal, cls).extend_cfg(cfg)
        if "WISEFT" in cfg.TRAINER:
            return
        w = cfg.TRAINER.WISEFT = add_linear_head_cfg(CN())
        # Mixing coefficients tried on val (alpha weighs the fine-tuned head)
        w.ALPHAS = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
        # A fixed alpha in [0, 1] instead of the choice on val (-1: choose on val)
        w.ALPHA = -1.0

    def eval_alpha(self) -> float:
        return float(self.head.alpha)  # the chosen (or fixed) alpha, saved with the head

    def after_sweep(self, val_acc: float) -> None:
        w = self.cfg.TRAINER.WISEFT
        fixed = float(w.ALPHA)
        if fixed >= 0:
            if fixed > 1:
                raise ConfigError(f"TRAINER.WISEFT.ALPHA must be in [0, 1] or -1 (choose on val), got {fixed}")
            alpha, acc = fixed, self.val_accuracy(fixed)
        else:
            alpha, acc = choose_alpha([float(a) for a in w.ALPHAS], self.val_accuracy)
        self.head.alpha.fill_(alpha)
        self.log_choice("WiSE-FT", alpha=alpha, val_accuracy=acc, fine_tuned_val_accuracy=val_acc)

    @torch.no_grad()
    def val_accuracy(self, alpha: float) -> float:
        return accuracy(self.head(self.global_features("val"), alpha=alpha), self.labels("val"))


def choose_alpha(alphas: Sequence[float], val_accuracy: Callable[[float], float]) -> Tuple[float, float]:
    """``(alpha, val accuracy)`` for the alpha with the best ``val_accuracy(alpha)``; ties: the one
    nearest 0.5 (then the larger)."""
    if not alphas or any(not 0.0 <= a <= 1.0 for a in alphas):
        raise ConfigError(f"TRAINER.WISEFT.ALPHAS must be a non-empty list of values in [0, 1], got {alphas}")
    scored = [(val_accuracy(a), -abs(a - 0.5), a) for a in alphas]
    acc, _, alpha = max(scored)
    return alpha, acc
