"""Where an OpenCLIP model's files are, offline: names, checkpoints, hub caches, tokenizers.

``MODEL.BACKBONE.NAME`` forms (:func:`parse_openclip_name`):

* ``openclip:<arch>:<pretrained tag>``, e.g. ``openclip:ViT-B-16:laion2b_s34b_b88k``,
  ``openclip:ViT-B-16-SigLIP2:webli``: the tag's file is looked up in the local caches only,
  the Hugging Face hub cache (``MODEL.BACKBONE.CACHE_DIR``, else ``HF_HUB_CACHE``) for hub tags,
  ``<CACHE_DIR or ~/.cache/clip>/<file>`` for URL tags (OpenCLIP's own download places);
* ``openclip:<arch>:<file>``: a local checkpoint (state dict, ``.safetensors``, ``.bin``);
  ``<arch>`` may also be the path of a model-config JSON (``{"embed_dim", "vision_cfg",
  "text_cfg"}``), registered with ``open_clip.add_model_config``;
* ``openclip:local-dir:<folder>`` (or ``openclip:<folder>``): a folder with
  ``open_clip_config.json`` and its weights, as OpenCLIP writes them; ``openclip:hf-hub:<repo>``:
  such a repository in the Hugging Face cache.

Nothing is downloaded: a missing file is one :class:`OpenCLIPWeightsNotFoundError` line naming
the place to put it. Tokenizers are OpenCLIP's per model: CLIP's BPE (bundled) for most, a
Hugging Face tokenizer for SigLIP/SigLIP2, which needs ``transformers`` and the tokenizer files
in the local HF cache (the error line says how to get them). The model itself is built in
``fsclip.clip.openclip``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
from typing import Any, Iterator, Optional, Tuple

from fsclip.errors import MissingDependencyError, UserFacingError, WeightsNotFoundError

from .backbone import OPENCLIP_PREFIX
from .loader import DEFAULT_CACHE_DIR, _first_line

SCHEMAS = ("hf-hub:", "local-dir:")
HF_WEIGHTS = "open_clip_pytorch_model.bin"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


class OpenCLIPWeightsNotFoundError(WeightsNotFoundError):
    """No local file for an OpenCLIP name; the message says where to put one."""


class OpenCLIPError(UserFacingError, RuntimeError):
    """An OpenCLIP name, config or checkpoint that cannot be used (the message says why)."""


def import_open_clip() -> Any:
    try:
        import open_clip
    except ImportError as err:
        raise MissingDependencyError("OpenCLIP backbones need open-clip-torch: pip install 'fsclip[openclip]' "
                                     "(or pip install open-clip-torch timm)") from err
    return open_clip


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """No hub access inside: ``HF_HUB_OFFLINE=1`` in the environment and in huggingface_hub's
    constant (read once at import), both restored after."""
    saved_env = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import huggingface_hub.constants as hub_constants
    except ImportError:
        hub_constants = None
    saved_const = getattr(hub_constants, "HF_HUB_OFFLINE", None)
    if hub_constants is not None:
        hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if saved_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env
        if hub_constants is not None:
            hub_constants.HF_HUB_OFFLINE = saved_const


def hub_cache_dir(cache_dir: str = "") -> str:
    if cache_dir:
        return os.path.expanduser(cache_dir)
    try:
        import huggingface_hub.constants as hub_constants
        return str(hub_constants.HF_HUB_CACHE)
    except ImportError:
        return os.path.expanduser("~/.cache/huggingface/hub")


def cached_hub_file(repo: str, filename: str, cache_dir: str = "") -> Optional[str]:
    """The file's path in the local HF cache, or None (never any network access)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(repo, filename, cache_dir=hub_cache_dir(cache_dir))
    return found if isinstance(found, str) and os.path.isfile(found) else None


def parse_openclip_name(name: str) -> Tuple[str, str]:
    """``openclip:<arch>:<pretrained>`` -> ``(arch, pretrained)``; schema names keep their schema
    (``("local-dir:/x", "")``); a folder is ``local-dir:``; a config JSON is registered."""
    rest = str(name).strip()[len(OPENCLIP_PREFIX):].strip()
    if rest.startswith(SCHEMAS):
        return rest, ""
    arch, _, pretrained = rest.partition(":")
    arch, pretrained = arch.strip(), pretrained.strip()
    if not arch:
        raise OpenCLIPError(f"MODEL.BACKBONE.NAME {name!r} names no OpenCLIP architecture: write "
                            "openclip:<arch>:<pretrained tag or checkpoint file>, e.g. "
                            "openclip:ViT-B-16:laion2b_s34b_b88k")
    if os.path.isdir(os.path.expanduser(arch)) and not pretrained:
        return "local-dir:" + os.path.expanduser(arch), ""
    if arch.endswith(".json"):
        arch = register_model_config(os.path.expanduser(arch))
    return arch, pretrained


def register_model_config(path: str) -> str:
    """Register a model-config JSON with OpenCLIP (once per path); returns its name (the file stem)."""
    open_clip = import_open_clip()
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError) as err:
        raise OpenCLIPError(f"cannot read the OpenCLIP model config {path}: {_first_line(err)}") from None
    if not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise OpenCLIPError(f"{path} is not an OpenCLIP model config: it needs embed_dim, vision_cfg and text_cfg")
    stem = os.path.splitext(os.path.basename(path))[0]
    if open_clip.get_model_config(stem) != cfg:
        open_clip.add_model_config(path)
    return stem


def _missing(name: str, looked: str, fetch: str) -> OpenCLIPWeightsNotFoundError:
    return OpenCLIPWeightsNotFoundError(
        f"OpenCLIP weights for {name!r} not found: looked for {looked}. Nothing is downloaded here; {fetch}, "
        "or set MODEL.BACKBONE.NAME to openclip:<arch>:<path of a local checkpoint>")


