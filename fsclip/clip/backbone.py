"""One interface to every image-text backbone, with one adapter per family.

``MODEL.BACKBONE.NAME`` picks the family: ``openclip:<arch>:<pretrained tag or file>`` (and
``openclip:hf-hub:<repo>``, ``openclip:local-dir:<folder>``) loads through OpenCLIP
(:mod:`fsclip.clip.openclip`: OpenCLIP, SigLIP/SigLIP2, EVA-CLIP, MetaCLIP); anything else is
OpenAI's CLIP through clip-anytorch (:mod:`fsclip.clip.loader`), as before
(:func:`fsclip.clip.families.load_backbone` dispatches).

A :class:`Backbone` gives what the methods use: ``encode_image``, the trunk/head split of the image
encoder (``trunk``, ``pooling_head``; the frozen-feature cache stores ``trunk``'s output),
``encode_image_with_dense``, the model's own tokenizer (``tokenize``), ``encode_tokens`` and
``encode_text_embeddings`` (prompt learners), ``logit_scale``, ``logit_bias`` and
``scoring`` (``softmax``; ``sigmoid`` for SigLIP, whose logits are ``scale * cos + bias``).

What a method needs from an encoder's inside it asks for by name (:meth:`Backbone.require`);
a backbone that lacks it stops the run with one ConfigError line. Capabilities:

* ``text-prompts``: token embeddings of a CLIP-BPE vocabulary (a start token, words one BPE
  piece each) through a causal text encoder: CoOp-family prompt learners;
* ``prefix-sharing``: that encoder's blocks are plain ``nn.MultiheadAttention`` blocks, so the
  shared prompt prefix can be computed once (``fsclip.prompting.text_encoder``);
* ``clip-internals``: the modules of OpenAI's ``clip.model.CLIP`` (attention pool, ViT blocks with
  QuickGELU, ``ln_post``/``proj``): SAFE's stacked heads, VT-CLIP/CALIP's spatial features,
  DPT/VPT's prompt injection, CLIP-LoRA's projections.
"""

from __future__ import annotations

from typing import Any, FrozenSet, Iterable, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from fsclip.errors import ConfigError

from .compat import import_clip
from .features import encode_image_with_dense
from .heads import make_pooling_head, trunk_forward, trunk_kind
from .text import encode_text_embeddings, tokenize_short

OPENCLIP_PREFIX = "openclip:"

# what each capability is, for the one-line error of an unsupported method x backbone pair
CAPABILITIES = {
    "text-prompts": "learned prompt tokens in a CLIP-BPE vocabulary through a causal text encoder",
    "prefix-sharing": "a text encoder of plain attention blocks",
    "clip-internals": "the modules of OpenAI CLIP's image encoder (attention pool, QuickGELU ViT "
                      "blocks, ln_post/proj)",
}


class BackboneCapabilityError(ConfigError):
    """A method needs something of the encoder that this backbone family does not expose."""


def is_openclip_name(name: str) -> bool:
    return str(name).strip().lower().startswith(OPENCLIP_PREFIX)


