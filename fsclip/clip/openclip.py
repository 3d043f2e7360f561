"""The OpenCLIP family (open-clip-torch 3.x): OpenCLIP, SigLIP/SigLIP2, EVA-CLIP, MetaCLIP, offline.

``load_openclip(name)`` resolves ``name`` to local files (``fsclip.clip.openclip_files``: the
name forms, the caches looked in, the tokenizers), builds the model with
``open_clip.create_model`` from the local file, with ``HF_HUB_OFFLINE`` set for the call (so no
tower reaches for the hub either), and wraps it in :class:`OpenCLIPBackbone`, the backbone
interface of ``fsclip.clip.backbone`` with the trunk/head split SAFE and the feature cache use
(the last transformer block is the head of a ViT tower, native or timm).
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch import Tensor

from .backbone import Backbone, _Tower
from .loader import _first_line, _skip_weight_init
from .openclip_files import (  # noqa: F401  (the errors and name parsing are part of this module's API)
    SCHEMAS, OpenCLIPError, OpenCLIPWeightsNotFoundError, _offline, _tokenizer, import_open_clip, parse_openclip_name,
    resolve_openclip,
)
from .precision import resolve_precision


def load_openclip(name: str, device: Union[str, torch.device] = "cpu", cache_dir: str = "",
                  precision: str = "auto") -> "OpenCLIPBackbone":
    """Build the OpenCLIP model ``name`` offline (see the module docstring), eval mode on ``device``."""
    open_clip = import_open_clip()
    model_name, checkpoint, tag_cfg = resolve_openclip(name, cache_dir)
    prec = resolve_precision(precision, device)  # fp16 = CLIP's mixed half weights, as OpenAI's path
    norm = tuple(tag_cfg.get(k) for k in ("mean", "std")) if tag_cfg.get("mean") else None
    kwargs: dict = {}
    if tag_cfg:
        kwargs["force_preprocess_cfg"] = {k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode")
                                          if k in tag_cfg}
        kwargs["force_quick_gelu"] = bool(tag_cfg.get("quick_gelu", False))  # the activation it was trained with
    try:
        with _offline(), _skip_weight_init():  # every weight is loaded from the file right after
            model = open_clip.create_model(model_name, pretrained=None if model_name.startswith(SCHEMAS) else checkpoint, precision=prec, device=device,
                                           cache_dir=cache_dir or None, **kwargs)
    except (RuntimeError, ValueError, KeyError, OSError) as err:
        raise OpenCLIPError(f"cannot build OpenCLIP model {name!r} from {checkpoint or model_name}: "
                            f"{_first_line(err)}") from err
    if model_name.startswith("local-dir:"):
        with open(os.path.join(model_name[len("local-dir:"):], "open_clip_config.json"), encoding="utf-8") as f:
            pre = json.load(f).get("preprocess_cfg", {})
        norm = (tuple(pre["mean"]), tuple(pre["std"])) if "mean" in pre and "std" in pre else None
    tokenizer = _tokenizer(model_name, int(model.context_length), cache_dir)
    return OpenCLIPBackbone(model.eval(), tokenizer, name=str(name).strip(), preprocess_norm=norm)


class OpenCLIPBackbone(Backbone):
    """An ``open_clip`` CLIP / CustomTextCLIP behind the backbone interface."""

    family = "openclip"

    def __init__(self, model: nn.Module, tokenizer: Any = None, name: str = "",
                 preprocess_norm: Optional[Tuple[Sequence[float], Sequence[float]]] = None) -> None:
        super().__init__(model, name or type(model).__name__)
        t = getattr(model, "text", model)  # CustomTextCLIP keeps its text tower apart
        self.native_text = hasattr(t, "token_embedding") and hasattr(t, "transformer")
        self.txt = t
        if tokenizer is None:
            tokenizer = import_open_clip().SimpleTokenizer(context_length=int(model.context_length))
        self.tokenizer = tokenizer
        self.preprocess_norm = preprocess_norm
        self.pool_type = getattr(t, "text_pool_type", getattr(t, "pool_type", "argmax"))
        self.eos_id = getattr(t, "text_eos_id", getattr(t, "eos_id", None))
        self.causal = getattr(t, "attn_mask", None) is not None
        self.scoring = "sigmoid" if getattr(model, "logit_bias", None) is not None else "softmax"
        caps = set()
        plain = self.native_text and getattr(t, "cls_emb", None) is None and not getattr(t, "use_pad_mask", False)
        self._plain_text = plain
        if plain and self.causal and self.pool_type in ("argmax", "eos") and hasattr(tokenizer, "sot_token_id"):
            caps.add("text-prompts")
            if all(isinstance(b.attn, nn.MultiheadAttention) for b in t.transformer.resblocks):
                caps.add("prefix-sharing")
        self.capabilities = frozenset(caps)
        self.split = _split_kind(self.visual)

    # ------------------------------------------------------------------ generic
    @property
    def dtype(self) -> torch.dtype:
        if self.native_text:
            return self.txt.transformer.get_cast_dtype()
        return next(self.visual.parameters()).dtype

    @property
    def input_resolution(self) -> int:
        size = self.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    def _images(self, images: Tensor) -> Tensor:
        p = next(self.visual.parameters())
        return images.to(p.device, p.dtype)

    # ------------------------------------------------------------------ image
    def encode_image(self, images: Tensor) -> Tensor:
        return self.model.encode_image(self._images(images))

    def encode_image_with_dense(self, images: Tensor) -> Tuple[Tensor, Tensor]:
        """Native ViT: ``(global, tokens [B, L, width] after the last block)``; timm ViT: the
        tokens after its final norm; other towers: the global feature twice."""
        x = self._images(images)
        v = self.visual
        if self.split == "native-vit":
            tokens = v.transformer(v._embeds(x))  # [B, 1 + HW, width]
            pooled, _ = v._pool(tokens)
            return (pooled if v.proj is None else pooled @ v.proj), tokens
        if self.split == "timm-vit":
            tokens = v.trunk.forward_features(x)  # [B, prefix + HW, width]
            return v.head(v.trunk.forward_head(tokens)), tokens
        f = self.visual(x)
        return f, f

    @torch.no_grad()
    def trunk(self, images: Tensor) -> Tensor:
        x = self._images(images)
        if self.split == "native-vit":
            x = self.visual._embeds(x)
            for block in self.visual.transformer.resblocks[:-1]:
                x = block(x)
            return x  # [B, 1 + HW, width] before the last block
        if self.split == "timm-vit":
            t = self.visual.trunk
            x = t.norm_pre(t.patch_drop(t._pos_embed(t.patch_embed(x))))
            for block in t.blocks[:-1]:
                x = block(x)
            return x  # [B, prefix + HW, width] before the last block
        return self.visual(x)  # [B, D]: the whole encoder is the trunk

    def pooling_head(self) -> nn.Module:
        head = {"native-vit": _NativeViTHead, "timm-vit": _TimmViTHead}.get(self.split)
        module = head(self.visual) if head else nn.Identity()
        return module.float().requires_grad_(True)

    @property
    def has_pooling_head(self) -> bool:
        return self.split in ("native-vit", "timm-vit")

    @property
    def trunk_kind(self) -> str:
        return {"native-vit": "openclip-vit-tokens-before-last-block",
                "timm-vit": "timm-vit-tokens-before-last-block"}.get(self.split, "openclip-global-features")

    # ------------------------------------------------------------------ text
    @property
    def token_embedding(self) -> nn.Embedding:
        return self.txt.token_embedding

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        tokens = self.tokenizer(list(texts), context_length=int(self.model.context_length))
        if self.native_text and self.causal and self.pool_type in ("argmax", "eos") and tokens.shape[0]:
            eot = tokens.argmax(dim=-1) if self.pool_type == "argmax" else (tokens == self.eos_id).int().argmax(-1)
            tokens = tokens[:, :int(eot.max()) + 1].contiguous()  # later positions never reach the feature
        return tokens

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text))

    def encode_tokens(self, tokens: Tensor) -> Tensor:
        if not self._plain_text:
            return self.model.encode_text(tokens.to(self.device))
        tokens = tokens.to(self.token_embedding.weight.device)
        return self.encode_text_embeddings(self.token_embedding(tokens), tokens)

    def encode_text_embeddings(self, embeddings: Tensor, tokens: Tensor) -> Tensor:
        """OpenCLIP's ``TextTransformer`` forward from embeddings, for any length ``L`` (the
        causal mask and positional embedding cut to ``L``)."""
        if not self._plain_text:
            raise OpenCLIPError(f"the text tower of {self.name} cannot be run from token embeddings")
        from open_clip.transformer import text_global_pool

        t, length = self.txt, tokens.shape[-1]
        dtype = t.transformer.get_cast_dtype()
        x = embeddings.to(dtype) + t.positional_embedding[:length].to(dtype)  # [N, L, width]
        mask = t.attn_mask[:length, :length] if t.attn_mask is not None else None
        x = t.ln_final(t.transformer(x, attn_mask=mask))
        x = text_global_pool(x, tokens.to(x.device), self.pool_type, eos_token_id=self.eos_id)  # [N, width]
        proj = t.text_projection
        if proj is None:
            return x
        return proj(x) if isinstance(proj, nn.Module) else x @ proj  # [N, D]

    def text_tower(self) -> _Tower:
        t = self.txt
        return _Tower(t.positional_embedding, t.transformer.resblocks, t.ln_final, t.text_projection,
                      t.transformer.get_cast_dtype())


# ---------------------------------------------------------------------- trunk/head split
def _split_kind(visual: Any) -> str:
    """``native-vit`` (OpenCLIP's VisionTransformer with token/avg pooling), ``timm-vit`` (timm's
    VisionTransformer in a TimmModel tower: SigLIP), else ``global`` (no split)."""
    from open_clip.transformer import VisionTransformer

    if isinstance(visual, VisionTransformer) and visual.attn_pool is None:
        return "native-vit"
    trunk = getattr(visual, "trunk", None)
    if trunk is not None and type(trunk).__name__ == "VisionTransformer" and hasattr(trunk, "blocks"):
        return "timm-vit"
    return "global"


class _NativeViTHead(nn.Module):
    """OpenCLIP ViT's last block, ``ln_post``, pooling and ``proj``: ``[B, L, width] -> [B, D]``."""

    def __init__(self, visual: Any) -> None:
        super().__init__()
        self.block = copy.deepcopy(visual.transformer.resblocks[-1])
        self.ln_post = copy.deepcopy(visual.ln_post)
        self.proj = None if visual.proj is None else nn.Parameter(visual.proj.detach().clone())
        self.pool_type, self.ln_after_pool = visual.pool_type, bool(visual.final_ln_after_pool)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.block(tokens.to(self.ln_post.weight.dtype if self.proj is None else self.proj.dtype))
        if not self.ln_after_pool:
            x = self.ln_post(x)
        x = x[:, 0] if self.pool_type == "tok" else x[:, 1:].mean(dim=1) if self.pool_type == "avg" else x
        if self.ln_after_pool:
            x = self.ln_post(x)
        return x if self.proj is None else x @ self.proj


