"""Load CLIP backbones (clip-anytorch) by name or path, offline, with CoOp's precision rules.

Resolution of ``name_or_path`` (:func:`resolve_clip_weights`), first match wins:

1. an existing file path (``~`` expanded) -> that file;
2. an official name (RN50, RN101, RN50x4, RN50x16, RN50x64, ViT-B/32, ViT-B/16, ViT-L/14, and
   whatever else clip-anytorch's ``_MODELS`` lists) -> ``<cache_dir or ~/.cache/clip>/<file>``
   where ``<file>`` is the basename of the official URL (e.g. ``ViT-B-16.pt``);
3. a built-in offline-kit name -> ``fsclip/kit/weights/<name>.pt`` when that file exists;
4. otherwise :class:`CLIPWeightsNotFoundError`, whose message names the file looked for, the
   URL to fetch it from (official names) and the config keys ``MODEL.BACKBONE.CACHE_DIR`` /
   ``MODEL.BACKBONE.NAME``.

Nothing is ever downloaded: fetch official files beforehand (the error message says how).
Unlike ``clip.load`` the SHA256 in the URL is not checked (a cached file is trusted, so a
locally made or fine-tuned file can stand in under the official name).

The file is read as a TorchScript archive (OpenAI's releases; ``.state_dict()`` is taken) or
else with ``torch.load(weights_only=True)`` as a state dict, possibly wrapped as
``{"state_dict": ...}`` with an optional ``module.`` prefix. The model is built with
``clip.model.build_model``; a file that is neither, or not a CLIP state dict, raises
:class:`CLIPWeightsError` naming the path.

Precision (CoOp's ``TRAINER.<NAME>.PREC``):

* ``"fp16"``: CLIP's own mixed half weights (``build_model``'s conversion). Only on CUDA (or on a
  CPU with ``FSCLIP_CPU_HALF=1``): elsewhere a note is logged and the model is fp32 (CoOp configs
  default to fp16; this way they run unchanged on a CPU). See :mod:`fsclip.clip.precision`.
* ``"fp32"`` and ``"amp"``: ``.float()`` (with ``amp`` the trainer runs autocast over fp32
  weights). Weights stored in fp32 keep their exact values.
* ``"auto"``: fp16 on CUDA, fp32 elsewhere.
"""

from __future__ import annotations

import contextlib

import os
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Union

import torch

from fsclip.errors import ConfigError, UserFacingError, WeightsNotFoundError

from .compat import import_clip
from .precision import PRECISIONS, resolve_precision  # noqa: F401 (re-exported)

# The official backbones this project documents (clip-anytorch may list more, e.g. ViT-L/14@336px).
MODEL_NAMES = ("RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B/32", "ViT-B/16", "ViT-L/14")
KIT_WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "kit" / "weights"
DEFAULT_CACHE_DIR = "~/.cache/clip"
# what methods that call load_clip_from_cfg take from the model (named in the OpenCLIP refusal)
CLIP_INTERNALS = "the attention pool, QuickGELU ViT blocks, ln_post/proj"
_REQUIRED_KEYS = ("positional_embedding", "token_embedding.weight", "ln_final.weight",
                  "text_projection")


class CLIPWeightsNotFoundError(WeightsNotFoundError):
    """No weights file for a CLIP name or path; the message says where to get and put one.

    A FileNotFoundError (and fsclip's UserFacingError: train.py prints it as one line).
    """


class CLIPWeightsError(UserFacingError, RuntimeError):
    """A weights file exists but is not a readable CLIP TorchScript archive or state dict."""


def official_models() -> Dict[str, str]:
    """Official name -> download URL, from clip-anytorch's table."""
    return dict(import_clip().clip._MODELS)


def official_filename(name: str) -> str:
    """The file name an official model has in the cache folder (the URL's basename)."""
    urls = official_models()
    if name not in urls:
        raise KeyError(f"{name!r} is not an official CLIP name; known: {', '.join(urls)}")
    return os.path.basename(urls[name])


def default_cache_dir(cache_dir: str = "") -> str:
    """``cache_dir`` (``~`` expanded) or clip.load's default ``~/.cache/clip``."""
    return os.path.expanduser(cache_dir or DEFAULT_CACHE_DIR)


