"""Tiny OpenCLIP models with random weights, built from small custom model configs (for tests).

Two configs, both with CLIP's BPE tokenizer (bundled with open_clip, so nothing is fetched):

* ``vit``: an OpenCLIP ViT (class-token pooling, GELU, causal text encoder read at EOT), the
  shape of ``ViT-B-16`` at a fraction of its width;
* ``siglip``: SigLIP's recipe around a small ViT: a learned ``logit_bias`` (sigmoid scoring), a
  bidirectional text encoder read at the last position with a biased projection, tanh-GELU and
  eps 1e-6 norms (as ``ViT-B-16-SigLIP2``'s text config), average-pooled image tokens;
* ``timm-siglip``: the ``siglip`` text side with a timm vision tower pooled by an attention head
  (MAP), as SigLIP's (timm's ``test_vit3``, 160 px).

:func:`save_tiny_openclip` writes the two layouts the OpenCLIP loader reads: a folder with
``open_clip_config.json`` and ``open_clip_pytorch_model.bin`` (``openclip:local-dir:<folder>``),
and the model-config JSON next to a state dict (``openclip:<config.json>:<weights.bin>``).
:func:`save_tiny_hf_tokenizer` writes a tiny Hugging Face tokenizer, for a config whose
``text_cfg`` names one (``hf_tokenizer_name``, as SigLIP's do).
"""

from __future__ import annotations

import copy
import json
import os
from typing import Dict, Sequence, Tuple

import torch

from .openclip import import_open_clip

_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
_SIGLIP_TEXT = dict(_TEXT, context_length=32, no_causal_mask=True, proj_bias=True, pool_type="last",
                    norm_kwargs={"eps": 1e-6}, act_kwargs={"approximate": "tanh"})


def tiny_config(kind: str = "vit", image_size: int = 128) -> Dict:
    """The OpenCLIP model config (``embed_dim``, ``vision_cfg``, ``text_cfg``) of a tiny model."""
    vision = {"image_size": image_size, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32}
    if kind == "vit":
        return {"embed_dim": 64, "vision_cfg": vision, "text_cfg": dict(_TEXT)}
    if kind == "siglip":
        return {"embed_dim": 64, "init_logit_bias": -10.0, "custom_text": True,
                "vision_cfg": dict(vision, pool_type="avg"), "text_cfg": dict(_SIGLIP_TEXT)}
    if kind == "timm-siglip":
        return {"embed_dim": 96, "init_logit_bias": -10.0, "custom_text": True,
                "vision_cfg": {"image_size": 160, "timm_model_name": "test_vit3", "timm_model_pretrained": False,
                               "timm_pool": "map", "timm_proj": "none"},
                "text_cfg": dict(_SIGLIP_TEXT, width=96, heads=3)}
    raise ValueError(f"kind must be 'vit', 'siglip' or 'timm-siglip', got {kind!r}")


def build_tiny_openclip(kind: str = "vit", seed: int = 0, image_size: int = 128) -> Tuple[torch.nn.Module, Dict]:
    """``(model, config)``: a tiny fp32 OpenCLIP model in eval mode, deterministic for ``seed``
    (the global torch RNG is left as it was). Random weights: accuracies mean nothing."""
    open_clip = import_open_clip()
    cfg = tiny_config(kind, image_size)
    args = copy.deepcopy(cfg)
    cls = open_clip.CustomTextCLIP if args.pop("custom_text", False) else open_clip.CLIP
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(**args)
        with torch.no_grad():
            for p in model.parameters():  # open_clip leaves some tensors at zero / one: make every layer count
                if p.dim() == 1 and p is not getattr(model, "logit_scale") and p is not getattr(model, "logit_bias", None):
                    p.add_(0.02 * torch.randn_like(p))
    return model.float().eval(), cfg


def save_tiny_openclip(model: torch.nn.Module, config: Dict, folder: str, name: str = "tiny") -> Dict[str, str]:
    """Write ``folder/<name>/`` (``open_clip_config.json`` + ``open_clip_pytorch_model.bin``) and
    ``folder/<name>.json`` + ``folder/<name>.bin``; returns the paths (keys ``dir``, ``config``,
    ``weights``)."""
    os.makedirs(os.path.join(folder, name), exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    side = config["vision_cfg"]["image_size"]
    pre = {"size": [side, side], "mean": list(import_open_clip().OPENAI_DATASET_MEAN),
           "std": list(import_open_clip().OPENAI_DATASET_STD)}
    paths = {"dir": os.path.join(folder, name), "config": os.path.join(folder, f"{name}.json"),
             "weights": os.path.join(folder, f"{name}.bin")}
    with open(os.path.join(paths["dir"], "open_clip_config.json"), "w", encoding="utf-8") as f:
        json.dump({"model_cfg": config, "preprocess_cfg": pre}, f)
    torch.save(state, os.path.join(paths["dir"], "open_clip_pytorch_model.bin"))
    with open(paths["config"], "w", encoding="utf-8") as f:
        json.dump(config, f)
    torch.save(state, paths["weights"])
    return paths


def save_tiny_hf_tokenizer(folder: str, words: Sequence[str]) -> str:
    """Write a tiny Hugging Face fast tokenizer (``tokenizer.json``, ``tokenizer_config.json``) to
    ``folder``: a lower-cased word-level vocabulary of ``words`` (others map to ``<unk>``), ``</s>``
    after the text and ``<pad>`` = 0, the shape of SigLIP's tokenizers, for offline tests of the
    HF-tokenizer path (needs ``tokenizers`` and ``transformers``)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for w in words:
        vocab.setdefault(w.lower(), len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(folder)
    return folder
