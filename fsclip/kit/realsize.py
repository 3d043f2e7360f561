"""Every trainer at a real model size: 100 classes, 224 px, release-shaped random CLIP weights.

The harness behind ``tests/test_real_size.py -m realsize``, ``benchmarks/real_size.py`` and
``benchmarks/gpu_check.sh``. :func:`class_folders` writes a ``Custom`` dataset of ``n_classes``
class folders with one image per class in each of ``train/``, ``val/`` and ``test/``;
:func:`real_size_trainer` builds a trainer on it from its shipped config for the release (e.g.
``configs/trainers/CoOp/vit_b16.yaml``) with :data:`SMOKE_BUDGETS` (a few steps and a
two-setting search, as in ``tests/test_precision.py``) and the weights of
:func:`fsclip.clip.real_sizes.write_real_size_weights`, loaded by official name through
``MODEL.BACKBONE.CACHE_DIR``. A training run is then one step (CoOp family: one batch of all
training images, one epoch) and the evaluation one batch.
"""

from __future__ import annotations

import os
import os.path as osp
from typing import Dict, List, Optional, Sequence

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DPT = ("VPT_CLIP", "VPT_CLIP_CAVPT", "VLP_CLIP", "VLP_CLIP_CAVPT")
DEEP_VL = ("MaPLe", "PromptSRC")  # deep vision-language prompts (fsclip.prompting.deep)
PROMPT_FAMILY = ("CoOp", "CoCoOp", "ProGrad", "KgCoOp") + DPT + DEEP_VL
VIT_ONLY = DPT + DEEP_VL + ("CLIPSVD",)  # methods that prompt or adapt a vision transformer
# the PREC keys of the trainers' config nodes
PREC_NODES = ("FEATURES", "DPT", "ZSCLIP", "MAPLE", "PROMPTSRC")

# The smallest budgets that still run every part of a method (a few steps, a 2-setting search).
SMOKE_BUDGETS: Dict[str, List] = {
    "SAFE": ["TRAINER.SAFE.ITERS", 4, "TRAINER.SAFE.EVAL_EVERY", 2, "TRAINER.SAFE.LRS", [1e-3, 1e-4]],
    "SAFE_A": ["TRAINER.SAFE.ITERS", 4, "TRAINER.SAFE.EVAL_EVERY", 2, "TRAINER.SAFE.LRS", [1e-3],
               "TRAINER.TIP.EPOCHS", 2, "TRAINER.TIP.SEARCH_STEP", [4, 4]],
    "TipAdapter": ["TRAINER.TIP.SEARCH_STEP", [4, 4]],
    "TipAdapterF": ["TRAINER.TIP.EPOCHS", 2, "TRAINER.TIP.SEARCH_STEP", [4, 4]],
    "CALIP": ["TRAINER.CALIP.SEARCH_STEP", [4, 4]],
    "CALIP_FS": ["OPTIM.MAX_EPOCH", 2, "TRAINER.CALIP.SEARCH_STEP", [4, 4], "TRAINER.CALIP.FS.LRS", [0.002],
                 "TRAINER.CALIP.FS.EVAL_EVERY", 1],
    "VTCLIP": ["OPTIM.MAX_EPOCH", 2, "TRAINER.VTCLIP.EVAL_EVERY", 1],
    "CLIPAdapter": ["TRAINER.CLIP_ADAPTER.EPOCHS", 2, "TRAINER.CLIP_ADAPTER.LRS", [1e-2]],
    "LinearProbe": ["TRAINER.LINEAR_PROBE.SEARCH_STEPS", 2, "TRAINER.LINEAR_PROBE.MAX_ITER", 10,
                    "TRAINER.LINEAR_PROBE.C_GRID", [1e2, 1.0]],
    "CrossModal": ["TRAINER.CROSSMODAL.ITERS", 4, "TRAINER.CROSSMODAL.EVAL_EVERY", 2,
                   "TRAINER.CROSSMODAL.WARMUP_ITERS", 1, "TRAINER.CROSSMODAL.LRS", [1e-2]],
    "WiSEFT": ["TRAINER.WISEFT.ITERS", 4, "TRAINER.WISEFT.EVAL_EVERY", 2, "TRAINER.WISEFT.WARMUP_ITERS", 1,
               "TRAINER.WISEFT.LRS", [1e-2], "TRAINER.WISEFT.ALPHAS", [0.0, 0.5, 1.0]],
    "LPPP": ["TRAINER.LPPP.EPOCHS", 4, "TRAINER.LPPP.ALPHA_EVERY", 2],
    "GDA": ["TRAINER.GDA.ALPHAS", [0.1, 1.0]],
    "ProKeR": ["TRAINER.PROKER.BETA", [1.0, 2.0, 2], "TRAINER.PROKER.LAMBDA", [0.1, 1.0, 2]],
    "CoOp": ["OPTIM.MAX_EPOCH", 2],
    "CoCoOp": ["OPTIM.MAX_EPOCH", 1],
    "ProGrad": ["OPTIM.MAX_EPOCH", 2],
    "KgCoOp": ["OPTIM.MAX_EPOCH", 2],
    **{name: ["OPTIM.MAX_EPOCH", 1] for name in DPT + DEEP_VL},
    "CLIPLoRA": ["TRAINER.CLIP_LORA.N_ITERS", 1],
    "CLIPSVD": ["TRAINER.CLIP_SVD.N_ITERS", 1],
}

