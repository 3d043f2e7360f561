"""Tiny but real clip-anytorch CLIP models, for tests (like timm's tiny test models).

:func:`build_tiny_clip` constructs ``clip.model.CLIP`` with the real ModifiedResNet or
VisionTransformer and the real text transformer and tokenizer vocabulary, small enough to build
in well under a second on a CPU. Every width is one that ``clip.model.build_model`` infers
back from the state dict (text and ViT widths are multiples of 64, so heads = width // 64; the
ResNet attention pool has width * 32 channels and width * 32 // 64 heads), so a saved tiny
model loads through the same code path as OpenAI's weights.

:func:`save_tiny_clip` writes either a plain state dict or a TorchScript archive shaped like
OpenAI's (a traced module with ``encode_image``/``encode_text`` and the ``input_resolution``,
``context_length`` and ``vocab_size`` entries that ``build_model`` drops).
"""

from __future__ import annotations

import copy
import os
import warnings
from typing import Optional, Sequence, Union

import torch
from torch import nn

from .compat import import_clip

VOCAB_SIZE = 49408  # clip's BPE vocabulary; the tokenizer emits ids up to 49407


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def build_tiny_clip(
    arch: str = "RN",
    seed: int = 0,
    image_resolution: int = 64,
    embed_dim: int = 64,
    vision_width: Optional[int] = None,
    vision_layers: Optional[Union[int, Sequence[int]]] = None,
    patch_size: int = 16,
    text_width: int = 64,
    text_layers: int = 1,
    context_length: int = 77,
    randomize_bn: bool = True,
):
    """Build a tiny fp32 ``clip.model.CLIP`` in eval mode, deterministically for ``seed``.

    arch: ``"RN"`` (ModifiedResNet; default width 8, layers (1, 1, 1, 1), so the map before
    attention pooling is ``image_resolution // 32`` squared: 2x2 at 64 px) or ``"ViT"``
    (width 64, 2 blocks, ``patch_size`` 16: a 4x4 grid at 64 px).
    randomize_bn: CLIP's init zeroes every bottleneck's last BN weight, which makes the residual
    branches dead; random BN affine parameters and running statistics make the features depend
    on every layer, so tests can tell layers apart.
    The global torch RNG is left as it was.
    """
    clip = import_clip()
    arch_key = arch.strip().lower()
    _check(arch_key in ("rn", "vit"), f"arch must be 'RN' or 'ViT', got {arch!r}")
    _check(text_width >= 64 and text_width % 64 == 0,
           f"text_width must be a multiple of 64 (heads = width // 64), got {text_width}")
    if arch_key == "rn":
        width = 8 if vision_width is None else int(vision_width)
        layers = (1, 1, 1, 1) if vision_layers is None else tuple(int(n) for n in vision_layers)
        _check(len(layers) == 4, f"a ResNet needs 4 stage depths, got {layers}")
        _check(width >= 2 and width % 2 == 0, f"ResNet vision_width must be even, got {width}")
        _check(image_resolution % 32 == 0 and image_resolution >= 64,
               f"ResNet image_resolution must be a multiple of 32 and >= 64 (a map of at least "
               f"2x2 before attention pooling), got {image_resolution}")
        patch = None
    else:
        width = 64 if vision_width is None else int(vision_width)
        layers = 2 if vision_layers is None else int(vision_layers)  # type: ignore[arg-type]
        _check(width % 64 == 0, f"ViT vision_width must be a multiple of 64, got {width}")
        _check(image_resolution % patch_size == 0,
               f"image_resolution {image_resolution} is not a multiple of patch_size {patch_size}")
        patch = patch_size

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = clip.model.CLIP(
            embed_dim, image_resolution, layers, width, patch,
            context_length, VOCAB_SIZE, text_width, text_width // 64, text_layers,
        )
        if randomize_bn:
            for module in model.modules():
                if isinstance(module, nn.BatchNorm2d):
                    with torch.no_grad():
                        module.weight.uniform_(0.5, 1.5)
                        module.bias.normal_(0.0, 0.1)
                        module.running_mean.normal_(0.0, 0.1)
                        module.running_var.uniform_(0.5, 1.5)
    return model.float().eval()


def save_tiny_clip(model: nn.Module, path: str, fmt: str = "state_dict") -> str:
    """Save ``model`` (a clip-anytorch CLIP) to ``path`` as ``"state_dict"`` or ``"torchscript"``.

    The TorchScript archive is a trace of a CPU fp32 copy with ``forward``, ``encode_image`` and
    ``encode_text``, plus ``input_resolution``/``context_length``/``vocab_size`` buffers, like
    OpenAI's released files. Returns ``path``.
    """
    if fmt not in ("state_dict", "torchscript"):
        raise ValueError(f"fmt must be 'state_dict' or 'torchscript', got {fmt!r}")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    cpu = copy.deepcopy(model).cpu().float().eval()
    if fmt == "state_dict":
        torch.save(cpu.state_dict(), path)
        return path

    clip = import_clip()
    resolution = cpu.visual.input_resolution
    for name, value in (("input_resolution", resolution), ("context_length", cpu.context_length),
                        ("vocab_size", cpu.vocab_size)):
        if hasattr(cpu, name):
            delattr(cpu, name)  # plain ints on CLIP; buffers in OpenAI's archives
        cpu.register_buffer(name, torch.tensor(value))
    image = torch.zeros(1, 3, resolution, resolution)
    text = clip.tokenize(["a photo"], context_length=cpu.context_length)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings; torch.jit deprecation notices
        traced = torch.jit.trace_module(
            cpu,
            {"forward": (image, text), "encode_image": (image,), "encode_text": (text,)},
            check_trace=False,
        )
        torch.jit.save(traced, path)
    return path
