"""Low-rank updates of CLIP's attention projections (LoRA, as CLIP-LoRA uses it).

CLIP's blocks hold an ``nn.MultiheadAttention`` whose query, key and value projections are one
packed ``in_proj_weight`` ``[3d, d]`` (rows ``[0:d]`` q, ``[d:2d]`` k, ``[2d:3d]`` v). CLIP-LoRA
adapts each projection with its own rank-r pair, so :class:`LoRAMultiheadAttention` keeps the
frozen packed weight and adds one :class:`LoRAPair` (A ``[r, d_in]``, B ``[d_out, r]``) per
selected projection::

    q = W_q x + b_q + s B_q A_q drop(x)     (k, v, and optionally the output projection o alike)
    s = alpha / sqrt(r)                      (rank-stabilised scaling, as the reference code)

Dropout acts on the input of the low-rank branch only; the frozen path sees x. A is
Kaiming-uniform (a = sqrt 5), B is zero, so an adapted model starts as the frozen one.

Why not ``peft``: its LoRA wraps whole ``nn.Linear`` (or whole parameters) and cannot give the
q, k and v row-slices of one packed ``in_proj_weight`` a pair each, and it scales by alpha / r
unless told otherwise. This module does exactly the paper's update and nothing else.

Forward paths. Without active dropout (evaluation, or p = 0) the update is folded into the
packed weights, ``W + s B A``, and run through ``F.multi_head_attention_forward``: the same call
``nn.MultiheadAttention`` makes, so B = 0 reproduces it bit for bit and :func:`merge_lora` gives
the same outputs. With active dropout the projections are computed by hand and attention runs
through ``F.scaled_dot_product_attention``. The factors are float32 whatever CLIP's dtype
(CLIP in fp16 under ``PREC fp16``); the update is cast to the weights' dtype where it is added.
"""

from __future__ import annotations

import math
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from fsclip.errors import ConfigError

PROJECTIONS = ("q", "k", "v", "o")
ENCODERS = ("text", "vision")


class LoRAPair(nn.Module):
    """One low-rank update ``s B A`` of a ``[d_out, d_in]`` weight, with dropout on its input."""

    def __init__(self, d_in: int, d_out: int, r: int, alpha: float, dropout: float) -> None:
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(r, d_in))
        self.lora_B = nn.Parameter(torch.zeros(d_out, r))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scale = alpha / math.sqrt(r)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.p = float(dropout)

    def delta(self) -> Tensor:
        """``s B A`` ``[d_out, d_in]`` (float32)."""
        return self.scale * self.lora_B @ self.lora_A

    def forward(self, x: Tensor) -> Tensor:
        """``s B A drop(x)`` in float32 (autocast may lower it)."""
        return self.scale * F.linear(F.linear(self.dropout(x.to(self.lora_A.dtype)), self.lora_A), self.lora_B)


