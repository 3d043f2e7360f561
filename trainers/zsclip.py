"""Zero-shot CLIP: classify with text features of prompts, no training.

logits = logit_scale * normalize(f(x)) @ normalize(W)^T, where W holds one text feature per
class: the encoded dataset template (``ZeroshotCLIP``) or the mean of the normalised encodings
of the dataset's hand-engineered templates (``ZeroshotCLIP2``, the ensemble). SigLIP models add
their learned bias, ``logits + logit_bias``, and score each class by a sigmoid (the ranking of
the classes, and so the accuracy, is the same).
"""

from __future__ import annotations

import time
from typing import Dict, Optional

import torch
from yacs.config import CfgNode as CN

from fsclip.adapt.prompts import prompt_classifier
from fsclip.backend import TRAINER_REGISTRY, TrainerX
from fsclip.clip.attention import ATTENTION_REMEDY, encoder_attention, map_entries, spatial_tokens
from fsclip.clip.families import load_backbone_from_cfg
from fsclip.clip.precision import autocast, effective_precision


@TRAINER_REGISTRY.register()
class ZeroshotCLIP(TrainerX):
    """Zero-shot CLIP with the dataset's single CoOp template."""

    default_templates = "single"

    @classmethod
    def extend_cfg(cls, cfg) -> None:
        if "ZSCLIP" in cfg.TRAINER:
            return
        cfg.TRAINER.ZSCLIP = CN()
        # fp16 (CUDA; fp32 on a CPU unless FSCLIP_CPU_HALF=1), fp32 or amp
        cfg.TRAINER.ZSCLIP.PREC = "fp16"
        # Prompts: "" = the trainer's default; "classname", "single", "ensemble" or a JSON
        # file of prompts per class
        cfg.TRAINER.ZSCLIP.TEMPLATES = ""

    def build_model(self) -> None:
        cfg = self.cfg
        classnames = self.dm.dataset.classnames
        print(f"Loading CLIP (backbone: {cfg.MODEL.BACKBONE.NAME})")
        self.prec = effective_precision(cfg.TRAINER.ZSCLIP.PREC, self.device)
        self.backbone = load_backbone_from_cfg(cfg, precision=self.prec, device=self.device)
        self.clip_model = self.backbone.model
        prompts = cfg.TRAINER.ZSCLIP.TEMPLATES or self.default_templates
        print(f"Prompts: {prompts}")
        self.text_features = prompt_classifier(self.backbone, prompts, cfg.DATASET.NAME, classnames)  # [K, D]

    @torch.no_grad()
    def model_inference(self, image: torch.Tensor) -> torch.Tensor:
        return self.image_logits(image)

    def image_logits(self, image: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, K]`` of preprocessed images; gradients flow back to ``image`` when it
        requires them (the ``image_logits`` hook, ``fsclip.explain.hooks``)."""
        with autocast(self.prec, self.device):
            image_features = self.backbone.encode_image(image.to(self.device)).float()  # [B, D]
        return self.restrict_logits(self.backbone.logits(image_features, self.text_features))  # [B, K]

    def attention_maps(self, images: torch.Tensor, labels: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """CLIP's pooling attention: ``cls`` (ViT: the class token's row in the last block) or
        ``attnpool`` (ResNet: the attention pool's query), ``[B, H, h, w]`` (fsclip.explain.hooks)."""
        self.backbone.require(["clip-internals"], "fsclip-explain attention", ATTENTION_REMEDY)
        images = images.to(self.device)
        with autocast(self.prec, self.device):
            name, rows = encoder_attention(self.clip_model, images)  # [B, H, 1 + HW]
        return {"logits": self.image_logits(images), **map_entries(name, rows, 1, spatial_tokens(self.clip_model))}

    def train(self) -> None:  # type: ignore[override]
        """Nothing to train: evaluate once, with the lines log parsers expect."""
        self.time_start = time.time()
        self.after_train()


@TRAINER_REGISTRY.register()
class ZeroshotCLIP2(ZeroshotCLIP):
    """Zero-shot CLIP with the dataset's hand-engineered template ensemble."""

    default_templates = "ensemble"
