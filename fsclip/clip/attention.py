"""Attention weights of CLIP's image encoders, read from the modules' own computations.

What the papers draw as attention maps: softmax rows over image tokens.

- ``attnpool_attention(pool, dense)``: the ResNet attention pool's single query (the mean token)
  over its ``1 + HW`` tokens, per head: ``[B, H, 1 + HW]`` (token 0 is the mean token itself);
- ``vit_block_attention(block, tokens)``: a ViT block's attention over batch-first tokens
  ``[B, L, width]`` (its ``ln_1`` and multi-head attention, ``need_weights``): ``[B, H, L, L]``;
- ``recorded_attention(modules)``: while active, every call of the given
  ``nn.MultiheadAttention`` modules appends its per-head weights ``[B, H, Lq, Lk]``, computed by
  the module itself from the very inputs of that call, so a method's own forward (prompts,
  decoders) yields the weights it used;
- ``grid_rows(weights, first, hw)``: rows over tokens -> maps ``[..., h, w]`` over the ``hw``
  spatial tokens from index ``first`` and the weight ``rest`` ``[...]`` left on every other token
  (class or mean token, prompts, learned tokens), so ``maps.sum((-2, -1)) + rest`` is the row sum.

Gradients flow unless the caller disables them; the weights keep the modules' dtype.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Iterator, List, Sequence, Tuple

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .features import _attnpool, _check_map, attnpool_tokens, is_vit, resnet_trunk, vit_tokens

# what an attention_maps hook tells the user when the backbone has no OpenAI CLIP modules to read
ATTENTION_REMEDY = "draw this model with fsclip-explain gradcam or shapley (they need only its forward)"


def attnpool_attention(attnpool: Any, dense: Tensor) -> Tensor:
    """The attention pool's query weights ``[B, H, 1 + HW]`` for a ``[B, C, h, w]`` map.

    Per head h: ``softmax_l((Wq t_0 + bq)_h . (Wk t_l + bk)_h / sqrt(d))`` over the pool's tokens
    ``t_0 = mean_j x_j + p_0``, ``t_j = x_j + p_j`` (row-major positions), as clip's
    ``AttentionPool2d`` computes them inside ``F.multi_head_attention_forward``.
    """
    pool = _attnpool(attnpool)
    x = attnpool_tokens(_check_map(pool, dense))  # [B, 1 + HW, C]
    x = x + pool.positional_embedding.to(x.dtype)
    b, length, c = x.shape
    heads = int(pool.num_heads)
    d = c // heads
    q = F.linear(x[:, :1], pool.q_proj.weight, pool.q_proj.bias).view(b, 1, heads, d).transpose(1, 2)  # [B, H, 1, d]
    k = F.linear(x, pool.k_proj.weight, pool.k_proj.bias).view(b, length, heads, d).transpose(1, 2)  # [B, H, L, d]
    scores = (q @ k.transpose(-2, -1))[:, :, 0] / math.sqrt(d)  # [B, H, L]
    return scores.softmax(dim=-1)


def mha_weights(attn: nn.MultiheadAttention, *args: Any, **kwargs: Any) -> Tensor:
    """The per-head weights ``[B, H, Lq, Lk]`` of ``attn`` called with ``args``/``kwargs`` (its own
    forward, asked for its weights; module hooks are not run again)."""
    kwargs = {**kwargs, "need_weights": True, "average_attn_weights": False}
    return attn.forward(*args, **kwargs)[1]


def vit_block_attention(block: Any, tokens: Tensor) -> Tensor:
    """A clip ``ResidualAttentionBlock``'s attention over batch-first ``tokens`` ``[B, L, width]``
    (the tokens entering the block): ``[B, H, L, L]``, rows = queries."""
    x = block.ln_1(tokens.to(block.ln_1.weight.dtype)).permute(1, 0, 2)  # [L, B, width]: clip is sequence-first
    mask = getattr(block, "attn_mask", None)
    mask = mask.to(dtype=x.dtype, device=x.device) if mask is not None else None
    return mha_weights(block.attn, x, x, x, attn_mask=mask)


@contextmanager
def recorded_attention(modules: Sequence[nn.MultiheadAttention]) -> Iterator[List[Tensor]]:
    """Record the weights of every call of ``modules`` (see the module docstring); yields the list
    they are appended to, in call order. Hooks are removed on exit."""
    seen: List[Tensor] = []

    def hook(module: nn.Module, args: Tuple[Any, ...], kwargs: dict, output: Any) -> None:
        seen.append(mha_weights(module, *args, **kwargs))

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in modules]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def grid_rows(weights: Tensor, first: int, hw: int) -> Tuple[Tensor, Tensor]:
    """``weights`` ``[..., L]`` -> ``(maps [..., h, w], rest [...])``: tokens ``first:first + hw``
    in row-major order on their square grid, and the summed weight of all other tokens."""
    side = int(round(math.sqrt(hw)))
    if side * side != hw:
        raise ValueError(f"{hw} spatial tokens do not form a square grid")
    if weights.shape[-1] < first + hw:
        raise ValueError(f"rows of {weights.shape[-1]} tokens have no spatial tokens {first}..{first + hw - 1}")
    spatial = weights[..., first:first + hw]
    rest = weights[..., :first].sum(dim=-1) + weights[..., first + hw:].sum(dim=-1)
    return spatial.reshape(*weights.shape[:-1], side, side), rest


def spatial_tokens(model_or_visual: Any) -> int:
    """How many spatial positions the encoder's attention sees: ``h * w`` of the attention pool's
    map (ResNet) or of the patch grid (ViT)."""
    visual = getattr(model_or_visual, "visual", model_or_visual)
    pos = visual.attnpool.positional_embedding if hasattr(visual, "attnpool") else visual.positional_embedding
    return int(pos.shape[0]) - 1


def map_entries(name: str, weights: Tensor, first: int, hw: int) -> dict:
    """``{name: maps, name + "/rest": rest}`` of :func:`grid_rows`, float32: the entries of an
    ``attention_maps`` hook (``fsclip.explain.hooks``)."""
    maps, rest = grid_rows(weights.float(), first, hw)
    return {name: maps, f"{name}/rest": rest}


def encoder_attention(model_or_visual: Any, images: Tensor) -> Tuple[str, Tensor]:
    """CLIP's own pooling attention for ``images``: ``("attnpool", [B, H, 1 + HW])`` for a ResNet
    (the pool's query over the mean token and the map), ``("cls", [B, H, 1 + HW])`` for a ViT (the
    class token's row of the last block, over the class token and the patches)."""
    visual = getattr(model_or_visual, "visual", model_or_visual)
    if is_vit(visual):
        tokens = vit_tokens(visual, images, n_last_blocks_skipped=1)  # [B, 1 + HW, width] entering the last block
        return "cls", vit_block_attention(visual.transformer.resblocks[-1], tokens)[:, :, 0]
    return "attnpool", attnpool_attention(visual.attnpool, resnet_trunk(visual, images))
