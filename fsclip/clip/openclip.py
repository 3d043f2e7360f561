"""The OpenCLIP family (open-clip-torch 3.x): OpenCLIP, SigLIP/SigLIP2, EVA-CLIP, MetaCLIP, offline.

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
the place to put it. The model is then built by ``open_clip.create_model`` from the local file,
with ``HF_HUB_OFFLINE`` set for the call (so no tower reaches for the hub either).

Tokenizers are OpenCLIP's per model: CLIP's BPE (bundled) for most, a Hugging Face tokenizer for
SigLIP/SigLIP2, which needs ``transformers`` and the tokenizer files in the local HF cache (the
error line says how to get them).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import os
from typing import Any, Iterator, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch import Tensor

from fsclip.errors import MissingDependencyError, UserFacingError, WeightsNotFoundError

from .backbone import OPENCLIP_PREFIX, Backbone, _Tower
from .loader import DEFAULT_CACHE_DIR, _first_line, _skip_weight_init
from .precision import resolve_precision

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