class _TimmViTHead(nn.Module):
    """timm ViT's last block, final norm, pooling (SigLIP: the attention-pool MAP head),
    ``fc_norm``, classifier head and OpenCLIP's projection: ``[B, L, width] -> [B, D]``."""

    def __init__(self, visual: Any) -> None:
        super().__init__()
        t = visual.trunk
        self.block = copy.deepcopy(t.blocks[-1])
        self.norm, self.attn_pool = copy.deepcopy(t.norm), copy.deepcopy(t.attn_pool)
        self.fc_norm, self.head, self.proj = copy.deepcopy(t.fc_norm), copy.deepcopy(t.head), copy.deepcopy(visual.head)
        self.pool_type, self.n_prefix = t.global_pool, int(t.num_prefix_tokens)
        self.include_prefix = bool(getattr(t, "pool_include_prefix", False))

    def forward(self, tokens: Tensor) -> Tensor:
        from timm.layers import global_pool_nlc

        x = self.norm(self.block(tokens.to(next(self.parameters()).dtype)))
        if self.attn_pool is not None:
            x = self.attn_pool(x if self.include_prefix else x[:, self.n_prefix:])
        else:
            x = global_pool_nlc(x, pool_type=self.pool_type, num_prefix_tokens=self.n_prefix,
                                reduce_include_prefix=self.include_prefix)
        return self.proj(self.head(self.fc_norm(x)))
