"""Visual prompts inside CLIP's ViT (VPT, Jia et al. 2022; DPT Eq. 4-6).

A clip-anytorch ``VisionTransformer`` embeds an image into tokens ``[s_0, E_0]`` (class token and
patch embeddings, positional embedding and ``ln_pre`` applied: :func:`vit_embed`) and runs its
blocks Phi_1..Phi_L. Visual prompts are extra tokens in that sequence:

    shallow (Eq. 4-5)  [s_1, Z_1, E_1] = Phi_1([s_0, P_0, E_0]);  [s_l, Z_l, E_l] = Phi_l([s_{l-1}, Z_{l-1}, E_{l-1}])
    deep    (Eq. 6)    [s_l, _,  E_l]  = Phi_l([s_{l-1}, P_{l-1}, E_{l-1}])  (new prompts at every block,
                                                                        the previous prompt outputs dropped)

and the image feature is CLIP's own read-out of the class token, ``ln_post(s_L) @ proj``.

Where the prompts go (the paper does not say; fanrena/DPT's choice): after ``ln_pre``, without a
positional embedding. They are appended after the patch tokens; since the blocks see no
positions and attention is permutation-equivariant, the class token is the same wherever the
prompt slots sit, so this is Eq. 4's ``[s, P, E]``. With zero prompt tokens the class token equals
``encode_image`` exactly (tested).

:func:`vit_prompted_tokens` is the generic mechanism: a callback chooses the prompt tokens that
enter each block from the block's image tokens and the previous block's prompt outputs (carry
them: shallow; replace them: deep; or add tokens computed from the image, as DPT's CAVPT does).
:class:`VisualPrompts` holds the learnable prompts of VPT-shallow/deep and is such a callback.
Prompts are kept in float32 and cast to the encoder's dtype (fp16 under CLIP's CUDA precision)
where they enter the sequence, so their gradients and optimizer state stay in float32.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
import torch.nn as nn
from torch import Tensor

from fsclip.clip.features import _visual, is_vit, vit_embed, vit_head

# (block index l, image tokens entering block l [B, N, width], prompt outputs of block l-1
# [B, M, width]) -> prompt tokens entering block l: [B, M', width] or [M', width] (shared)
BlockPrompts = Callable[[int, Tensor, Tensor], Tensor]


def vit_prompted_tokens(model_or_visual: Any, images: Tensor, block_prompts: BlockPrompts) -> Tensor:
    """Run CLIP's ViT with prompt tokens chosen per block; the image tokens after the last block,
    ``[B, 1 + HW, width]`` (class token first; the last block's prompt outputs are dropped).

    Before block l the sequence is ``[image tokens, block_prompts(l, image tokens, previous
    prompt outputs)]``; block 0 sees an empty ``[B, 0, width]`` as previous prompt outputs.
    """
    visual = _visual(model_or_visual)
    x = vit_embed(visual, images)  # [B, 1 + HW, width]
    n_img = x.shape[1]
    prompt_out = x.new_zeros(x.shape[0], 0, x.shape[2])  # [B, 0, width]
    for l, block in enumerate(visual.transformer.resblocks):
        p = block_prompts(l, x, prompt_out).to(x.dtype)
        if p.dim() == 2:
            p = p.unsqueeze(0).expand(x.shape[0], -1, -1)  # [B, M', width]
        seq = torch.cat([x, p], dim=1).permute(1, 0, 2)  # NLD -> LND (clip's blocks are sequence-first)
        seq = block(seq).permute(1, 0, 2)  # [B, N + M', width]
        x, prompt_out = seq[:, :n_img], seq[:, n_img:]
    return x


def vit_prompted_forward(model_or_visual: Any, images: Tensor, block_prompts: BlockPrompts) -> Tensor:
    """The prompted image feature ``ln_post(s_L) @ proj``: ``[B, D]`` (Eq. 7)."""
    return vit_head(model_or_visual, vit_prompted_tokens(model_or_visual, images, block_prompts))


class VisualPrompts(nn.Module):
    """Learnable VPT prompts for a CLIP ViT: ``length`` tokens of the encoder's width.

    ``deep=False`` (VPT-shallow, Eq. 4-5): one set P_0 enters block 0 and its outputs are carried
    through every later block. ``deep=True`` (VPT-deep, Eq. 6): a new set P_{l-1} enters each of
    the first ``depth`` blocks (default all), replacing the previous block's prompt outputs;
    blocks after ``depth`` get none. Initialised from N(0, std^2) (VPT, DPT: std 0.02).

    Call it as a :data:`BlockPrompts` callback: ``module(l, image_tokens, prompt_outputs)``.
    """

    def __init__(self, visual: Any, length: int = 10, deep: bool = True, std: float = 0.02,
                 depth: Optional[int] = None) -> None:
        super().__init__()
        visual = _visual(visual)
        if not is_vit(visual):
            raise TypeError(f"visual prompts need a CLIP ViT image encoder, got {type(visual).__name__}")
        if length < 0:
            raise ValueError(f"prompt length must be >= 0, got {length}")
        blocks = len(visual.transformer.resblocks)
        depth = blocks if depth is None else depth
        if not 0 <= depth <= blocks:
            raise ValueError(f"prompt depth must be in 0..{blocks}, got {depth}")
        self.length, self.deep, self.depth = int(length), bool(deep), int(depth) if deep else 1
        width = visual.conv1.out_channels
        self.prompts = nn.Parameter(torch.empty(self.depth, self.length, width))  # [depth, length, width]
        nn.init.normal_(self.prompts, std=std)

    def forward(self, l: int, image_tokens: Tensor, prompt_outputs: Tensor) -> Tensor:
        if self.deep:
            if l < self.depth:
                return self.prompts[l]  # P_l, shared by the batch
            return self.prompts.new_zeros(0, self.prompts.shape[-1])
        if l == 0:
            return self.prompts[0]  # P_0
        return prompt_outputs[:, :self.length]  # Z_{l-1}, carried (the shallow prompts come first)

    def extra_repr(self) -> str:
        kind = f"deep over {self.depth} blocks" if self.deep else "shallow"
        return f"length={self.length}, {kind}"
