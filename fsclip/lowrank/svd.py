"""Singular-value fine-tuning of CLIP's weight matrices (as CLIP-SVD uses it).

Each adapted weight ``W`` ``[m, n]`` of a residual block (the q, k and v row-blocks of the packed
``in_proj_weight`` as three matrices, the attention output projection ``o``, the MLP's ``c_fc``
and ``c_proj``) is factorised once, in float32, at full rank ``k = min(m, n)``::

    W = U diag(s) V^T          U [m, k], V^T [k, n] frozen; s [k] trainable (float32), init = s
    W' = U diag(s') V^T        the adapted weight; biases stay frozen

``W'`` is computed as ``W + U diag(s' - s) V^T``. That is the same matrix up to the SVD's round-off
``W - U diag(s) V^T`` (about 2e-6 of ``|W x|`` in float32 at ViT-B/16's sizes; the factors are
checked against ``W`` with a bound of 1e-4 whenever computed or loaded), and it has two
advantages: unchanged singular values give the frozen model bit for bit, and the update is
formed in float32 with autocast off, so fp16 weights and amp runs never round ``U``, ``s`` or
``V`` to half precision.
Recomposing ``W'`` costs ``m n k`` multiply-adds per matrix and forward (85 G over ViT-B/16's 144
matrices), less than running the tokens through ``V^T``, ``diag(s')`` and ``U`` one after the
other once a batch holds more tokens than the matrix's larger side (32 ViT-B/16 images: 6,304).

Attention keeps the frozen ``nn.MultiheadAttention`` and runs ``F.multi_head_attention_forward``
(its own call) with the adapted packed weights; the MLP's Linears run ``F.linear`` with ``W'``.

The SVD is computed once and cached on disk (fsclip.lowrank.svd_cache).

Why not ``peft``: it has no method that trains only the singular values of a frozen weight (its
SVD-based methods, AdaLoRA and the PiSSA/OLoRA initialisations, train new factors), and, as for
LoRA, its adapters wrap whole ``nn.Linear`` modules, not the q/k/v slices of a packed projection.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


from .lora import ENCODERS as LORA_ENCODERS, check_sites
from .svd_cache import Factors, svd_factors

ATTENTION = ("q", "k", "v", "o")
MATRICES = ATTENTION + ("c_fc", "c_proj")
ENCODERS = LORA_ENCODERS  # the same two encoders as CLIP-LoRA


class SingularValues(nn.Module):
    """The trainable singular values ``s`` of one frozen weight and its frozen singular vectors.

    ``U``, ``Vh`` and the pretrained ``s0`` are non-persistent buffers: a state dict holds ``s`` only.
    """

    def __init__(self, u: Tensor, s: Tensor, vh: Tensor) -> None:
        super().__init__()
        self.register_buffer("U", u.float().contiguous(), persistent=False)  # [m, k]
        self.register_buffer("Vh", vh.float().contiguous(), persistent=False)  # [k, n]
        self.register_buffer("s0", s.float().clone(), persistent=False)  # [k]
        self.s = nn.Parameter(s.float().clone())  # [k]

    def delta(self) -> Tensor:
        """``U diag(s - s0) V^T`` ``[m, n]`` in float32 (autocast off)."""
        with torch.autocast(self.U.device.type, enabled=False):
            return (self.U * (self.s - self.s0)) @ self.Vh

    def adapted(self, weight: Tensor) -> Tensor:
        """``W' = W + U diag(s - s0) V^T`` in ``weight``'s dtype."""
        return (weight.float() + self.delta()).to(weight.dtype)


class SVDLinear(nn.Module):
    """A frozen ``nn.Linear`` (``self.base``) run with ``W' = U diag(s) V^T`` and its own bias."""

    def __init__(self, base: nn.Linear, factors: Factors) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.sv = SingularValues(*factors)

    def merged_weight(self) -> Tensor:
        return self.sv.adapted(self.base.weight)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.merged_weight(), self.base.bias)


