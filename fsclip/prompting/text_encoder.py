"""CLIP's text encoder over learned prompts, with the shared prefix computed once.

With a generic context and the class name at the end, every class prompt starts with the same
``P = 1 + n_ctx`` embeddings (SOT and the context vectors):

    prompt_k = [SOT, ctx_1 .. ctx_M, name_k tokens, ".", EOT, (padding)]
                \\_____ shared prefix ____/ \\______ suffix_k (S tokens) ______/

CLIP's text transformer is causal: position t attends to positions <= t only. So the hidden
states of the prefix positions, at every layer, depend on the prefix alone and are the same
for all K prompts. :func:`encode_shared_prefix` runs the prefix once (once per image for
instance-conditioned contexts, CoCoOp) and the K suffixes as one batch whose queries attend to
the prefix's keys and values of the same layer plus their own causal keys and values. The
result equals the plain path (the whole ``[K, L]`` prompts through ``model.transformer``, see
:func:`fsclip.clip.text.encode_text_embeddings`) in values and gradients (tested in fp32).

Work per text-encoder call drops from ``K * L`` token positions to ``P + K * S``, and with
short context ``L`` is the longest prompt, not 77 (see ``fsclip.clip.text``).

The encoder is any backbone's ``text_tower()`` (``fsclip.clip.backbone``: OpenAI CLIP, OpenCLIP
models with plain attention blocks; a clip-anytorch model is wrapped). Attention runs over the block's own parameters (``attn.in_proj_weight``, ``in_proj_bias``,
``out_proj``; the LayerNorms and MLP are the block's modules): nothing is copied, so the weights
stay frozen or trainable exactly as they are in the CLIP model.
"""

from __future__ import annotations

from typing import Any, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from fsclip.clip.families import as_backbone


def _heads(x: Tensor, n_heads: int) -> Tensor:
    """``[..., T, width] -> [..., H, T, d]``."""
    return x.unflatten(-1, (n_heads, -1)).transpose(-3, -2)


def _merge(x: Tensor) -> Tensor:
    """``[..., H, T, d] -> [..., T, width]``."""
    return x.transpose(-3, -2).flatten(-2)


