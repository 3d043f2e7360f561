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
    ``vit_project_tokens`` applies ``ln_post`` and ``proj`` to every token;
    ``vit_head_single_query`` is the last block + ``vit_head`` computed for the class token only.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

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
    about 5x faster. Training AttnPool_F (SAFE) is what this speeds up. The arithmetic is
    ``attnpool_single_query`` (shared with the stacked copies of ``fsclip.adapt.stacked``),
    with every weight applied as ``F.linear`` applies it (``x @ W^T``: on a CPU, ``W @ x^T`` for
    a few images runs at half the speed).

    ``dense`` is cast to the pool's weight dtype; its spatial size must match the pool's
    positional embedding (the model's input resolution / 32).
    """
    pool = _attnpool(attnpool)
    return attnpool_single_query(attnpool_tokens(_check_map(pool, dense)), **attnpool_params(pool))


def attnpool_tokens(dense: Tensor) -> Tensor:
    """``[B, C, H, W]`` map -> the pool's input tokens ``[B, 1 + HW, C]``: the mean token first,
    then the map in row-major order (before the positional embedding)."""
    x = dense.flatten(2).transpose(1, 2)  # [B, HW, C]
    return torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)


def attnpool_params(attnpool: Any) -> Dict[str, Tensor]:
    """The pool's parameters in the shapes ``attnpool_single_query`` takes (views, so gradients
    and in-place writes reach the module). The key bias is absent: it cancels in the softmax."""
    pool = _attnpool(attnpool)
    c = pool.q_proj.weight.shape[1]
    heads = int(pool.num_heads)
    return {
        "pos": pool.positional_embedding.to(pool.q_proj.weight.dtype),  # [L, C] (fp32 in CLIP's fp16 models)
        "wq": pool.q_proj.weight, "bq": pool.q_proj.bias,  # [C, C], [C]
        "wk": pool.k_proj.weight.view(heads, c // heads, c),  # [H, d, C]
        "wv": pool.v_proj.weight.view(heads, c // heads, c), "bv": pool.v_proj.bias,  # [H, d, C], [C]
        "wc": pool.c_proj.weight, "bc": pool.c_proj.bias,  # [D, C], [D]
    }


class _WeightProduct(torch.autograd.Function):
    """``x @ weight^T`` (``transposed``, as ``F.linear``) or ``x @ weight``, with the weight's
    gradient computed in the weight's own layout (``bmm``'s backward gives it transposed for
    ``x @ weight^T``, and a per-head view of a weight then copies it: 16 MB per projection and
    step at RN50 size). ``into_grad``: the gradient is written into ``weight.grad``, allocated
    once and overwritten by every backward, instead of handed to autograd (for a leaf used once
    per forward: the stacked copies of ``fsclip.adapt.stacked``, whose gradients would otherwise
    be S times larger fresh allocations every step)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, transposed: bool, into_grad: bool) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.weight, ctx.transposed, ctx.into_grad = weight, transposed, into_grad
        return x @ weight.mT if transposed else x @ weight

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (x,), w = ctx.saved_tensors, ctx.weight
        grad_w = None
        if ctx.needs_input_grad[1]:
            out = None
            if ctx.into_grad:
                if w.grad is None:
                    w.grad = torch.empty_like(w)
                out = w.grad
            grad_w = torch.matmul(grad.mT, x, out=out) if ctx.transposed else torch.matmul(x.mT, grad, out=out)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = grad @ w if ctx.transposed else grad @ w.mT
        return grad_x, None if ctx.into_grad else grad_w, None, None


def weight_product(x: Tensor, weight: Tensor, transposed: bool, into_grad: bool = False) -> Tensor:
    """``x @ weight^T`` (as ``F.linear``) when ``transposed``, else ``x @ weight``: how the
    single-query functions below multiply activations by weights (see ``_WeightProduct``)."""
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return _WeightProduct.apply(x, weight, transposed, into_grad)
    return x @ weight.mT if transposed else x @ weight


Product = Callable[[Tensor, Tensor, bool], Tensor]


