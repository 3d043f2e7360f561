"""CLIP-LoRA: low-rank few-shot adaptation of CLIP (Zanella and Ben Ayed, CVPRW 2024).

Every weight of CLIP stays frozen; what trains is a rank-r update of the query, key and value
projections in the attention of every block of both encoders (fsclip.lowrank):

  Eq. 1   W_p' = W_p + s B_p A_p,  p in {q, k, v},  A in R^{r x d} (Kaiming-uniform), B in
          R^{d x r} (zero), s = alpha / sqrt(r) (the reference code's rank-stabilised scaling);
          the forward is W_p x + s B_p A_p drop(x): dropout on the low-rank branch only
  Eq. 2   p(y = k | x) = softmax_k(tau * cos(f'(x), g'(t_k))), tau = 100 fixed, t_k the dataset's
          first template filled with class k, g' the adapted text encoder, re-encoded at every step
  Eq. 3   L = CE(p(.|x), y), AdamW (lr 2e-4, wd 1e-2), cosine decay to 1e-6 per iteration over
          500 x shots iterations, batch 32

Defaults r = 2, alpha = 1, dropout 0.25 on every block of both encoders (TRAINER.CLIP_LORA). The
same hyperparameters serve every dataset and shot count (the paper's claim; no val search), and
the reported model is the last one (TEST.FINAL_MODEL last_step). Iterations are rounded up to
whole epochs of the training loader (the reference code stops mid-epoch).

ResNet backbones: the reference code supports ViTs only. A ResNet image encoder has no attention
blocks (only the attention pool), so on RN50/RN101/MicroRN CLIP-LoRA adapts the text encoder
only and says so in the log; asking for ENCODERS ["vision"] alone there is one ConfigError.

Known pitfalls of the reference code avoided here: weight decay is 1e-2 (its first release had
1e2, MaxZanella/CLIP-LoRA#1); the scaling is alpha / sqrt(r), not PEFT's alpha / r; the factors are
created after CLIP is frozen, so they are what trains (#6).

Checkpoints hold only the low-rank factors (the ``lora`` model); ``export_merged(path)`` writes
CLIP with every ``W + s B A`` folded in, for deployment without fsclip. Precision is
TRAINER.FEATURES.PREC: fp16 keeps CLIP's half weights with float32 factors.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from yacs.config import CfgNode as CN

from fsclip.adapt.trainer import add_features_cfg
from fsclip.backend import TRAINER_REGISTRY, TrainerX
from fsclip.clip.features import is_vit
from fsclip.clip.loader import input_resolution, load_clip_from_cfg
from fsclip.clip.precision import PrecisionChecks, autocast, effective_precision, grad_scaler
from fsclip.clip.text import tokenize_short
from fsclip.engine.optim import build_optimizer
from fsclip.errors import ConfigError
from fsclip.lowrank.lora import apply_lora, check_lora_options, merge_lora
from fsclip.templates import get_templates


@TRAINER_REGISTRY.register()
class CLIPLoRA(PrecisionChecks, TrainerX):
    """LoRA on the q/k/v projections of CLIP's encoders, trained with cross-entropy (Eq. 1-3)."""

    @classmethod
    def extend_cfg(cls, cfg) -> None:
        add_features_cfg(cfg)  # TRAINER.FEATURES.PREC: the precision of CLIP
        if "CLIP_LORA" in cfg.TRAINER:
            return
        cfg.TRAINER.CLIP_LORA = c = CN()
        c.R = 2  # rank r
        c.ALPHA = 1.0  # s = ALPHA / sqrt(R)
        c.DROPOUT = 0.25  # on the input of the low-rank branch
        c.ENCODERS = ["text", "vision"]  # a ResNet image encoder has none: text only there
        c.POSITIONS = []  # block indices; [] = every block
        c.PARAMS = ["q", "k", "v"]  # projections; "o" (output projection) is off by default
        c.N_ITERS = 500  # iterations per shot (total = N_ITERS x shots); 0 = OPTIM.MAX_EPOCH epochs
        c.ETA_MIN = 1e-6  # the cosine schedule's final learning rate
        c.LOGIT_SCALE = 100.0  # tau of Eq. 2; 0 = CLIP's learned logit scale
        c.TEMPLATE = ""  # "" = the dataset's single template (e.g. "a photo of a {}.")

    # ------------------------------------------------------------------ building
    def build_model(self) -> None:
        cfg, c = self.cfg, self.cfg.TRAINER.CLIP_LORA
        self.prec = effective_precision(cfg.TRAINER.FEATURES.PREC, self.device)
        self.prec_key = "TRAINER.FEATURES.PREC"
        positions = list(c.POSITIONS) or "all"
        check_lora_options(list(c.ENCODERS), positions, list(c.PARAMS), "TRAINER.CLIP_LORA")
        print(f"Loading CLIP (backbone: {cfg.MODEL.BACKBONE.NAME})")
        self.clip_model = load_clip_from_cfg(cfg, precision=self.prec, device=self.device)
        self.clip_model.requires_grad_(False).eval()
        size = input_resolution(self.clip_model)
        if tuple(cfg.INPUT.SIZE) != (size, size):
            raise ConfigError(f"INPUT.SIZE is {tuple(cfg.INPUT.SIZE)} but {cfg.MODEL.BACKBONE.NAME} takes "
                              f"{size}x{size} images: set INPUT.SIZE ({size}, {size})")
        encoders = list(c.ENCODERS)
        if not is_vit(self.clip_model) and "vision" in encoders:
            encoders.remove("vision")
            if not encoders:
                raise ConfigError(f"TRAINER.CLIP_LORA.ENCODERS is ['vision'] but {cfg.MODEL.BACKBONE.NAME} is a "
                                  "ResNet (no attention blocks): add \"text\" or use a ViT backbone")
            print(f"Note: {cfg.MODEL.BACKBONE.NAME} is a ResNet: LoRA adapts the text encoder only")
        try:
            sites = apply_lora(self.clip_model, encoders, positions, list(c.PARAMS), int(c.R), float(c.ALPHA),
                               float(c.DROPOUT))  # Eq. 1
        except ValueError as err:
            raise ConfigError(f"TRAINER.CLIP_LORA (R, DROPOUT or POSITIONS): {err}; use R >= 1, 0 <= DROPOUT < 1 "
                              "and block indices of the backbone") from None
        self.lora = nn.ModuleDict({name: m.lora for name, m in sites.items()})  # the factors only
        n = sum(p.numel() for p in self.lora.parameters())
        print(f"LoRA r={c.R} alpha={c.ALPHA} dropout={c.DROPOUT} on {list(c.PARAMS)} of {len(sites)} blocks "
              f"({', '.join(encoders)}): {n:,} trainable params")
        self.classnames = list(self.dm.dataset.classnames)
        template = c.TEMPLATE or get_templates(cfg.DATASET.NAME, "single")[0]
        print(f"Text prompts: {template!r}")
        self.tokens = tokenize_short([template.format(name) for name in self.classnames],
                                     context_length=self.clip_model.context_length).to(self.device)
        self.tau = float(c.LOGIT_SCALE) or float(self.clip_model.logit_scale.exp().item())
        self.amp = self.prec == "amp"
        self.scaler = grad_scaler(self.prec, self.device)
        optim = build_optimizer(self.lora, cfg.OPTIM)  # Eq. 3: AdamW
        self.register_model("lora", self.lora, optim, None)
        per_epoch = len(self.train_loader_x)
        if int(c.N_ITERS) > 0:
            total = int(c.N_ITERS) * max(int(cfg.DATASET.NUM_SHOTS), 1)
            self.max_epoch = math.ceil(total / per_epoch)
            print(f"{total} iterations (N_ITERS {c.N_ITERS} x shots): {self.max_epoch} epochs of {per_epoch} batches")
        steps = max(self.max_epoch * per_epoch, 1)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(optim, T_max=steps, eta_min=float(c.ETA_MIN))
        self._eval_text: Optional[Tensor] = None

    # ------------------------------------------------------------------ the model
    def autocast(self) -> Any:
        return autocast(self.prec, self.device)

    def text_features(self) -> Tensor:
        """g'(t_k) for every class ``[K, D]`` (Eq. 2): re-encoded at every training step."""
        if self._eval_text is not None:
            return self._eval_text
        return self.clip_model.encode_text(self.tokens)

    def forward_logits(self, images: Tensor) -> Tensor:
        """tau * cos(f'(x), g'(t_k)) ``[B, K]`` in float32 (Eq. 2)."""
        image = self.clip_model.encode_image(images.to(self.device, self.clip_model.dtype))
        text = self.text_features()
        return self.tau * F.normalize(image.float(), dim=-1) @ F.normalize(text.float(), dim=-1).t()

    # ------------------------------------------------------------------ training
    def forward_backward(self, batch: Dict[str, Any]) -> Dict[str, float]:
        images, labels = batch["img"].to(self.device), batch["label"].to(self.device)
        with self.autocast():
            logits = self.forward_logits(images)
            loss = F.cross_entropy(logits, labels)  # Eq. 3
        self.model_zero_grad()
        if self.scaler is None:
            self.model_backward(loss)  # detect_anomaly (PrecisionChecks) first
            self.check_gradients(self.lora.parameters())
            self.model_update()
        else:
            self.detect_anomaly(loss)
            self.scaler.scale(loss).backward()
            self.scaler.step(self._optims["lora"])
            self.scaler.update()
        self.sched.step()  # cosine, per iteration
        return {"loss": loss.item(), "acc": (logits.argmax(dim=1) == labels).float().mean().item() * 100,
                "lr": self.sched.get_last_lr()[0]}

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def test(self, split: Optional[str] = None) -> float:
        """Evaluation with the update folded in (eval mode) and the class text encoded once."""
        self.set_model_mode("eval")
        with self.autocast():
            self._eval_text = self.clip_model.encode_text(self.tokens)
        try:
            return super().test(split)
        finally:
            self._eval_text = None

    @torch.no_grad()
    def model_inference(self, images: Tensor) -> Tensor:
        with self.autocast():
            return self.restrict_logits(self.forward_logits(images).float())

    def image_logits(self, images: Tensor) -> Tensor:
        """``model_inference`` with gradients through the image encoder (the class text encoded once
        without them): the ``image_logits`` hook, ``fsclip.explain.hooks``."""
        with torch.no_grad(), self.autocast():
            self._eval_text = self.clip_model.encode_text(self.tokens)
        try:
            with self.autocast():
                return self.restrict_logits(self.forward_logits(images.to(self.device)).float())
        finally:
            self._eval_text = None

    def export_merged(self, path: str) -> nn.Module:
        """Save CLIP with every ``W + s B A`` merged (a plain clip-anytorch state dict) to ``path``
        and return that model."""
        merged = merge_lora(copy.deepcopy(self.clip_model).eval())
        torch.save(merged.state_dict(), path)
        print(f"Merged CLIP-LoRA model written to {path}")
        return merged
