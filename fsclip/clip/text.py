"""Text features of clip-anytorch CLIP models: tokenizing, encoding, zero-shot classifiers.

Short context. clip-anytorch's ``CLIP.encode_text`` slices ``positional_embedding[:n_ctx]``
and each block slices its causal mask to the token length (``attn_mask[-n, -n]`` of an upper
triangular ``-inf`` mask is the ``n x n`` causal mask), and the feature is read at the EOT
position (the largest token id). Positions after EOT never influence it (causal mask), so
tokens cut to ``max EOT position + 1`` give the same features as 77 tokens with a fraction of
the work (tests check this). :func:`encode_text` always tokenizes this way, per batch.

:func:`encode_text` and :func:`text_classifier` take a clip-anytorch CLIP or any backbone of
``fsclip.clip.backbone`` (its own tokenizer and text encoder then run).

All encoding runs on the model's device under ``torch.no_grad()`` and returns the model's dtype
(fp16 under CLIP's CUDA precision), except :func:`encode_text_embeddings`, which is meant for
prompt learning and keeps gradients.
"""

from __future__ import annotations

from typing import Any, List, Sequence, Union

import torch
from torch import Tensor

from .compat import import_clip

Texts = Union[str, Sequence[str]]


def _as_list(texts: Texts) -> List[str]:
    return [texts] if isinstance(texts, str) else list(texts)


def tokenize(texts: Texts, context_length: int = 77, truncate: bool = False) -> Tensor:
    """``clip.tokenize``: ``[N, context_length]`` int64 token ids (SOT ... EOT, zero padded)."""
    return import_clip().tokenize(_as_list(texts), context_length=context_length, truncate=truncate)


def tokenize_short(texts: Texts, context_length: int = 77, truncate: bool = False) -> Tensor:
    """Tokens cut to the longest prompt: ``[N, max EOT position + 1]``.

    ``model.encode_text`` on these equals it on :func:`tokenize`'s 77 tokens (clip-anytorch).
    """
    tokens = tokenize(texts, context_length=context_length, truncate=truncate)
    if tokens.shape[0] == 0:
        return tokens
    length = int(tokens.argmax(dim=-1).max()) + 1
    return tokens[:, :length].contiguous()


def _text_device(model: Any) -> torch.device:
    return model.token_embedding.weight.device


def encode_text(model: Any, texts: Texts, batch_size: int = 256) -> Tensor:
    """Unnormalised CLIP text features ``[N, D]`` for a list of prompts (no grad).

    Each batch is tokenized to its own longest prompt (see the module docstring).
    """
    texts = _as_list(texts)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    backbone = getattr(model, "is_backbone", False)
    if not backbone and type(model).__module__.startswith("open_clip"):
        raise TypeError("encode_text takes an OpenCLIP model through its backbone: "
                        "fsclip.clip.families.as_backbone(model)")
    if not backbone and not texts:
        device = _text_device(model)
        return torch.empty(0, model.text_projection.shape[1], dtype=model.dtype, device=device)
    if not texts:
        raise ValueError("encode_text needs at least one text")
    chunks = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = texts[start:start + batch_size]
            if backbone:
                chunks.append(model.encode_tokens(model.tokenize(batch)))
            else:
                tokens = tokenize_short(batch, context_length=model.context_length)
                chunks.append(model.encode_text(tokens.to(_text_device(model))))
    return torch.cat(chunks)


def text_classifier(model: Any, classnames: Sequence[str], templates: Texts,
                    batch_size: int = 256) -> Tensor:
    """Zero-shot classifier weights ``[K, D]``, one L2-normalised row per class.

    For each class: encode ``template.format(classname)`` for every template, L2-normalise
    each, average, L2-normalise again (the CoOp / Tip-Adapter ensemble convention; one template
    gives the normalised embedding). Class names are used as given. Normalising and averaging
    run in fp32; the result has the model's dtype.
    """
    templates = _as_list(templates)
    classnames = list(classnames)
    if not templates:
        raise ValueError("text_classifier needs at least one template")
    if not classnames:
        raise ValueError("text_classifier needs at least one class name")
    prompts = [template.format(name) for name in classnames for template in templates]
    features = encode_text(model, prompts, batch_size=batch_size).float()
    features = features.reshape(len(classnames), len(templates), -1)
    features = features / features.norm(dim=-1, keepdim=True)
    weights = features.mean(dim=1)
    weights = weights / weights.norm(dim=-1, keepdim=True)
    return weights.to(model.dtype)


def encode_text_embeddings(model: Any, embeddings: Tensor, tokens: Tensor) -> Tensor:
    """CLIP's text encoder from token *embeddings* (CoOp's TextEncoder), with gradients.

    ``embeddings``: ``[N, L, width]`` (e.g. ``model.token_embedding(tokens)`` with some rows
    replaced by learned context vectors); ``tokens``: ``[N, L]`` ids whose argmax marks each
    EOT position. ``L`` may be shorter than 77 (see the module docstring). Returns ``[N, D]``;
    equals ``model.encode_text(tokens)`` for unmodified embeddings.
    """
    if embeddings.shape[:2] != tokens.shape:
        raise ValueError(f"embeddings {tuple(embeddings.shape)} and tokens {tuple(tokens.shape)} "
                         "must agree on [N, L]")
    length = tokens.shape[-1]
    x = embeddings.type(model.dtype) + model.positional_embedding[:length].type(model.dtype)
    x = model.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)  # LND for clip's transformer
    x = model.ln_final(x).type(model.dtype)
    eot = tokens.argmax(dim=-1).to(x.device)
    return x[torch.arange(x.shape[0], device=x.device), eot] @ model.text_projection