def kit_model_names() -> List[str]:
    """Names of the offline-kit CLIP models whose weights file is present."""
    if not KIT_WEIGHTS_DIR.is_dir():
        return []
    return sorted(p.stem for p in KIT_WEIGHTS_DIR.glob("*.pt") if p.is_file())


def _kit_file(name: str) -> Optional[Path]:
    """Where the offline-kit weights for ``name`` would be (None for names with a path in them)."""
    if not name or os.sep in name or "/" in name or name.startswith("."):
        return None
    return KIT_WEIGHTS_DIR / f"{name}.pt"


def resolve_clip_weights(name_or_path: str, cache_dir: str = "") -> str:
    """Return the weights file for ``name_or_path`` (see the module docstring for the order).

    Raises CLIPWeightsNotFoundError when there is none; nothing is downloaded.
    """
    name = str(name_or_path).strip()
    if not name:
        raise CLIPWeightsNotFoundError(
            "no CLIP backbone given: set MODEL.BACKBONE.NAME to one of "
            f"{', '.join(MODEL_NAMES)}, an offline-kit name, or the path of a weights file"
        )
    as_path = os.path.expanduser(name)
    if os.path.isfile(as_path):
        return as_path
    urls = official_models()
    if name in urls:
        folder = default_cache_dir(cache_dir)
        target = os.path.join(folder, os.path.basename(urls[name]))
        if os.path.isfile(target):
            return target
        raise CLIPWeightsNotFoundError(
            f"CLIP weights for {name!r} not found: looked for {target}. Nothing is downloaded "
            f"here; fetch the file from {urls[name]} (e.g. curl -L --create-dirs -o {target} "
            f"{urls[name]}), or set MODEL.BACKBONE.CACHE_DIR to the folder that holds "
            f"{os.path.basename(target)}, or set MODEL.BACKBONE.NAME to the path of a local copy."
        )
    kit = _kit_file(name)
    if kit is not None and kit.is_file():
        return str(kit)
    kit_names = kit_model_names()
    raise CLIPWeightsNotFoundError(
        f"CLIP weights {name!r} not found: looked for the file {os.path.abspath(as_path)}"
        + (f" and {kit}" if kit is not None else "")
        + f". {name!r} is not an official CLIP name ({', '.join(MODEL_NAMES)}) "
        + (f"nor an offline-kit name ({', '.join(kit_names)})" if kit_names
           else "and no offline-kit weights are present")
        + ". Set MODEL.BACKBONE.NAME to one of these names or to the path of a weights file; "
        "MODEL.BACKBONE.CACHE_DIR is the folder searched for official names."
    )


def _read_state_dict(path: str, url: Optional[str] = None) -> Dict[str, torch.Tensor]:
    hint = (f" The file may be truncated or corrupt: fetch it again from {url}." if url
            else " Point MODEL.BACKBONE.NAME at a CLIP TorchScript archive or state dict.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit deprecation notice
            return torch.jit.load(path, map_location="cpu").state_dict()
    except Exception as jit_error:  # not a TorchScript archive: try a plain state dict
        try:
            obj: Any = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as load_error:
            raise CLIPWeightsError(
                f"cannot read CLIP weights from {path}: it is neither a TorchScript archive "
                f"({_first_line(jit_error)}) nor a state dict readable with "
                f"torch.load(weights_only=True) ({_first_line(load_error)}).{hint}"
            ) from load_error
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CLIPWeightsError(
            f"cannot read CLIP weights from {path}: expected a dict of tensors (or "
            f"{{'state_dict': ...}}), got {type(obj).__name__}.{hint}"
        )
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


_INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
                   "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_",
                   "orthogonal_", "sparse_")


@contextlib.contextmanager
def _skip_weight_init() -> Iterator[None]:
    """Make ``torch.nn.init`` functions no-ops while building a model whose every parameter is
    loaded right after (``build_model`` loads its state dict strictly). Random initialisation
    is most of the build time (13 of 18 s for RN50 on a 2-core CPU)."""
    saved = {name: getattr(torch.nn.init, name) for name in _INIT_FUNCTIONS if hasattr(torch.nn.init, name)}

    def keep(tensor, *args, **kwargs):
        return tensor

    try:
        for name in saved:
            setattr(torch.nn.init, name, keep)
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.nn.init, name, fn)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".strip()