class LoRAMultiheadAttention(nn.Module):
    """A frozen ``nn.MultiheadAttention`` (``self.base``) with one LoRAPair per projection in
    ``self.lora`` (keys among q, k, v, o). Call signature and output as the base module's."""

    def __init__(self, base: nn.MultiheadAttention, params: Sequence[str], r: int, alpha: float,
                 dropout: float) -> None:
        super().__init__()
        if not base._qkv_same_embed_dim or base.in_proj_weight is None:
            raise ValueError("LoRAMultiheadAttention needs a packed in_proj_weight (CLIP's attention)")
        self.base = base.requires_grad_(False)  # frozen: only the factors train
        d = base.embed_dim
        self.lora = nn.ModuleDict({p: LoRAPair(d, d, r, alpha, dropout) for p in params})

    def _dropout_active(self) -> bool:
        return any(pair.training and pair.p > 0 for pair in self.lora.values())

    def merged_weights(self) -> Tuple[Tensor, Tensor]:
        """``(W_in + [s B_q A_q; s B_k A_k; s B_v A_v], W_o + s B_o A_o)`` in the weights' dtype."""
        b, d = self.base, self.base.embed_dim
        w_in, w_out = b.in_proj_weight, b.out_proj.weight
        blocks = [self.lora[p].delta().float() if p in self.lora else torch.zeros(d, d, device=w_in.device)
                  for p in "qkv"]
        if any(p in self.lora for p in "qkv"):
            w_in = (w_in.float() + torch.cat(blocks)).to(w_in.dtype)
        if "o" in self.lora:
            w_out = (w_out.float() + self.lora["o"].delta().float()).to(w_out.dtype)
        return w_in, w_out

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Optional[Tensor] = None,
                need_weights: bool = False, attn_mask: Optional[Tensor] = None, **kwargs) -> Tuple[Tensor, None]:
        b = self.base
        batch_first = b.batch_first
        if batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        if not self._dropout_active():  # the update folded into the weights: nn.MultiheadAttention's own call
            w_in, w_out = self.merged_weights()
            out = F.multi_head_attention_forward(
                query, key, value, b.embed_dim, b.num_heads, w_in, b.in_proj_bias, b.bias_k, b.bias_v,
                b.add_zero_attn, b.dropout, w_out, b.out_proj.bias, training=b.training,
                key_padding_mask=key_padding_mask, need_weights=False, attn_mask=attn_mask)[0]
        else:
            if key_padding_mask is not None or b.bias_k is not None or b.add_zero_attn:
                raise ValueError("LoRAMultiheadAttention's dropout path supports CLIP's attention only")
            out = self._attend_by_hand(query, key, value, attn_mask)
        return (out.transpose(0, 1) if batch_first else out), None

    def _attend_by_hand(self, query: Tensor, key: Tensor, value: Tensor, attn_mask: Optional[Tensor]) -> Tensor:
        b, d, h = self.base, self.base.embed_dim, self.base.num_heads
        w, bias = b.in_proj_weight, b.in_proj_bias
        projected = []
        for i, (name, x) in enumerate(zip("qkv", (query, key, value))):
            y = F.linear(x, w[i * d:(i + 1) * d], None if bias is None else bias[i * d:(i + 1) * d])
            if name in self.lora:  # W x + s B A drop(x)
                y = y + self.lora[name](x).to(y.dtype)
            projected.append(y)
        q, k, v = projected
        L, N = q.shape[0], q.shape[1]  # query length, batch
        q, k, v = (t.reshape(t.shape[0], N, h, d // h).permute(1, 2, 0, 3) for t in (q, k, v))  # [N, h, L, hd]
        if attn_mask is not None:
            attn_mask = attn_mask.to(q.dtype) if attn_mask.dtype != torch.bool else attn_mask
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=b.dropout if b.training else 0.0)
        out = out.permute(2, 0, 1, 3).reshape(L, N, d)
        y = F.linear(out, b.out_proj.weight, b.out_proj.bias)
        if "o" in self.lora:
            y = y + self.lora["o"](out).to(y.dtype)
        return y


def _blocks(model: nn.Module, encoder: str) -> Optional[nn.Module]:
    """The residual blocks of CLIP's text transformer or ViT (None for a ResNet image encoder)."""
    if encoder == "text":
        return model.transformer.resblocks
    visual = model.visual
    return visual.transformer.resblocks if hasattr(visual, "transformer") else None


def apply_lora(model: nn.Module, encoders: Iterable[str] = ENCODERS, positions: Union[str, Sequence[int]] = "all",
               params: Sequence[str] = ("q", "k", "v"), r: int = 2, alpha: float = 1.0, dropout: float = 0.25
               ) -> Dict[str, LoRAMultiheadAttention]:
    """Replace ``block.attn`` of the chosen blocks by :class:`LoRAMultiheadAttention`, in place.

    ``encoders``: "text" and/or "vision" (a ResNet image encoder has no attention blocks: asking
    for it raises ValueError); ``positions``: "all" or block indices; ``params``: among q, k, v, o.
    Returns ``{"text_3": wrapper, ...}``; only the new factors require gradients afterwards.
    """
    bad = [p for p in params if p not in PROJECTIONS] + [e for e in encoders if e not in ENCODERS]
    if bad or r < 1 or not 0 <= dropout < 1:
        raise ValueError(f"apply_lora: bad projections/encoders {bad}, rank {r} or dropout {dropout}")
    model.requires_grad_(False)
    sites: Dict[str, LoRAMultiheadAttention] = {}
    for encoder in encoders:
        blocks = _blocks(model, encoder)
        if blocks is None:
            raise ValueError("apply_lora: a ResNet image encoder has no attention blocks to adapt")
        chosen = range(len(blocks)) if positions == "all" else list(positions)
        if any(not 0 <= i < len(blocks) for i in chosen):
            raise ValueError(f"apply_lora: block indices {list(chosen)} outside 0..{len(blocks) - 1} "
                             f"of the {encoder} encoder")
        for i in chosen:
            block = blocks[i]
            if not isinstance(block.attn, LoRAMultiheadAttention):
                dev = block.attn.in_proj_weight.device
                block.attn = LoRAMultiheadAttention(block.attn, params, r, alpha, dropout).to(dev)
                block.attn.lora.float()
            sites[f"{encoder}_{i}"] = block.attn
    return sites


def lora_modules(model: nn.Module) -> List[LoRAMultiheadAttention]:
    return [m for m in model.modules() if isinstance(m, LoRAMultiheadAttention)]


def lora_state_dict(model: nn.Module) -> Dict[str, Tensor]:
    """Only the low-rank factors of ``model`` (keys ending in ``lora_A`` / ``lora_B``)."""
    return {k: v for k, v in model.state_dict().items() if k.endswith(("lora_A", "lora_B"))}


def count_lora_params(blocks: int, params: int, r: int, width: int) -> int:
    """Trainable parameters of LoRA on ``blocks`` blocks, ``params`` square projections each:
    ``blocks * params * 2 r width`` (ViT-B/16 defaults: 12*3*2*2*768 + 12*3*2*2*512 = 184,320)."""
    return blocks * params * 2 * r * width


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every ``s B A`` into its frozen weight and put back plain ``nn.MultiheadAttention``
    (``W + s B A``, in CLIP's dtype): the deployment export. In place; returns ``model``."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoRAMultiheadAttention):
                w_in, w_out = child.merged_weights()
                base = child.base
                base.in_proj_weight.copy_(w_in)
                base.out_proj.weight.copy_(w_out)
                setattr(parent, name, base)
    return model


def check_sites(encoders: Sequence[str], positions: Sequence, chosen: Sequence[str], allowed: Sequence[str],
                key: str, what: str) -> None:
    """One ConfigError for a bad ``<key>.ENCODERS / POSITIONS / <what>`` value (where in CLIP a
    weight-space update goes: CLIP-LoRA's PARAMS, CLIP-SVD's MATRICES)."""
    if not encoders or any(e not in ENCODERS for e in encoders):
        raise ConfigError(f"{key}.ENCODERS is {list(encoders)}; use a non-empty subset of {list(ENCODERS)}")
    if not chosen or any(p not in allowed for p in chosen):
        raise ConfigError(f"{key}.{what} is {list(chosen)}; use a non-empty subset of {list(allowed)}")
    if positions != "all" and not all(isinstance(i, int) for i in positions):
        raise ConfigError(f"{key}.POSITIONS is {positions!r}; use \"all\" or a list of block indices")


def check_lora_options(encoders: Sequence[str], positions: Sequence, params: Sequence[str], key: str) -> None:
    """One ConfigError for a bad ``<key>.ENCODERS / POSITIONS / PARAMS`` value."""
    check_sites(encoders, positions, params, PROJECTIONS, key, "PARAMS")