def resolve_openclip(name: str, cache_dir: str = "") -> Tuple[str, Optional[str], dict]:
    """``(model name for create_model, checkpoint file or None, the tag's config)``; raises
    OpenCLIPWeightsNotFoundError when the file is not local."""
    open_clip = import_open_clip()
    arch, pretrained = parse_openclip_name(name)
    if arch.startswith("hf-hub:"):
        repo = arch[len("hf-hub:"):]
        config = cached_hub_file(repo, "open_clip_config.json", cache_dir)
        if config is None:
            raise _missing(name, f"{repo}/open_clip_config.json in the Hugging Face cache {hub_cache_dir(cache_dir)}",
                           f"on a machine with internet run `huggingface-cli download {repo}` and copy the cache "
                           "there (or set MODEL.BACKBONE.CACHE_DIR to the cache folder)")
        return "local-dir:" + os.path.dirname(config), None, {}
    if arch.startswith("local-dir:"):
        folder = os.path.expanduser(arch[len("local-dir:"):])
        weights = [f for f in (os.listdir(folder) if os.path.isdir(folder) else [])
                   if f.endswith((".safetensors", ".bin", ".pth"))]
        if not os.path.isfile(os.path.join(folder, "open_clip_config.json")) or not weights:
            raise _missing(name, f"open_clip_config.json and a weights file (.safetensors, .bin, .pth) in {folder}",
                           "put the model's open_clip_config.json and its weights file in that folder")
        return "local-dir:" + folder, None, {}
    arch = arch.replace("/", "-")
    if open_clip.get_model_config(arch) is None:
        raise OpenCLIPError(f"{arch!r} is not an OpenCLIP architecture (MODEL.BACKBONE.NAME {name!r}); "
                            "open_clip.list_models() names them, or give the path of a model-config JSON")
    if not pretrained:
        raise OpenCLIPError(f"MODEL.BACKBONE.NAME {name!r} gives no weights: write openclip:{arch}:<tag or file>; "
                            f"tags of {arch}: {', '.join(open_clip.list_pretrained_tags_by_model(arch)) or 'none'}")
    as_path = os.path.expanduser(pretrained)
    if os.path.isfile(as_path):
        return arch, as_path, {}
    tag_cfg = open_clip.get_pretrained_cfg(arch, pretrained)
    if not tag_cfg:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise _missing(name, f"the file {os.path.abspath(as_path)}",
                       f"{pretrained!r} is no pretrained tag of {arch} (tags: {', '.join(tags) or 'none'})")
    if tag_cfg.get("hf_hub"):
        repo, filename = os.path.split(tag_cfg["hf_hub"])  # "org/repo/" -> ("org/repo", "")
        filename = filename or HF_WEIGHTS
        for candidate in (filename.rsplit(".", 1)[0] + ".safetensors", filename):
            found = cached_hub_file(repo, candidate, cache_dir)
            if found:
                return arch, found, tag_cfg
        raise _missing(name, f"{repo}/{filename} in the Hugging Face cache {hub_cache_dir(cache_dir)}",
                       f"on a machine with internet run `huggingface-cli download {repo} {filename}` and copy the "
                       "cache there (or set MODEL.BACKBONE.CACHE_DIR to the cache folder)")
    url = tag_cfg.get("url", "")
    target = os.path.join(os.path.expanduser(cache_dir or DEFAULT_CACHE_DIR), os.path.basename(url))
    if url and os.path.isfile(target):
        return arch, target, tag_cfg
    raise _missing(name, target, f"fetch it with curl -L --create-dirs -o {target} {url}")


def _tokenizer(model_name: str, context_length: int, cache_dir: str) -> Any:
    """OpenCLIP's tokenizer for ``model_name``, from local files only."""
    open_clip = import_open_clip()
    if model_name.startswith("local-dir:"):
        with open(os.path.join(model_name[len("local-dir:"):], "open_clip_config.json"), encoding="utf-8") as f:
            text_cfg = json.load(f).get("model_cfg", {}).get("text_cfg", {})
    else:
        text_cfg = (open_clip.get_model_config(model_name) or {}).get("text_cfg", {})
    hf_name = text_cfg.get("hf_tokenizer_name", "")
    kwargs = dict(text_cfg.get("tokenizer_kwargs", {}))
    if not hf_name:
        return open_clip.SimpleTokenizer(context_length=context_length, **kwargs)
    source = model_name[len("local-dir:"):] if model_name.startswith("local-dir:") else None
    if source is None:
        found = cached_hub_file(hf_name, TOKENIZER_FILES[0], cache_dir)
        if found is None:
            raise OpenCLIPWeightsNotFoundError(
                f"the tokenizer of {model_name} ({hf_name}) must be local: looked for {hf_name}/{TOKENIZER_FILES[0]} "
                f"in the Hugging Face cache {hub_cache_dir(cache_dir)}. Nothing is downloaded here; on a machine "
                f"with internet run `huggingface-cli download {hf_name} {' '.join(TOKENIZER_FILES)}` and copy the "
                "cache there (or set MODEL.BACKBONE.CACHE_DIR to the cache folder)")
        source = os.path.dirname(found)
    if importlib.util.find_spec("transformers") is None:
        raise MissingDependencyError(f"the tokenizer of {model_name} is a Hugging Face tokenizer: "
                                     "pip install transformers sentencepiece")
    from open_clip.tokenizer import HFTokenizer

    with _offline():
        return HFTokenizer(source, context_length=context_length, tokenizer_mode=text_cfg.get("tokenizer_mode"),
                           **kwargs)