def _load_error_line(error: BaseException) -> str:
    """The line of a ``load_state_dict`` error that names the key ("size mismatch for
    visual.proj: ...", "Missing key(s) ..."), else the error's first line."""
    for line in str(error).splitlines():
        line = line.strip()
        if line.startswith(("size mismatch for", "Missing key(s)", "Unexpected key(s)")):
            return line.rstrip(".")
    return _first_line(error)


def _check_clip_keys(state_dict: Dict[str, torch.Tensor], path: str) -> None:
    missing = [k for k in _REQUIRED_KEYS if k not in state_dict]
    if "visual.proj" not in state_dict:  # ResNet
        missing += [k for k in ("visual.layer1.0.conv1.weight", "visual.attnpool.positional_embedding")
                    if k not in state_dict]
    if missing:
        raise CLIPWeightsError(
            f"{path} is not a CLIP state dict (missing {', '.join(missing)}); "
            "MODEL.BACKBONE.NAME must point at an OpenAI/clip-anytorch CLIP weights file"
        )


def load_clip(name_or_path: str, device: Union[str, torch.device] = "cpu", cache_dir: str = "",
              precision: str = "auto"):
    """Build a clip-anytorch ``clip.model.CLIP`` in eval mode on ``device``; never downloads.

    See the module docstring for name resolution, accepted files and precision.
    """
    clip = import_clip()
    path = resolve_clip_weights(name_or_path, cache_dir)
    # the official URL, for the "fetch it again" hint: by name, or by the file's official name
    urls = official_models()
    url = urls.get(str(name_or_path).strip()) or next(
        (u for u in urls.values() if os.path.basename(u) == os.path.basename(path)), None)
    prec = resolve_precision(precision, device)

    state_dict = _read_state_dict(path, url)
    _check_clip_keys(state_dict, path)
    source = dict(state_dict)  # build_model deletes keys from the dict it is given
    try:
        with _skip_weight_init():
            model = clip.model.build_model(state_dict)
    except Exception as error:
        raise CLIPWeightsError(
            f"cannot build a CLIP model from {path}: {_load_error_line(error)}. MODEL.BACKBONE.NAME "
            "must point at an OpenAI/clip-anytorch CLIP weights file"
        ) from error
    if prec == "fp32":
        model.float()
        if source["text_projection"].dtype == torch.float32:
            # build_model loaded fp32 values into half parameters: restore them exactly.
            for key in ("input_resolution", "context_length", "vocab_size"):
                source.pop(key, None)
            model.load_state_dict(source)
    return model.to(device).eval()


def load_clip_from_cfg(cfg: Any, precision: str = "auto",
                       device: Optional[Union[str, torch.device]] = None):
    """:func:`load_clip` with ``cfg.MODEL.BACKBONE.NAME`` and ``cfg.MODEL.BACKBONE.CACHE_DIR``.

    For methods built on OpenAI CLIP's modules (CLIP-LoRA, DPT/VPT): an ``openclip:`` name is
    refused with one ConfigError line (backbone-neutral methods load through
    ``fsclip.clip.families.load_backbone_from_cfg``).

    ``device`` defaults to CUDA when it is available and ``cfg.USE_CUDA`` (if present) is true.
    """
    backbone = cfg.MODEL.BACKBONE
    if str(backbone.NAME).strip().lower().startswith("openclip:"):
        method = getattr(getattr(cfg, "TRAINER", None), "NAME", "") or "this method"
        raise ConfigError(
            f"{method} reaches into OpenAI CLIP's modules (clip-internals: "
            f"{CLIP_INTERNALS}) and runs on OpenAI CLIP backbones only, not on the OpenCLIP backbone "
            f"{backbone.NAME!r}: set MODEL.BACKBONE.NAME to an OpenAI CLIP (e.g. ViT-B/16), or pick a method "
            "that runs on OpenCLIP (the README's table 'Backbones')")
    if device is None:
        use_cuda = bool(getattr(cfg, "USE_CUDA", True))
        device = "cuda" if use_cuda and torch.cuda.is_available() else "cpu"
    return load_clip(backbone.NAME, device=device, cache_dir=getattr(backbone, "CACHE_DIR", ""),
                     precision=precision)


def input_resolution(model: Any) -> int:
    """The image side length a CLIP model (or its ``visual``) expects, e.g. 224."""
    visual = getattr(model, "visual", model)
    return int(visual.input_resolution)