# the shipped config of each trainer for a release (CoCoOp's names carry its settings)
_CONFIG_NAMES = {"RN50": "rn50", "RN101": "rn101", "ViT-B/32": "vit_b32", "ViT-B/16": "vit_b16"}
_COCOOP = {"RN50": "rn50_c4_ep10_batch1_ctxv1", "ViT-B/16": "vit_b16_c4_ep10_batch1"}
_NAMED = {"CoCoOp": _COCOOP, "MaPLe": {"ViT-B/16": "vit_b16_c2_ep5_batch4_2ctx"},
          "PromptSRC": {"ViT-B/16": "vit_b16_c2_ep20_batch4_4+4ctx"}}


def supports(trainer: str, release: str) -> bool:
    """DPT, MaPLe and PromptSRC prompt a vision transformer and CLIP-SVD adapts one; CoCoOp ships
    configs for RN50 and ViT-B/16, MaPLe and PromptSRC for ViT-B/16; CLIP-LoRA ships ViT configs only
    (on a ResNet it adapts the text encoder alone: a kit config only)."""
    if trainer in VIT_ONLY or trainer == "CLIPLoRA":
        if not release.startswith("ViT"):
            return False
    return trainer not in _NAMED or release in _NAMED[trainer]


def config_for(trainer: str, release: str) -> str:
    """The shipped config a real run of ``trainer`` on ``release`` uses (ViT-L/14, which has no
    configs of its own, uses the ViT-B/16 one with the backbone name replaced)."""
    folder = "ZeroshotCLIP" if trainer.startswith("ZeroshotCLIP") else trainer
    name = _NAMED[trainer].get(release) if trainer in _NAMED else _CONFIG_NAMES.get(release, "vit_b16")
    return osp.join(REPO, "configs", "trainers", folder, f"{name}.yaml")


def class_folders(root: str, n_classes: int = 100, side: int = 32) -> str:
    """Write ``<root>/realsize<n>/{train,val,test}/<class>/0.png`` (one small random image per
    class and split; the data transform resizes it to 224 px) and return the folder name
    relative to ``root`` for ``DATASET.CUSTOM_DIR``. Existing files are kept."""
    import numpy as np
    from PIL import Image

    name = f"realsize{n_classes}"
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        for c in range(n_classes):
            folder = osp.join(root, name, split, f"object_{c:03d}")
            path = osp.join(folder, "0.png")
            pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
            if not osp.isfile(path):
                os.makedirs(folder, exist_ok=True)
                Image.fromarray(pixels).save(path + ".tmp.png")
                os.replace(path + ".tmp.png", path)
    return name


def real_size_cfg(trainer: str, release: str, prec: str, root: str, weights_dir: str, out: str,
                  device: str = "cpu", n_classes: int = 100, opts: Optional[Sequence] = None,
                  cache_dir: str = ""):
    """The frozen config of a smoke run of ``trainer`` at real size (see the module docstring).

    ``cache_dir`` (default ``<root>/feature_cache``) is the feature cache, shared by the runs: a
    trainer's features are extracted once per release and precision."""
    from fsclip.configure import extend_cfg
    from fsclip.engine.config import get_cfg_default
    from fsclip.protocol import resolve_max_epoch

    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.DATASET.NAME = "Custom"
    cfg.merge_from_file(config_for(trainer, release))
    cfg.DATASET.ROOT = root
    cfg.DATASET.CUSTOM_DIR = class_folders(root, n_classes)
    cfg.DATASET.NUM_SHOTS = 1
    cfg.SEED = 1
    cfg.TRAINER.NAME = trainer
    cfg.OUTPUT_DIR = out
    cfg.USE_CUDA = device == "cuda"
    cfg.MODEL.BACKBONE.NAME = release
    cfg.MODEL.BACKBONE.CACHE_DIR = weights_dir
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.DATALOADER.TEST.BATCH_SIZE = n_classes  # the evaluation is one batch
    if trainer != "CoCoOp":  # CoCoOp's batch of 1 is part of its method (an image-conditioned prompt)
        cfg.DATALOADER.TRAIN_X.BATCH_SIZE = n_classes  # 1 shot: one epoch is one step
    options: List = []
    if "FEATURES" in cfg.TRAINER:
        options += ["TRAINER.FEATURES.CACHE_DIR", cache_dir or osp.join(root, "feature_cache"),
                    "TRAINER.FEATURES.TRAIN_VIEWS", 1]
    for node in PREC_NODES:
        if node in cfg.TRAINER:
            options += [f"TRAINER.{node}.PREC", prec]
    extra = list(SMOKE_BUDGETS.get(trainer, [])) + list(opts or [])
    cfg.merge_from_list(options + extra)
    resolve_max_epoch(cfg, explicit="OPTIM.MAX_EPOCH" in extra[::2])
    cfg.freeze()
    return cfg


def real_size_trainer(*args, **kwargs):
    """``build_trainer`` of :func:`real_size_cfg` (same arguments), seeded."""
    from fsclip.backend import build_trainer
    from fsclip.engine.utils import set_random_seed

    set_random_seed(1)
    return build_trainer(real_size_cfg(*args, **kwargs))
