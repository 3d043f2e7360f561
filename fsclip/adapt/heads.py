"""The trunk/head split of CLIP's image encoder, ``pool(G(x))``, and deeper heads built on it.

The split itself (G, ``ViTPoolingHead``, ``AttnPoolHead``) is CLIP mechanics and lives in
``fsclip.clip.heads``; it is re-exported here, where the frozen-trunk methods import it.
``DeeperHead`` moves the last trunk stages into the head (SAFE's TRAIN_LAYERS ablation).
"""

from __future__ import annotations

import copy
from typing import Any

import torch.nn as nn
from torch import Tensor

from fsclip.clip.attention import attnpool_attention, vit_block_attention
from fsclip.clip.features import is_vit
from fsclip.clip.heads import (
    AttnPoolHead, ViTPoolingHead, make_pooling_head, trunk_forward, trunk_kind,
)

__all__ = ["AttnPoolHead", "ViTPoolingHead", "DeeperHead", "make_pooling_head", "trunk_forward", "trunk_kind"]


class DeeperHead(nn.Module):
    """Copies of the last ``n`` trunk stages (layer3/layer4, or ViT blocks) then the pooling head:
    the head of a deeper trunk/head split (SAFE's TRAIN_LAYERS ablation). BatchNorm statistics
    stay frozen in training."""

    def __init__(self, visual: Any, n: int) -> None:
        super().__init__()
        self.vit = is_vit(visual)
        if self.vit:
            depth = len(visual.transformer.resblocks)
            named = {f"block{i}": visual.transformer.resblocks[i] for i in range(depth - 1 - n, depth - 1)}
        else:
            named = {f"layer{i}": getattr(visual, f"layer{i}") for i in range(5 - n, 5)}
        self.stages = nn.ModuleDict({k: copy.deepcopy(m) for k, m in named.items()})
        self.pool = make_pooling_head(visual)
        self.float().requires_grad_(True)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.pool_input(x))

    def pool_input(self, x: Tensor) -> Tensor:
        """What the pooling head receives: ``x`` through the copied stages (batch-first tokens)."""
        x = x.float()
        x = x.permute(1, 0, 2) if self.vit else x  # ViT blocks run on [L, B, width]
        for stage in self.stages.values():
            x = stage(x)
        return x.permute(1, 0, 2) if self.vit else x

    def train(self, mode: bool = True) -> "DeeperHead":
        super().train(mode)
        for m in self.modules():  # few-shot batches of 8: keep CLIP's BatchNorm statistics
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self


class HeadWithClassifier(nn.Module):
    """A pooling head trained together with the text classifier W_c (SAFE's "linear fine-tuning"
    of Fig. 8): ``weight`` [K, D] starts as W_c and its rows are renormalised where it is used
    (:meth:`unit_weight`), so the logits stay CLIP's scaled cosine similarities and an untrained
    copy gives exactly the frozen classifier's logits."""

    def __init__(self, head: nn.Module, text_weights: Tensor) -> None:
        super().__init__()
        self.head = head
        self.weight = nn.Parameter(text_weights.detach().clone().float())  # [K, D]

    def forward(self, x: Tensor) -> Tensor:
        return self.head(x)  # pooled image features [B, D]

    def unit_weight(self) -> Tensor:
        return self.weight / self.weight.norm(dim=-1, keepdim=True)


def encoder_with_head(visual: Any, head: nn.Module) -> Any:
    """CLIP's image encoder with ``head`` (a pooling head of :func:`make_pooling_head`) in place of
    its own pooling layer (ViT: the last block, ``ln_post`` and ``proj``), sharing every other
    module with ``visual``, which is left unchanged. For tools that walk the encoder's stages
    (``fsclip.explain``'s correspondence) on a fine-tuned model."""
    v = copy.copy(visual)
    v._modules, v._parameters = v._modules.copy(), v._parameters.copy()  # own slots, shared modules
    if isinstance(head, ViTPoolingHead):
        v.transformer = copy.copy(visual.transformer)
        v.transformer._modules = v.transformer._modules.copy()
        v.transformer.resblocks = nn.Sequential(*list(visual.transformer.resblocks)[:-1], head.block)
        v.ln_post, v.proj = head.ln_post, head.proj
    elif isinstance(head, AttnPoolHead):
        v.attnpool = head.attnpool
    else:
        raise TypeError(f"encoder_with_head: {type(head).__name__} is not a pooling head of make_pooling_head")
    return v


def pooling_head_attention(head: nn.Module, dense: Tensor) -> Tensor:
    """The pooling query's attention of ``head`` over its input ``dense`` (G's output): ``[B, H, L]``.

    ``AttnPoolHead``: the attention pool's query over the mean token and the ``h x w`` map
    (``L = 1 + HW``); ``ViTPoolingHead``: the class token's row of the block's attention over the
    ``1 + HW`` tokens (the head computes only that row, so its weights are recomputed here with
    the block's own attention); ``DeeperHead``: its pooling head's, after its stages;
    ``HeadWithClassifier``: its head's.
    """
    if isinstance(head, HeadWithClassifier):
        return pooling_head_attention(head.head, dense)
    if isinstance(head, DeeperHead):
        return pooling_head_attention(head.pool, head.pool_input(dense))
    if isinstance(head, ViTPoolingHead):
        return vit_block_attention(head.block, dense.to(head.proj.dtype))[:, :, 0]
    if isinstance(head, AttnPoolHead):
        return attnpool_attention(head.attnpool, dense.to(head.attnpool.q_proj.weight.dtype))
    raise TypeError(f"no pooling attention for a {type(head).__name__}")
