"""CLIP's image encoder as ``pool(G(x))``: a frozen trunk G and a (trainable) pooling head.

ResNet: G is the stem and layer1..4 (``[B, C, H, W]`` map) and the head is the attention
pooling layer. ViT: G is everything up to the last transformer block (``[B, 1 + HW, width]``
tokens) and the head is the last block with ``ln_post`` and ``proj``, which plays the attention
pooling's role (SAFE, Section III-B).
"""

from __future__ import annotations

import copy
from typing import Any

import torch.nn as nn
from torch import Tensor

from fsclip.clip.attention import attnpool_attention, vit_block_attention
from fsclip.clip.features import (
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