def single_query_attention(q: Tensor, keys: Tensor, wk: Tensor, wv: Tensor, bv: Tensor,
                           mm: Product = weight_product, scale: Optional[Tensor] = None,
                           shift: Optional[Tensor] = None, pos: Optional[Tensor] = None) -> Tensor:
    """Multi-head attention of one query per image over tokens ``y_l``, without projecting every
    token (see ``attnpool_forward``): ``[*S, B, C]``.

    ``q`` ``[*S, B, C]`` (scaled); ``wk``/``wv`` ``[*S, H, d, C]``, ``bv`` ``[*S, C]``; ``*S`` are
    optional leading setting dimensions (stacked copies, ``fsclip.adapt.stacked``). The tokens
    are ``y_l = keys_l`` for ``keys`` ``[B, L, C]``, shared by every setting (one product per
    image for all settings and heads), plus two optional per-setting terms:

    * ``pos`` ``[*S, L, C]``: ``y_l = keys_l + pos_l``, taken as separate products (scores
      ``q.keys_l + q.pos_l``, mixed token ``sum a_l keys_l + sum a_l pos_l``) so no per-setting
      copy of the tokens is made;
    * ``scale``/``shift`` ``[*S, C]`` (a LayerNorm's affine part): ``y_l = keys_l * scale +
      shift``; ``shift`` adds a constant to every score of a head, which cancels in the
      softmax, and the mixed token is ``(sum_l a_hl keys_l) * scale + shift``.
    """
    lead, (heads, d, c), (b, n_tok) = wk.shape[:-3], wk.shape[-3:], keys.shape[:2]
    per_channel = (*lead, 1, 1, c)
    qk = mm(q.reshape(*lead, b, heads, d).transpose(-3, -2), wk, False)  # [*S, H, B, C]: Wk_h^T q_h
    if scale is not None:
        qk = qk * scale.reshape(per_channel)
    scores = qk.reshape(-1, b, c).transpose(0, 1) @ keys.mT  # [B, S*H, L]
    scores = scores.transpose(0, 1).reshape(*lead, heads, b, n_tok)  # [*S, H, B, L]
    if pos is not None:
        scores = scores + (qk.reshape(*lead, heads * b, c) @ pos.mT).reshape(scores.shape)
    attn = scores.softmax(dim=-1)
    mixed = attn.reshape(-1, b, n_tok).transpose(0, 1) @ keys  # [B, S*H, C]: sum_l a_hl keys_l
    mixed = mixed.transpose(0, 1).reshape(*lead, heads, b, c)  # [*S, H, B, C]
    if pos is not None:
        mixed = mixed + (attn.reshape(*lead, heads * b, n_tok) @ pos).reshape(mixed.shape)
    if scale is not None:
        mixed = mixed * scale.reshape(per_channel) + shift.reshape(per_channel)
    out = mm(mixed, wv, True)  # [*S, H, B, d]: Wv_h (mixed token)
    return out.transpose(-3, -2).reshape(*lead, b, c) + bv.unsqueeze(-2)  # [*S, B, C]


def attnpool_single_query(tokens: Tensor, pos: Tensor, wq: Tensor, bq: Tensor, wk: Tensor, wv: Tensor,
                          bv: Tensor, wc: Tensor, bc: Tensor, mm: Product = weight_product) -> Tensor:
    """The attention pool's arithmetic on ``attnpool_tokens`` ``[B, L, C]``: ``[*S, B, D]``.

    Parameters as ``attnpool_params`` gives them, optionally with leading setting dimensions
    ``*S`` (one copy of the pool per setting, all applied to the same tokens).
    """
    d = wk.shape[-2]
    q = (mm(tokens[:, 0] + pos[..., :1, :], wq, True) + bq.unsqueeze(-2)) * d ** -0.5  # [*S, B, C]
    if pos.dim() == 2:  # one pool: add the positional embedding to the tokens
        out = single_query_attention(q, tokens + pos, wk, wv, bv, mm)  # [B, C]
    else:  # stacked pools: no per-setting copy of the tokens
        out = single_query_attention(q, tokens, wk, wv, bv, mm, pos=pos)  # [*S, B, C]
    return mm(out, wc, True) + bc.unsqueeze(-2)  # [*S, B, D]


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
    x = attnpool_tokens(_check_map(pool, dense))
    x = x + pool.positional_embedding.to(x.dtype)  # [B, 1 + HW, C]
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