class Backbone:
    """The interface; see the module docstring. Subclasses set ``family``, ``capabilities``."""

    is_backbone = True  # duck-typing mark for fsclip.clip.text (which cannot import this module)
    family = ""
    capabilities: FrozenSet[str] = frozenset()
    scoring = "softmax"

    def __init__(self, model: nn.Module, name: str = "") -> None:
        self.model = model
        self.name = name
        self.visual = model.visual

    # ------------------------------------------------------------------ generic
    @property
    def device(self) -> torch.device:
        return next(self.visual.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        raise NotImplementedError

    @property
    def input_resolution(self) -> int:
        raise NotImplementedError

    @property
    def logit_scale(self) -> float:
        """``exp`` of the learned log-scale (CLIP's 1 / temperature)."""
        return float(self.model.logit_scale.exp().item())

    @property
    def logit_bias(self) -> Optional[float]:
        """SigLIP's learned logit bias (None for contrastive softmax models)."""
        bias = getattr(self.model, "logit_bias", None)
        return None if bias is None else float(bias.item())

    def logits(self, image_features: Tensor, text_weights: Tensor) -> Tensor:
        """``scale * cos(f, w) (+ bias)``: ``[B, D]`` unnormalised image features and ``[K, D]``
        unit-row text weights (``text_classifier``'s) ``-> [B, K]`` float32."""
        f = F.normalize(image_features.float(), dim=-1)
        out = self.logit_scale * f @ text_weights.float().t()
        return out if self.logit_bias is None else out + self.logit_bias

    def probabilities(self, logits: Tensor) -> Tensor:
        """Class scores from :meth:`logits`: a softmax over classes, or SigLIP's per-class sigmoid."""
        return torch.sigmoid(logits) if self.scoring == "sigmoid" else logits.softmax(dim=-1)

    def has(self, capability: str) -> bool:
        return capability in self.capabilities

    def require(self, needs: Iterable[str], method: str, remedy: Optional[str] = None) -> None:
        """One ConfigError line when this backbone lacks something ``method`` needs; ``remedy`` (what
        to do instead) replaces the default advice to run ``method`` on another backbone."""
        missing = [c for c in needs if c not in self.capabilities]
        if missing:
            what = "; ".join(f"{c} ({CAPABILITIES.get(c, c)})" for c in missing)
            remedy = remedy or (f"run {method} on a backbone that has it (MODEL.BACKBONE.NAME; docs/backbones.md "
                                "'Backbones' lists which method runs on which)")
            raise BackboneCapabilityError(
                f"{method} needs {what}, which the {self.family} backbone {self.name!r} does not have: {remedy}")

    # ------------------------------------------------------------------ image
    def encode_image(self, images: Tensor) -> Tensor:
        """Unnormalised image features ``[B, D]`` in the model's dtype."""
        raise NotImplementedError

    def encode_image_with_dense(self, images: Tensor) -> Tuple[Tensor, Tensor]:
        """``(global [B, D], dense)``; dense is the encoder's last token/feature map."""
        raise NotImplementedError

    def trunk(self, images: Tensor) -> Tensor:
        """``G(x)``, the frozen part of the image encoder (no grad)."""
        raise NotImplementedError

    def pooling_head(self) -> nn.Module:
        """A float32, trainable copy of the head ``P`` with ``P(G(x)) = encode_image(x)``."""
        raise NotImplementedError

    @property
    def has_pooling_head(self) -> bool:
        """Whether :meth:`pooling_head` has parameters to fine-tune (False where the trunk is the
        whole encoder and the head an identity); answered without copying the head."""
        return True

    @property
    def trunk_kind(self) -> str:
        """What :meth:`trunk` returns (part of feature-cache keys)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ text
    @property
    def token_embedding(self) -> nn.Embedding:
        raise NotImplementedError

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        """The model's tokens ``[N, L]``; cut to the longest prompt where that cannot change a
        feature (causal encoders read at EOT), else the full context."""
        raise NotImplementedError

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` without start/end tokens (prompt learners' layouts)."""
        raise NotImplementedError

    def encode_tokens(self, tokens: Tensor) -> Tensor:
        """Text features ``[N, D]`` of :meth:`tokenize`'s tokens (gradients as the caller allows)."""
        raise NotImplementedError

    def encode_text_embeddings(self, embeddings: Tensor, tokens: Tensor) -> Tensor:
        """The text encoder from token embeddings ``[N, L, width]`` (``tokens`` ``[N, L]`` mark
        where the feature is read): ``[N, D]``, with gradients. Equals :meth:`encode_tokens`
        for ``embeddings = token_embedding(tokens)``."""
        raise NotImplementedError

    def text_tower(self) -> Any:
        """The text encoder's parts for ``fsclip.prompting.text_encoder`` (``prefix-sharing``):
        an object with ``positional_embedding``, ``blocks``, ``ln_final``, ``project(x)``, ``dtype``."""
        raise NotImplementedError


class _Tower:
    """The parts of a causal text encoder that the prefix-shared encoder runs."""

    def __init__(self, positional_embedding: Tensor, blocks: Sequence[nn.Module], ln_final: nn.Module,
                 projection: Union[Tensor, nn.Module], dtype: torch.dtype) -> None:
        self.positional_embedding, self.blocks, self.ln_final = positional_embedding, list(blocks), ln_final
        self.projection, self.dtype = projection, dtype

    def project(self, x: Tensor) -> Tensor:
        p = self.projection
        return p(x) if isinstance(p, nn.Module) else x @ p


class OpenAIBackbone(Backbone):
    """OpenAI's CLIP (clip-anytorch ``clip.model.CLIP``, the offline kit's micro-CLIPs included)."""

    family = "openai"
    capabilities = frozenset({"text-prompts", "prefix-sharing", "clip-internals"})

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def input_resolution(self) -> int:
        return int(self.visual.input_resolution)

    def encode_image(self, images: Tensor) -> Tensor:
        return self.model.encode_image(images.to(self.device, self.dtype))

    def encode_image_with_dense(self, images: Tensor) -> Tuple[Tensor, Tensor]:
        return encode_image_with_dense(self.visual, images)

    def trunk(self, images: Tensor) -> Tensor:
        return trunk_forward(self.visual, images)

    def pooling_head(self) -> nn.Module:
        return make_pooling_head(self.visual)

    @property
    def trunk_kind(self) -> str:
        return trunk_kind(self.visual)

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.model.token_embedding

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        return tokenize_short(list(texts), context_length=self.model.context_length)

    def count_tokens(self, text: str) -> int:
        return len(import_clip().clip._tokenizer.encode(text))

    def encode_tokens(self, tokens: Tensor) -> Tensor:
        return self.model.encode_text(tokens.to(self.token_embedding.weight.device))

    def encode_text_embeddings(self, embeddings: Tensor, tokens: Tensor) -> Tensor:
        return encode_text_embeddings(self.model, embeddings, tokens)

    def text_tower(self) -> _Tower:
        m = self.model
        return _Tower(m.positional_embedding, m.transformer.resblocks, m.ln_final, m.text_projection, m.dtype)


def check_input_cfg(cfg: Any, backbone: Backbone) -> None:
    """One ConfigError line when the images the config makes do not fit an OpenCLIP backbone
    (OpenAI backbones keep their earlier behaviour)."""
    if backbone.family == "openai" or "INPUT" not in cfg:
        return
    size = tuple(int(s) for s in cfg.INPUT.SIZE)
    side = backbone.input_resolution
    if size != (side, side):
        raise ConfigError(f"INPUT.SIZE is {list(size)} but {backbone.name} takes {side} px images: "
                          f"set INPUT.SIZE [{side}, {side}]")
    norm = getattr(backbone, "preprocess_norm", None)
    if norm is not None:
        mean, std = norm
        given = (tuple(float(v) for v in cfg.INPUT.PIXEL_MEAN), tuple(float(v) for v in cfg.INPUT.PIXEL_STD))
        if any(abs(a - b) > 1e-4 for a, b in zip(given[0] + given[1], tuple(mean) + tuple(std))):
            fmt = lambda v: "[" + ", ".join(f"{x:.8g}" for x in v) + "]"  # noqa: E731
            raise ConfigError(
                f"{backbone.name} was trained on images normalised with mean {fmt(mean)} and std {fmt(std)}, "
                f"but INPUT.PIXEL_MEAN is {fmt(given[0])} and INPUT.PIXEL_STD {fmt(given[1])}: set "
                f"INPUT.PIXEL_MEAN {fmt(mean)} INPUT.PIXEL_STD {fmt(std)}")
