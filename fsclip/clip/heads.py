"""OpenAI CLIP's image encoder as ``pool(G(x))``: a frozen trunk G and a (trainable) pooling head.

ResNet: G is the stem and layer1..4 (``[B, C, H, W]`` map) and the head is the attention
pooling layer. ViT: G is everything up to the last transformer block (``[B, 1 + HW, width]``
tokens) and the head is the last block with ``ln_post`` and ``proj``, which plays the attention
pooling's role (SAFE, Section III-B). The OpenAI backbone (``fsclip.clip.backbone``) serves its
split from here; other families have their own (``fsclip.clip.openclip``).
"""

from __future__ import annotations

import copy
from typing import Any

import torch.nn as nn
from torch import Tensor

from .features import (
    attnpool_forward, is_vit, resnet_trunk, vit_head_params, vit_head_single_query, vit_tokens,
)


class ViTPoolingHead(nn.Module):
    """Last ViT block + ln_post + proj applied to batch-first tokens: ``[B, L, width] -> [B, D]``.

    Computed for the class token only (``vit_head_single_query``): same output as running the
    block on every token, up to float rounding.
    """

    def __init__(self, visual: Any) -> None:
        super().__init__()
        self.block = copy.deepcopy(visual.transformer.resblocks[-1])
        self.ln_post = copy.deepcopy(visual.ln_post)
        self.proj = nn.Parameter(visual.proj.detach().clone())

    def forward(self, tokens: Tensor) -> Tensor:
        params = vit_head_params(self.block, self.ln_post, self.proj)
        return vit_head_single_query(tokens.to(self.proj.dtype), **params, eps=self.ln_post.eps)  # [B, D]


class AttnPoolHead(nn.Module):
    """A copy of CLIP's AttentionPool2d: ``[B, C, H, W] -> [B, D]``."""

    def __init__(self, visual: Any) -> None:
        super().__init__()
        self.attnpool = copy.deepcopy(visual.attnpool)

    def forward(self, dense: Tensor) -> Tensor:
        return attnpool_forward(self.attnpool, dense)


def make_pooling_head(visual: Any) -> nn.Module:
    """A float32, trainable copy of the pooling head of ``visual`` (independent parameters)."""
    head = ViTPoolingHead(visual) if is_vit(visual) else AttnPoolHead(visual)
    return head.float().requires_grad_(True)


def trunk_forward(visual: Any, images: Tensor) -> Tensor:
    """``G(x)``: ``[B, C, H, W]`` (ResNet) or ``[B, 1 + HW, width]`` tokens before the last block (ViT).
    Gradients flow to ``images`` when they require them (CLIP's weights are frozen)."""
    if is_vit(visual):
        return vit_tokens(visual, images, n_last_blocks_skipped=1)
    return resnet_trunk(visual, images)


def trunk_kind(visual: Any) -> str:
    """A name for what ``trunk_forward`` returns (part of feature-cache keys)."""
    return "vit-tokens-before-last-block" if is_vit(visual) else "resnet-pre-attnpool-map"