class SVDMultiheadAttention(nn.Module):
    """A frozen ``nn.MultiheadAttention`` (``self.base``) with trainable singular values of the
    q, k, v row-blocks of its packed ``in_proj_weight`` and of ``out_proj`` (keys of ``self.sv``)."""

    def __init__(self, base: nn.MultiheadAttention, factors: Dict[str, Factors]) -> None:
        super().__init__()
        if not base._qkv_same_embed_dim or base.in_proj_weight is None:
            raise ValueError("SVDMultiheadAttention needs a packed in_proj_weight (CLIP's attention)")
        self.base = base.requires_grad_(False)
        self.sv = nn.ModuleDict({p: SingularValues(*f) for p, f in factors.items()})

    def merged_weights(self) -> Tuple[Tensor, Tensor]:
        """``([W_q'; W_k'; W_v'], W_o')`` in the weights' dtype (frozen blocks where not adapted)."""
        b, d = self.base, self.base.embed_dim
        w_in, w_out = b.in_proj_weight, b.out_proj.weight
        if any(p in self.sv for p in "qkv"):
            w_in = torch.cat([self.sv[p].adapted(w_in[i * d:(i + 1) * d]) if p in self.sv else w_in[i * d:(i + 1) * d]
                              for i, p in enumerate("qkv")])
        if "o" in self.sv:
            w_out = self.sv["o"].adapted(w_out)
        return w_in, w_out

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Optional[Tensor] = None,
                need_weights: bool = False, attn_mask: Optional[Tensor] = None, **kwargs) -> Tuple[Tensor, None]:
        b = self.base
        if b.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        w_in, w_out = self.merged_weights()
        out = F.multi_head_attention_forward(
            query, key, value, b.embed_dim, b.num_heads, w_in, b.in_proj_bias, b.bias_k, b.bias_v,
            b.add_zero_attn, b.dropout, w_out, b.out_proj.bias, training=b.training,
            key_padding_mask=key_padding_mask, need_weights=False, attn_mask=attn_mask)[0]
        return (out.transpose(0, 1) if b.batch_first else out), None


# ---------------------------------------------------------------------------------- where
def _blocks(model: nn.Module, encoder: str) -> Optional[nn.Module]:
    """The residual blocks of CLIP's text transformer or ViT (None for a ResNet image encoder)."""
    if encoder == "text":
        return model.transformer.resblocks
    visual = model.visual
    return visual.transformer.resblocks if hasattr(visual, "transformer") else None


def _chosen_blocks(model: nn.Module, encoders: Sequence[str], positions: Union[str, Sequence[int]],
                   matrices: Sequence[str]) -> List[Tuple[str, int, nn.Module]]:
    bad = [m for m in matrices if m not in MATRICES] + [e for e in encoders if e not in ENCODERS]
    if bad or not matrices:
        raise ValueError(f"bad matrices/encoders {bad or list(matrices)}; use subsets of {list(MATRICES)} "
                         f"and {list(ENCODERS)}")
    chosen = []
    for encoder in encoders:
        blocks = _blocks(model, encoder)
        if blocks is None:
            raise ValueError("a ResNet image encoder has no transformer blocks to adapt")
        idx = range(len(blocks)) if positions == "all" else list(positions)
        if any(not 0 <= i < len(blocks) for i in idx):
            raise ValueError(f"block indices {list(idx)} outside 0..{len(blocks) - 1} of the {encoder} encoder")
        chosen += [(encoder, i, blocks[i]) for i in idx]
    return chosen


def _frozen(module: nn.Module) -> nn.Module:
    return module.base if isinstance(module, (SVDLinear, SVDMultiheadAttention)) else module