def _qkv(attn: Any, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    h = int(attn.num_heads)
    return _heads(q, h), _heads(k, h), _heads(v, h)


def _causal_mask(n: int, like: Tensor) -> Tensor:
    """``[n, n]`` additive mask: 0 on and below the diagonal, -inf above (CLIP's text mask)."""
    return torch.full((n, n), float("-inf"), dtype=like.dtype, device=like.device).triu(1)


def shared_prefix_attention(attn: Any, prefix: Tensor, suffix: Tensor, prefix_only_kv: bool = False
                            ) -> Tuple[Tensor, Tensor]:
    """Causal multi-head attention of ``nn.MultiheadAttention`` ``attn`` over the sequences
    ``[prefix, suffix_k]`` for every k, with the prefix computed once.

    ``prefix``: ``[B, P, width]``; ``suffix``: ``[B, K, S, width]`` (both already through the
    block's ``ln_1``). Returns ``(out_prefix [B, P, width], out_suffix [B, K, S, width])``, the
    attention outputs (after ``out_proj``) at those positions. With ``prefix_only_kv`` the
    prefix output is not computed (the last layer needs only its keys and values); ``None`` is
    returned in its place.
    """
    qp, kp, vp = _qkv(attn, prefix)  # [B, H, P, d]
    qs, ks, vs = _qkv(attn, suffix)  # [B, K, H, S, d]
    scale = qs.shape[-1] ** -0.5
    out_p = None
    if not prefix_only_kv:
        scores = (qp * scale) @ kp.transpose(-1, -2) + _causal_mask(qp.shape[-2], qp)  # [B, H, P, P]
        out_p = _merge(scores.softmax(dim=-1) @ vp)  # [B, P, width]
        out_p = F.linear(out_p, attn.out_proj.weight, attn.out_proj.bias)
    qs = qs * scale
    to_prefix = torch.einsum("bkhsd,bhpd->bkhsp", qs, kp)  # [B, K, H, S, P]: every prefix key visible
    to_self = qs @ ks.transpose(-1, -2) + _causal_mask(qs.shape[-2], qs)  # [B, K, H, S, S]
    weights = torch.cat([to_prefix, to_self], dim=-1).softmax(dim=-1)
    n_prefix = kp.shape[-2]
    out_s = torch.einsum("bkhsp,bhpd->bkhsd", weights[..., :n_prefix], vp) + weights[..., n_prefix:] @ vs
    out_s = F.linear(_merge(out_s), attn.out_proj.weight, attn.out_proj.bias)  # [B, K, S, width]
    return out_p, out_s


def encode_shared_prefix(model: Any, prefix: Tensor, suffix: Tensor, eot: Tensor,
                         deep: Sequence[Tensor] = ()) -> Tensor:
    """Text features of the prompts ``[prefix_b, suffix_k]`` for every b and k: ``[B, K, D]``.

    ``prefix``: ``[B, P, width]`` token embeddings of the shared first positions (SOT and
    context; one row per image for instance-conditioned contexts, ``B = 1`` otherwise);
    ``suffix``: ``[K, S, width]`` embeddings of the remaining positions of each class prompt
    (class tokens, ".", EOT, padding); ``eot``: ``[K]`` the EOT position of each prompt counted
    within its suffix. No positional embedding is added by the caller. Equals
    ``encode_text_embeddings`` on the concatenated ``[B * K, P + S]`` prompts; gradients flow
    into ``prefix`` and ``suffix``.

    ``deep`` (MaPLe, PromptSRC; ``fsclip.prompting.deep``): tensors ``[P - 1, width]`` that
    replace the context positions 1..P-1 of the hidden states at the input of blocks
    1..len(deep) (no positional embedding added); later blocks carry the positions on.
    """
    if prefix.dim() != 3 or suffix.dim() != 3 or prefix.shape[-1] != suffix.shape[-1]:
        raise ValueError(f"expected prefix [B, P, width] and suffix [K, S, width], got "
                         f"{tuple(prefix.shape)} and {tuple(suffix.shape)}")
    tower = as_backbone(model).text_tower()
    dtype = tower.dtype
    b, n_prefix, _ = prefix.shape
    k, n_suffix, width = suffix.shape
    pos = tower.positional_embedding.type(dtype)
    if n_prefix + n_suffix > pos.shape[0]:
        raise ValueError(f"prompts of {n_prefix + n_suffix} tokens exceed the context length {pos.shape[0]}")
    p = prefix.type(dtype) + pos[:n_prefix]  # [B, P, width]
    s = (suffix.type(dtype) + pos[n_prefix:n_prefix + n_suffix]).expand(b, k, n_suffix, width)  # [B, K, S, width]
    blocks = list(tower.blocks)
    if len(deep) >= len(blocks):
        raise ValueError(f"{len(deep)} deep prompts for {len(blocks)} text blocks (at most {len(blocks) - 1})")
    for i, block in enumerate(blocks):
        if 1 <= i <= len(deep):  # deep prompts replace the context positions entering block i
            p = torch.cat([p[:, :1], deep[i - 1].type(dtype).expand(b, n_prefix - 1, -1)], dim=1)
        last = i == len(blocks) - 1  # the prefix's own output is not needed after the last block
        ls_1, ls_2 = getattr(block, "ls_1", _identity), getattr(block, "ls_2", _identity)  # OpenCLIP's layer scale
        out_p, out_s = shared_prefix_attention(block.attn, block.ln_1(p), block.ln_1(s), prefix_only_kv=last)
        s = s + ls_1(out_s)
        s = s + ls_2(block.mlp(block.ln_2(s)))
        if not last:
            p = p + ls_1(out_p)
            p = p + ls_2(block.mlp(block.ln_2(p)))
    x = s[:, torch.arange(k, device=s.device), eot.to(s.device)]  # [B, K, width] at each EOT
    x = tower.ln_final(x).type(dtype)
    return tower.project(x)  # [B, K, D]


def _identity(x: Tensor) -> Tensor:
    return x
