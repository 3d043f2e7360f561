"""DPT's class-aware visual prompts (CAVPT, DPT paper Eq. 9-10) and the prompted image forward
they join (Eq. 7), used by the CAVPT variants in ``trainers/dpt.py`` and by ``benchmarks/dpt_step.py``.

Where the paper and fanrena/DPT's code differ, both are options of :class:`CAVPT` and
:func:`cavpt_loss` (``trainers/dpt.py`` has the table).
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .visual import VisualPrompts, vit_prompted_forward


class CAVPT(nn.Module):
    """Class-aware visual prompts of one block (Eq. 9) and the K-way classifier of Eq. 10."""

    def __init__(self, text_dim: int, width: int, num_classes: int, query: str = "mlp", attn_dim: int = 0,
                 extra_tokens: int = 0, detach: bool = False, output: str = "lp") -> None:
        super().__init__()
        self.query = (nn.Sequential(nn.Linear(text_dim, width), nn.ReLU(), nn.Linear(width, width))
                      if query == "mlp" else nn.Linear(text_dim, width))
        self.dim = attn_dim or width
        self.q_proj = nn.Linear(width, attn_dim, bias=False) if attn_dim else nn.Identity()
        self.k_proj = nn.Linear(width, self.dim, bias=False)
        self.v_proj = nn.Linear(width, width, bias=False)
        self.extra = nn.Parameter(torch.randn(extra_tokens, width) * 0.02)  # learned keys/values (code)
        self.ln = nn.LayerNorm(width)
        self.classifier = nn.Linear(width, num_classes, bias=False)
        self.out = nn.Linear(width, width) if output == "lp" else nn.LayerNorm(width)
        self.detach, self.output = detach, output

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # the K-way classifier serves only the training loss (Eq. 10): one saved for other classes is
        # not loaded (fanrena/DPT drops it on load too), so CAVPT evaluates on any classes
        key = prefix + "classifier.weight"
        saved = state_dict.get(key)
        if saved is not None and saved.shape != self.classifier.weight.shape:
            state_dict[key] = self.classifier.weight.detach().clone()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def attention(self, tokens: Tensor, text: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """softmax(q_j^T k) ``[B, K_T, N']`` of Eq. 9 over the keys/values ``[B, N', width]`` (the
        block's N image tokens, then the learned ones), and the queries q_j ``[B, K_T, width]``."""
        tokens = tokens.float()
        kv = tokens.detach() if self.detach else tokens
        kv = torch.cat([kv, self.extra.expand(kv.shape[0], -1, -1)], dim=1)  # [B, N', width]
        q0 = self.query(text.float())  # [B, K_T, width]
        scores = self.q_proj(q0) @ self.k_proj(kv).transpose(1, 2) * self.dim ** -0.5  # q_j^T k: [B, K_T, N']
        return scores.softmax(dim=-1), kv, q0

    def forward(self, tokens: Tensor, text: Tensor) -> Tuple[Tensor, Tensor]:
        """tokens ``[B, N, width]`` entering the block (class token first), text ``[B, K_T, D]``
        -> prompts ``[B, K_T, width]`` and K-way logits ``[B, K_T, K]``."""
        weights, kv, q0 = self.attention(tokens, text)
        out = self.v_proj(weights @ kv)  # softmax(q_j^T k) v: [B, K_T, width]
        z = self.ln(out)  # the LN outputs the classifier of Eq. 10 reads
        logits = self.classifier(z)  # [B, K_T, K]
        if self.output == "lp":
            return self.out(z + tokens[:, :1].float()), logits  # Eq. 9: LP(LN(.) + [s_l]_K_T)
        return self.out(out + q0), logits  # code: LN(out + q)


def cavpt_loss(layer_logits: List[Tensor], selected: Tensor, labels: Tensor, mode: str = "soft") -> Tensor:
    """L_cavpt over the CAVPT blocks: ``layer_logits`` each ``[B, K_T, K]``, ``selected`` the class
    of each slot ``[B, K_T]``. ``soft`` (Eq. 10): cross-entropy with a one-hot target for the slot
    of the ground-truth class and 1/K for the others, mean over blocks, images and slots.
    ``matched`` (code): hard-label cross-entropy on the ground-truth slots only (0 if none)."""
    logp = torch.stack(layer_logits).float().log_softmax(dim=-1)  # [L_c, B, K_T, K]
    match = selected == labels[:, None]  # [B, K_T]
    if mode == "soft":
        onehot = F.one_hot(labels, logp.shape[-1]).float()[:, None, :]  # [B, 1, K]
        target = torch.where(match[..., None], onehot, torch.full_like(onehot, 1.0 / logp.shape[-1]))
        return -(target * logp).sum(dim=-1).mean()
    nll = -logp.gather(-1, labels[None, :, None, None].expand(*logp.shape[:3], 1))[..., 0]  # [L_c, B, K_T]
    return nll[:, match].mean() if match.any() else nll.sum() * 0.0


def prompted_image_features(visual: Any, images: Tensor, vpt: VisualPrompts, cavpt: Optional[nn.ModuleList] = None,
                            queries: Optional[Tensor] = None) -> Tuple[Tensor, List[Tensor]]:
    """f([s_0, P_0, E_0]) (Eq. 7) with VPT prompts and, in the last ``len(cavpt)`` blocks, the
    class-aware prompts of ``queries`` ``[B, K_T, D]`` beside them (Eq. 9): ``[B, D]`` and the
    K-way logits of each CAVPT block."""
    first = len(visual.transformer.resblocks) - (len(cavpt) if cavpt is not None else 0)
    layer_logits: List[Tensor] = []

    def block_prompts(l: int, tokens: Tensor, prompt_out: Tensor) -> Tensor:
        p = vpt(l, tokens, prompt_out)  # [n, width] or [B, n, width]
        if l < first:
            return p
        c, logits = cavpt[l - first](tokens, queries)  # [B, K_T, width]
        layer_logits.append(logits)
        p = p.expand(tokens.shape[0], -1, -1) if p.dim() == 2 else p
        return torch.cat([p.to(c.dtype), c], dim=1)

    return vit_prompted_forward(visual, images, block_prompts), layer_logits
