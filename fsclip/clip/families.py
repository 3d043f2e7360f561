"""Which adapter serves a backbone name: ``openclip:...`` -> OpenCLIP, anything else -> OpenAI CLIP.

Adding a family is one adapter module (a :class:`fsclip.clip.backbone.Backbone` subclass and
its loader) plus one branch in :func:`load_backbone` and :func:`as_backbone`.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import torch

from .backbone import Backbone, OpenAIBackbone, check_input_cfg, is_openclip_name
from .loader import load_clip
from .openclip import OpenCLIPBackbone, load_openclip


def as_backbone(model: Any) -> Backbone:
    """``model`` if it is a Backbone, else the adapter of its family around it."""
    if getattr(model, "is_backbone", False):
        return model
    if type(model).__module__.startswith("open_clip"):
        return OpenCLIPBackbone(model)
    return OpenAIBackbone(model)


def load_backbone(name: str, device: Union[str, torch.device] = "cpu", cache_dir: str = "",
                  precision: str = "auto") -> Backbone:
    """The backbone ``name`` on ``device``, in eval mode; never downloads (a missing file is one
    WeightsNotFoundError line saying where to put it)."""
    if is_openclip_name(name):
        return load_openclip(name, device=device, cache_dir=cache_dir, precision=precision)
    return OpenAIBackbone(load_clip(name, device=device, cache_dir=cache_dir, precision=precision),
                          name=str(name).strip())


def load_backbone_from_cfg(cfg: Any, precision: str = "auto",
                           device: Optional[Union[str, torch.device]] = None) -> Backbone:
    """:func:`load_backbone` with ``MODEL.BACKBONE.NAME`` / ``CACHE_DIR``; checks ``INPUT.SIZE``
    (and, where the weights say, ``INPUT.PIXEL_MEAN`` / ``PIXEL_STD``) against an OpenCLIP model.
    ``device`` defaults to CUDA when it is available and ``cfg.USE_CUDA`` (if present) is true."""
    backbone_cfg = cfg.MODEL.BACKBONE
    if device is None:
        use_cuda = bool(getattr(cfg, "USE_CUDA", True))
        device = "cuda" if use_cuda and torch.cuda.is_available() else "cpu"
    backbone = load_backbone(backbone_cfg.NAME, device=device, cache_dir=getattr(backbone_cfg, "CACHE_DIR", ""),
                             precision=precision)
    check_input_cfg(cfg, backbone)
    return backbone