def vit_head_params(block: Any, ln_post: Any, proj: Tensor) -> Dict[str, Tensor]:
    """The last ViT block, ``ln_post`` and ``proj`` in the shapes ``vit_head_single_query`` takes
    (views of the modules' parameters)."""
    attn = block.attn
    w, heads = attn.embed_dim, attn.num_heads
    inp = attn.in_proj_weight  # [3w, w]: query, key, value
    return {
        "ln1_w": block.ln_1.weight, "ln1_b": block.ln_1.bias,
        "wq": inp[:w], "wk": inp[w:2 * w].view(heads, w // heads, w), "wv": inp[2 * w:].view(heads, w // heads, w),
        "b_in": attn.in_proj_bias,  # [3w]; the key part cancels in the softmax
        "wo": attn.out_proj.weight, "bo": attn.out_proj.bias,
        "ln2_w": block.ln_2.weight, "ln2_b": block.ln_2.bias,
        "wfc": block.mlp.c_fc.weight, "bfc": block.mlp.c_fc.bias,
        "wpr": block.mlp.c_proj.weight, "bpr": block.mlp.c_proj.bias,
        "lnp_w": ln_post.weight, "lnp_b": ln_post.bias, "proj": proj,  # proj [w, D]
    }


def _affine(x: Tensor, weight: Tensor, bias: Tensor, n_mid: int) -> Tensor:
    """``x * weight + bias`` with ``weight``/``bias`` ``[*S, w]`` broadcast over ``n_mid`` dims."""
    shape = weight.shape[:-1] + (1,) * n_mid + weight.shape[-1:]
    return x * weight.reshape(shape) + bias.reshape(shape)


def vit_head_single_query(tokens: Tensor, ln1_w: Tensor, ln1_b: Tensor, wq: Tensor, wk: Tensor, wv: Tensor,
                          b_in: Tensor, wo: Tensor, bo: Tensor, ln2_w: Tensor, ln2_b: Tensor, wfc: Tensor,
                          bfc: Tensor, wpr: Tensor, bpr: Tensor, lnp_w: Tensor, lnp_b: Tensor, proj: Tensor,
                          mm: Product = weight_product, eps: float = 1e-5) -> Tensor:
    """``ln_post(last_block(tokens)[:, 0]) @ proj`` from batch-first tokens ``[B, L, width]`` before
    the last block: ``[*S, B, D]``, equal to ``vit_head(visual, vit_run_blocks(visual, tokens, -1))``.

    Only the class token's output is used, so only its row is computed: the other tokens enter
    as keys and values of one query, in the single-query form of ``attnpool_forward`` (no key or
    value projection of every token), and the MLP runs on one token. For ViT-B/16 (197 tokens)
    that is about 100x fewer multiply-adds than running the block. Parameters as
    ``vit_head_params`` gives them, optionally with leading setting dimensions ``*S``.
    """
    w, d = tokens.shape[-1], wk.shape[-2]
    n = F.layer_norm(tokens, (w,), eps=eps)  # ln_1 before its affine part (shared): [B, L, w]
    q = (mm(_affine(n[:, 0], ln1_w, ln1_b, 1), wq, True) + b_in[..., None, :w]) * d ** -0.5  # [*S, B, w]
    attn = single_query_attention(q, n, wk, wv, b_in[..., 2 * w:], mm, ln1_w, ln1_b)  # [*S, B, w]
    x = tokens[:, 0] + mm(attn, wo, True) + bo.unsqueeze(-2)  # class token + attention: [*S, B, w]
    h = mm(_affine(F.layer_norm(x, (w,), eps=eps), ln2_w, ln2_b, 1), wfc, True) + bfc.unsqueeze(-2)  # [*S, B, 4w]
    x = x + mm(h * torch.sigmoid(1.702 * h), wpr, True) + bpr.unsqueeze(-2)  # QuickGELU MLP: [*S, B, w]
    return mm(_affine(F.layer_norm(x, (w,), eps=eps), lnp_w, lnp_b, 1), proj, False)  # ln_post, proj: [*S, B, D]


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
