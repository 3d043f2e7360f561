"""CLIP mechanics shared by every method: loading, dense image features, text features.

Backed by clip-anytorch (``import clip``, made to work on setuptools >= 82 by
:func:`import_clip`). Names load lazily, so ``import fsclip.clip`` imports neither torch nor
clip; ``from fsclip.clip import load_clip`` works as usual.

- ``loader``: ``load_clip``, ``load_clip_from_cfg``, ``resolve_clip_weights``, ``input_resolution``
- ``precision``: ``effective_precision``, ``autocast``, ``grad_scaler`` (PREC fp16/amp/fp32)
- ``features``: ``resnet_trunk``, ``attnpool_forward``, ``attnpool_dense``, ``vit_tokens``,
  ``vit_run_blocks``, ``vit_head``, ``vit_project_tokens``, ``encode_image_with_dense``
- ``text``: ``tokenize``, ``tokenize_short``, ``encode_text``, ``text_classifier``,
  ``encode_text_embeddings``
- ``tiny``: ``build_tiny_clip``, ``save_tiny_clip`` (small real CLIPs for tests)
- ``backbone``: the ``Backbone`` interface and ``OpenAIBackbone``; ``openclip``: ``OpenCLIPBackbone``,
  ``load_openclip``; ``families``: ``load_backbone``, ``load_backbone_from_cfg``, ``as_backbone``;
  ``tiny_openclip``: ``build_tiny_openclip``, ``save_tiny_openclip``
"""

from fsclip._lazy import lazy_getattr

_EXPORTS = {
    # compat
    "import_clip": "compat",
    # loader
    "MODEL_NAMES": "loader", "PRECISIONS": "loader", "KIT_WEIGHTS_DIR": "loader",
    "CLIPWeightsNotFoundError": "loader", "CLIPWeightsError": "loader",
    "official_models": "loader", "official_filename": "loader", "default_cache_dir": "loader",
    "kit_model_names": "loader", "resolve_clip_weights": "loader", "resolve_precision": "loader",
    "load_clip": "loader", "load_clip_from_cfg": "loader", "input_resolution": "loader",
    # precision
    "CPU_HALF_ENV": "precision", "cpu_half_forced": "precision",
    "effective_precision": "precision", "autocast": "precision", "grad_scaler": "precision",
    # features
    "is_vit": "features", "resnet_trunk": "features", "attnpool_forward": "features",
    "attnpool_dense": "features", "vit_tokens": "features", "vit_run_blocks": "features",
    "vit_head": "features", "vit_project_tokens": "features",
    "encode_image_with_dense": "features",
    # text
    "tokenize": "text", "tokenize_short": "text", "encode_text": "text",
    "text_classifier": "text", "encode_text_embeddings": "text",
    # tiny test models
    "build_tiny_clip": "tiny", "save_tiny_clip": "tiny",
    # backbones
    "Backbone": "backbone", "OpenAIBackbone": "backbone", "BackboneCapabilityError": "backbone",
    "OpenCLIPBackbone": "openclip", "load_openclip": "openclip", "OpenCLIPWeightsNotFoundError": "openclip",
    "load_backbone": "families", "load_backbone_from_cfg": "families", "as_backbone": "families",
    "build_tiny_openclip": "tiny_openclip", "save_tiny_openclip": "tiny_openclip",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())
