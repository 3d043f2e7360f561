"""Random-weight CLIPs with exactly the shapes of OpenAI's releases (no download).

Micro-CLIPs hide shape assumptions (a 4x4 grid instead of 7x7 or 14x14, 128-wide embeddings);
these models do not: :func:`write_real_size_weights` writes a state dict whose every key, shape
and dtype (fp16, as in OpenAI's files) is that of the named release, under the file name the
release has in the cache folder (``ViT-B-16.pt``, ...). Setting ``MODEL.BACKBONE.CACHE_DIR`` to
that folder and ``MODEL.BACKBONE.NAME`` to the official name then loads it through the same
:func:`fsclip.clip.loader.load_clip` path as the real file. The values are random (a normal
init of the right scale), so accuracies mean nothing; shapes, dtypes, time and memory do.

The architecture numbers are those ``clip.model.build_model`` reads back from OpenAI's state
dicts (embed dim, image resolution, vision layers/width/patch, text width/heads/layers).
"""

from __future__ import annotations

import os
from typing import Dict, NamedTuple, Tuple, Union

import torch

from .compat import import_clip
from .loader import _skip_weight_init, default_cache_dir, official_filename


class Arch(NamedTuple):
    embed_dim: int
    vision_layers: Union[int, Tuple[int, int, int, int]]  # ViT depth, or ResNet stage depths
    vision_width: int
    patch_size: int  # 0 for ResNets
    transformer_width: int
    transformer_layers: int
    image_resolution: int = 224
    context_length: int = 77
    vocab_size: int = 49408

    @property
    def transformer_heads(self) -> int:
        return self.transformer_width // 64  # as clip.model.build_model infers it


# OpenAI's releases (clip/model.py build_model reads these back from the files).
ARCHS: Dict[str, Arch] = {
    "RN50": Arch(1024, (3, 4, 6, 3), 64, 0, 512, 12),
    "RN101": Arch(512, (3, 4, 23, 3), 64, 0, 512, 12),
    "ViT-B/32": Arch(512, 12, 768, 32, 512, 12),
    "ViT-B/16": Arch(512, 12, 768, 16, 512, 12),
    "ViT-L/14": Arch(768, 24, 1024, 14, 768, 12),
}

# Parameter counts of the real releases (sum of numel over the state dict's parameters), pinned
# by the tests: a wrong architecture number changes them.
PARAM_COUNTS = {"RN50": 102_007_137, "RN101": 119_688_033, "ViT-B/32": 151_277_313,
                "ViT-B/16": 149_620_737, "ViT-L/14": 427_616_513}


def build_real_size_clip(name: str, seed: int = 0, init: bool = True):
    """An fp32 ``clip.model.CLIP`` of release ``name`` with random weights (``init=False``:
    uninitialised memory, for shape checks only)."""
    if name not in ARCHS:
        raise KeyError(f"{name!r}: real sizes are known for {', '.join(ARCHS)}")
    a = ARCHS[name]
    clip = import_clip()
    with _skip_weight_init():  # filled below, far faster than CLIP's own init
        model = clip.model.CLIP(a.embed_dim, a.image_resolution, a.vision_layers, a.vision_width,
                                a.patch_size or None, a.context_length, a.vocab_size,
                                a.transformer_width, a.transformer_heads, a.transformer_layers)
    if not init:
        return model
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, p in model.named_parameters():
            if p.dim() == 1 and ("ln" in key or "bn" in key or "norm" in key):
                p.fill_(1.0 if key.endswith("weight") else 0.0)  # norms: identity
            elif p.dim() == 1:
                p.zero_()  # biases
            elif key == "logit_scale":
                p.fill_(4.6052)
            else:  # fan-in scaled normal: activations keep their scale through every layer
                fan_in = p[0].numel() if p.dim() > 1 else 1
                p.normal_(0.0, fan_in ** -0.5, generator=gen)
        model.logit_scale.fill_(4.6052)  # ln(100), as in the releases
        for key, buf in model.named_buffers():
            if key.endswith("running_var"):
                buf.fill_(1.0)
            elif key.endswith("running_mean"):
                buf.zero_()
    return model.eval()


def real_size_state_dict(name: str, seed: int = 0) -> Dict[str, torch.Tensor]:
    """The state dict of :func:`build_real_size_clip`, in OpenAI's mixed half precision."""
    clip = import_clip()
    model = build_real_size_clip(name, seed)
    clip.model.convert_weights(model)  # as the releases store them: fp16 weights, fp32 norms
    return model.state_dict()


def write_real_size_weights(name: str, cache_dir: str = "", seed: int = 0) -> str:
    """Write the random release-shaped weights for ``name`` as ``<cache_dir>/<official file>``
    (atomically) and return the path; an existing file is kept (it is a cache)."""
    folder = default_cache_dir(cache_dir)
    path = os.path.join(folder, official_filename(name))
    if os.path.isfile(path):
        return path
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(real_size_state_dict(name, seed), tmp)
    os.replace(tmp, path)
    return path


def count_parameters(state_dict: Dict[str, torch.Tensor]) -> int:
    """Parameters in a CLIP state dict (BatchNorm statistics and counters excluded)."""
    skip = ("running_mean", "running_var", "num_batches_tracked")
    return sum(v.numel() for k, v in state_dict.items() if not k.endswith(skip)
               and k not in ("input_resolution", "context_length", "vocab_size"))