def weight_matrices(model: nn.Module, encoders: Sequence[str] = ENCODERS, positions: Union[str, Sequence[int]] = "all",
                    matrices: Sequence[str] = MATRICES) -> Dict[str, Tensor]:
    """``{"text_3_q": W, ...}``: the frozen weights that :func:`apply_svd` factorises (views, no copy)."""
    out: Dict[str, Tensor] = {}
    for encoder, i, block in _chosen_blocks(model, encoders, positions, matrices):
        attn, d = _frozen(block.attn), _frozen(block.attn).embed_dim
        for j, p in enumerate("qkv"):
            if p in matrices:
                out[f"{encoder}_{i}_{p}"] = attn.in_proj_weight[j * d:(j + 1) * d]
        if "o" in matrices:
            out[f"{encoder}_{i}_o"] = attn.out_proj.weight
        for p in ("c_fc", "c_proj"):
            if p in matrices:
                out[f"{encoder}_{i}_{p}"] = _frozen(getattr(block.mlp, p)).weight
    return out


def count_svd_params(blocks: int, matrices: int, width: int) -> int:
    """Singular values of ``matrices`` matrices in each of ``blocks`` blocks of ``width``: every
    CLIP matrix here has ``min(m, n) = width``, so ``blocks * matrices * width`` (ViT-B/16, all six
    in both encoders: 12*6*768 + 12*6*512 = 92,160)."""
    return blocks * matrices * width


# ---------------------------------------------------------------------------------- applying
def apply_svd(model: nn.Module, encoders: Sequence[str] = ENCODERS, positions: Union[str, Sequence[int]] = "all",
              matrices: Sequence[str] = MATRICES, cache_dir: str = "") -> Dict[str, SingularValues]:
    """Put :class:`SVDMultiheadAttention` / :class:`SVDLinear` in place of the chosen blocks'
    attention and MLP Linears, in place; returns ``{"text_3_q": SingularValues, ...}``. Only the
    singular values require gradients afterwards. ``positions``: "all" or block indices; a bad
    choice (ResNet image encoder, unknown matrix, block index) raises ValueError."""
    weights = weight_matrices(model, encoders, positions, matrices)
    model.requires_grad_(False)
    factors = svd_factors(weights, cache_dir)
    sites: Dict[str, SingularValues] = {}
    for encoder, i, block in _chosen_blocks(model, encoders, positions, matrices):
        tag = f"{encoder}_{i}"
        attn = {p: factors[f"{tag}_{p}"] for p in ATTENTION if p in matrices}
        if attn and not isinstance(block.attn, SVDMultiheadAttention):
            block.attn = SVDMultiheadAttention(block.attn, attn).to(block.attn.in_proj_weight.device)
        for p in ("c_fc", "c_proj"):
            layer = getattr(block.mlp, p)
            if p in matrices and not isinstance(layer, SVDLinear):
                setattr(block.mlp, p, SVDLinear(layer, factors[f"{tag}_{p}"]).to(layer.weight.device))
        for p in MATRICES:
            if p in matrices:
                sites[f"{tag}_{p}"] = block.attn.sv[p] if p in ATTENTION else getattr(block.mlp, p).sv
    return sites


def svd_modules(model: nn.Module) -> List[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (SVDLinear, SVDMultiheadAttention))]


def svd_state_dict(model: nn.Module) -> Dict[str, Tensor]:
    """Only the singular values of ``model`` (keys ending in ``sv.s`` / ``sv.<p>.s``)."""
    return {k: v for k, v in model.state_dict().items() if k.endswith(".s") and ".sv." in k}


@torch.no_grad()
def merge_svd(model: nn.Module) -> nn.Module:
    """Write every ``W' = U diag(s') V^T`` into its frozen weight and put back the plain
    ``nn.MultiheadAttention`` / ``nn.Linear`` (in CLIP's dtype): the deployment export. In place."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, SVDMultiheadAttention):
                w_in, w_out = child.merged_weights()
                child.base.in_proj_weight.copy_(w_in)
                child.base.out_proj.weight.copy_(w_out)
                setattr(parent, name, child.base)
            elif isinstance(child, SVDLinear):
                child.base.weight.copy_(child.merged_weight())
                setattr(parent, name, child.base)
    return model


def check_svd_options(encoders: Sequence[str], positions: Sequence, matrices: Sequence[str], key: str) -> None:
    """One ConfigError for a bad ``<key>.ENCODERS / POSITIONS / MATRICES`` value."""
    check_sites(encoders, positions, matrices, MATRICES, key, "MATRICES")
