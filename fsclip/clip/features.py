"""Dense image features of clip-anytorch CLIP encoders, exposed once for every method.

Every function takes the CLIP model or its ``visual`` (or, for the attention-pool functions,
the ``attnpool`` module, the ResNet ``visual`` or the model). Images are moved to the device and
cast to the dtype of ``visual.conv1.weight`` (fp16 under CLIP's CUDA precision), as
``CLIP.encode_image`` does; outputs keep that dtype. Gradients flow unless the caller disables
them.

ResNet (ModifiedResNet), ``x -> G(x) -> attnpool``:
    ``resnet_trunk(visual, x)`` is ``G(x)``, the ``[B, C, H, W]`` map before attention pooling
    (C = width * 32, e.g. 2048 x 7 x 7 for RN50 at 224 px);
    ``attnpool_forward(attnpool, G(x))`` equals ``visual.attnpool(G(x))`` and so
    ``visual(x)``: ``[B, D]``;
    ``attnpool_dense(attnpool, G(x))`` gives every token through the value and output
    projections, ``[B, 1 + HW, D]`` (see its docstring);
    ``attnpool_all_tokens(attnpool, G(x))`` runs the pool's attention for every token as a
    query, ``[B, 1 + HW, D]`` (row 0 = ``attnpool_forward``).

ViT (VisionTransformer; clip's transformer is sequence-first, these functions are batch-first):
    ``vit_embed(visual, x)`` are the tokens entering the first block;
    ``vit_tokens(visual, x, k)`` are the ``[B, 1 + HW, width]`` tokens after the last block
    (k = 0) or before the last k blocks; ``vit_run_blocks(visual, tokens, start)`` runs blocks
    ``start:``; ``vit_head(visual, tokens)`` is ``ln_post(class token) @ proj``: ``[B, D]``;
    ``vit_project_tokens`` applies ``ln_post`` and ``proj`` to every token.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def _visual(model_or_visual: Any) -> Any:
    return getattr(model_or_visual, "visual", model_or_visual)


def is_vit(model_or_visual: Any) -> bool:
    """True for a CLIP VisionTransformer (or a CLIP model with one), False for a ModifiedResNet."""
    visual = _visual(model_or_visual)
    return hasattr(visual, "class_embedding") and hasattr(visual, "transformer")


def _prepare(visual: Any, images: Tensor) -> Tensor:
    weight = visual.conv1.weight
    return images.to(device=weight.device, dtype=weight.dtype)


def _require(visual: Any, vit: bool, what: str) -> None:
    if is_vit(visual) != vit:
        kind = "a ViT" if vit else "a ResNet"
        raise TypeError(f"{what} needs {kind} CLIP image encoder, got {type(visual).__name__}")


# ----------------------------------------------------------------------------------- ResNet
def resnet_trunk(model_or_visual: Any, images: Tensor) -> Tensor:
    """``G(x)``: stem and layer1..layer4 of a ModifiedResNet, ``[B, C, H, W]`` (pre-pool map)."""
    visual = _visual(model_or_visual)
    _require(visual, False, "resnet_trunk")
    x = _prepare(visual, images)
    x = visual.relu1(visual.bn1(visual.conv1(x)))
    x = visual.relu2(visual.bn2(visual.conv2(x)))
    x = visual.relu3(visual.bn3(visual.conv3(x)))
    x = visual.avgpool(x)
    x = visual.layer1(x)
    x = visual.layer2(x)
    x = visual.layer3(x)
    return visual.layer4(x)


def _attnpool(obj: Any) -> Any:
    pool = getattr(_visual(obj), "attnpool", obj)
    if not hasattr(pool, "positional_embedding") or not hasattr(pool, "v_proj"):
        raise TypeError(f"expected a CLIP AttentionPool2d (or a ResNet CLIP), got {type(obj).__name__}")
    return pool


def _check_map(pool: Any, dense: Tensor) -> Tensor:
    if dense.dim() != 4:
        raise ValueError(f"expected a [B, C, H, W] feature map, got shape {tuple(dense.shape)}")
    tokens = pool.positional_embedding.shape[0] - 1
    if dense.shape[2] * dense.shape[3] != tokens or dense.shape[1] != pool.positional_embedding.shape[1]:
        side = round(tokens ** 0.5)
        raise ValueError(
            f"the attention pool expects a [B, {pool.positional_embedding.shape[1]}, {side}, {side}] "
            f"map (input images of {side * 32} px), got {tuple(dense.shape)}: resize the images "
            "to the model's input resolution (fsclip.clip.input_resolution(model))"
        )
    return dense.to(pool.q_proj.weight.dtype)


def attnpool_forward(attnpool: Any, dense: Tensor) -> Tensor:
    """CLIP's attention pooling of a ``[B, C, H, W]`` map: ``[B, D]``, equal to
    ``visual.attnpool(dense)`` up to float rounding, at a fraction of its cost.

    The pool has a single query (the mean token), so the key and value projections need not
    run on every token. Per head h, with tokens ``t_l`` (``[C]``) and ``q_h`` the scaled query:

        score_hl = q_h . (Wk_h t_l + bk_h) = (Wk_h^T q_h) . t_l + const_h
        out_h    = sum_l a_hl (Wv_h t_l + bv_h) = Wv_h (sum_l a_hl t_l) + bv_h

    (the constant cancels in the softmax; the weights a_hl sum to 1). That is three C x C
    products per image instead of 2 (1 + HW) + 1, about 30x fewer projection multiply-adds for
    RN50 (C = 2048, 7 x 7 map); measured forward+backward, where the weight gradients remain,
    about 5x faster. Training AttnPool_F (SAFE) is what this speeds up.

    ``dense`` is cast to the pool's weight dtype; its spatial size must match the pool's
    positional embedding (the model's input resolution / 32).
    """
    pool = _attnpool(attnpool)
    x = _check_map(pool, dense).flatten(2).transpose(1, 2)  # [B, HW, C]
    x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)  # [B, L, C], L = 1 + HW
    x = x + pool.positional_embedding.to(x.dtype)
    b, _, c = x.shape
    heads = int(pool.num_heads)
    d = pool.q_proj.weight.shape[0] // heads
    q = F.linear(x[:, 0], pool.q_proj.weight, pool.q_proj.bias) * d ** -0.5  # [B, C]
    qk = torch.einsum("bhd,hdc->bhc", q.view(b, heads, d), pool.k_proj.weight.view(heads, d, c))  # [B, H, C]
    attn = torch.einsum("bhc,blc->bhl", qk, x).softmax(dim=-1)  # [B, H, L]
    mixed = torch.einsum("bhl,blc->bhc", attn, x)  # [B, H, C]
    out = torch.einsum("bhc,hdc->bhd", mixed, pool.v_proj.weight.view(heads, d, c))  # [B, H, d]
    out = out.reshape(b, heads * d) + pool.v_proj.bias
    return F.linear(out, pool.c_proj.weight, pool.c_proj.bias)  # [B, D]


def attnpool_dense(attnpool: Any, dense: Tensor) -> Tensor:
    """Every attention-pool token through the value and output projections: ``[B, 1 + HW, D]``.

    Exactly what it computes, with the pool's own inputs ``t_0 = mean_j x_j + p_0`` and
    ``t_j = x_j + p_j`` (``x_j`` the C-dim map vectors in row-major order, ``p`` the positional
    embedding): ``out_j = c_proj(v_proj(t_j))``. Spatial tokens 1..HW are the MaskCLIP-style
    dense features in CLIP's joint embedding space. Token 0 is *not* the pooled feature
    (``attnpool_forward`` weights all value vectors by attention); with uniform attention the
    pooled feature would be the mean of all 1 + HW rows, since both projections are affine.
    """
    pool = _attnpool(attnpool)
    x = _check_map(pool, dense).flatten(2).transpose(1, 2)  # [B, HW, C]
    x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)  # [B, 1 + HW, C]
    x = x + pool.positional_embedding.to(x.dtype)
    x = F.linear(x, pool.v_proj.weight, pool.v_proj.bias)
    return F.linear(x, pool.c_proj.weight, pool.c_proj.bias)


def attnpool_all_tokens(attnpool: Any, dense: Tensor) -> Tensor:
    """CLIP's attention pool with every token as a query: ``[B, 1 + HW, D]``.

    The pool's multi-head attention over its tokens ``t_0 = mean_j x_j + p_0``, ``t_j = x_j + p_j``
    is run for all 1 + HW queries instead of the first one only, so row 0 is CLIP's pooled
    feature (``attnpool_forward``) and rows 1..HW are spatial features, each pooled over the
    whole map by its own attention (what CALIP's public code feeds its attention: its RN image
    encoder returns every output token of the pool).
    """
    pool = _attnpool(attnpool)
    x = _check_map(pool, dense).flatten(2).transpose(1, 2)  # [B, HW, C]
    x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)  # [B, L, C], L = 1 + HW
    x = x + pool.positional_embedding.to(x.dtype)
    b, length, c = x.shape
    heads = int(pool.num_heads)

    def split(t: Tensor) -> Tensor:  # [B, L, C] -> [B, heads, L, C / heads]
        return t.view(b, length, heads, c // heads).transpose(1, 2)

    q = split(F.linear(x, pool.q_proj.weight, pool.q_proj.bias))
    k = split(F.linear(x, pool.k_proj.weight, pool.k_proj.bias))
    v = split(F.linear(x, pool.v_proj.weight, pool.v_proj.bias))
    out = F.scaled_dot_product_attention(q, k, v)  # [B, heads, L, C / heads]
    out = out.transpose(1, 2).reshape(b, length, c)
    return F.linear(out, pool.c_proj.weight, pool.c_proj.bias)  # [B, L, D]


# -------------------------------------------------------------------------------------- ViT
def vit_run_blocks(model_or_visual: Any, tokens: Tensor, start: int = 0,
                   end: Optional[int] = None) -> Tensor:
    """Run ViT blocks ``start:end`` (default: to the last) on batch-first ``[B, L, width]`` tokens."""
    visual = _visual(model_or_visual)
    _require(visual, True, "vit_run_blocks")
    blocks = visual.transformer.resblocks[start:end]
    x = tokens.permute(1, 0, 2)  # NLD -> LND
    for block in blocks:
        x = block(x)
    return x.permute(1, 0, 2)  # LND -> NLD


def vit_embed(model_or_visual: Any, images: Tensor) -> Tensor:
    """The tokens entering the first block: patch embedding, class token, positional embedding
    and ``ln_pre``, ``[B, 1 + HW, width]`` (class token first)."""
    visual = _visual(model_or_visual)
    _require(visual, True, "vit_embed")
    x = visual.conv1(_prepare(visual, images))  # [B, width, grid, grid]
    x = x.flatten(2).transpose(1, 2)  # [B, grid ** 2, width]
    if x.shape[1] + 1 != visual.positional_embedding.shape[0]:
        raise ValueError(
            f"images of shape {tuple(images.shape)} give {x.shape[1]} patches; the model expects "
            f"{visual.positional_embedding.shape[0] - 1} (input resolution "
            f"{visual.input_resolution} px)"
        )
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
    return visual.ln_pre(x)


def vit_tokens(model_or_visual: Any, images: Tensor, n_last_blocks_skipped: int = 0) -> Tensor:
    """ViT tokens ``[B, 1 + HW, width]`` (class token first), after the last block, or before the
    last ``n_last_blocks_skipped`` blocks (run them with ``vit_run_blocks(visual, t, n - k)``).
    """
    visual = _visual(model_or_visual)
    _require(visual, True, "vit_tokens")
    depth = len(visual.transformer.resblocks)
    if not 0 <= n_last_blocks_skipped <= depth:
        raise ValueError(f"n_last_blocks_skipped must be in 0..{depth}, got {n_last_blocks_skipped}")
    return vit_run_blocks(visual, vit_embed(visual, images), 0, depth - n_last_blocks_skipped)


def vit_project_tokens(model_or_visual: Any, tokens: Tensor) -> Tensor:
    """``ln_post`` and ``proj`` on every token: ``[B, L, width] -> [B, L, D]`` (row 0 = vit_head)."""
    visual = _visual(model_or_visual)
    _require(visual, True, "vit_project_tokens")
    x = visual.ln_post(tokens)
    return x @ visual.proj if visual.proj is not None else x


def vit_head(model_or_visual: Any, tokens: Tensor) -> Tensor:
    """CLIP's ViT output from final tokens: ``ln_post(tokens[:, 0]) @ proj``, ``[B, D]``."""
    return vit_project_tokens(model_or_visual, tokens[:, 0, :])


# ---------------------------------------------------------------------------------- both
def encode_image_with_dense(model_or_visual: Any, images: Tensor) -> Tuple[Tensor, Tensor]:
    """One pass giving ``(global [B, D], dense)``: dense is ``G(x)`` ``[B, C, H, W]`` for a
    ResNet and the final tokens ``[B, 1 + HW, width]`` for a ViT. ``global`` equals ``visual(x)``.
    """
    visual = _visual(model_or_visual)
    if is_vit(visual):
        tokens = vit_tokens(visual, images)
        return vit_head(visual, tokens), tokens
    dense = resnet_trunk(visual, images)
    return attnpool_forward(visual, dense), dense
