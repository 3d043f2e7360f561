"""``EncoderTuningTrainer``: the template of methods that train parameters inside CLIP's encoders
(CLIP-LoRA's low-rank factors, CLIP-SVD's singular values).

A subclass names its config node (``cfg_node``, e.g. ``"CLIP_LORA"``), the name its parameters
are registered and saved under (``model_name``), and implements ``adapt_clip()`` (put the
method's modules into ``self.clip_model``, return the module that holds every trainable
parameter) and ``merge(model)`` (fold them into plain CLIP, for the deployment export).

What they share, as both reference codes do it: the class prompts are the dataset's single
template (or ``TEMPLATE``), re-encoded by the adapted text encoder at every step; logits are
``tau * cos(f'(x), g'(t_k))`` with ``tau = LOGIT_SCALE`` (100; 0 = CLIP's learned scale); the loss
is cross-entropy; AdamW (``OPTIM``) with a cosine decay to ``ETA_MIN`` stepped per iteration over
``N_ITERS x shots`` iterations (rounded up to whole epochs of the training loader); batch
``DATALOADER.TRAIN_X.BATCH_SIZE``. Precision is ``TRAINER.FEATURES.PREC`` (fsclip.clip.precision):
fp16 keeps CLIP's half weights with float32 trainable parameters; amp adds a GradScaler on CUDA;
NaN/inf losses and gradients stop the run with one line (PrecisionChecks). Evaluation encodes the
class text once.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from fsclip.backend import TrainerX
from fsclip.clip.loader import input_resolution, load_clip_from_cfg
from fsclip.clip.precision import PrecisionChecks, autocast, effective_precision, grad_scaler
from fsclip.clip.text import tokenize_short
from fsclip.engine.optim import build_optimizer
from fsclip.errors import ConfigError
from fsclip.templates import get_templates


class EncoderTuningTrainer(PrecisionChecks, TrainerX):
    """CE on ``tau * cos`` of CLIP with trainable parameters inside its encoders (see module doc)."""

    cfg_node = ""  # TRAINER.<cfg_node> holds N_ITERS, ETA_MIN, LOGIT_SCALE, TEMPLATE
    model_name = ""  # the registered (and saved) model: the trainable parameters only

    def adapt_clip(self) -> nn.Module:
        raise NotImplementedError

    def merge(self, model: nn.Module) -> nn.Module:
        raise NotImplementedError

    # ------------------------------------------------------------------ building
    def build_model(self) -> None:
        cfg, c = self.cfg, self.cfg.TRAINER[self.cfg_node]
        self.prec = effective_precision(cfg.TRAINER.FEATURES.PREC, self.device)
        self.prec_key = "TRAINER.FEATURES.PREC"
        self.check_options()
        print(f"Loading CLIP (backbone: {cfg.MODEL.BACKBONE.NAME})")
        self.clip_model = load_clip_from_cfg(cfg, precision=self.prec, device=self.device)
        self.clip_model.requires_grad_(False).eval()
        size = input_resolution(self.clip_model)
        if tuple(cfg.INPUT.SIZE) != (size, size):
            raise ConfigError(f"INPUT.SIZE is {tuple(cfg.INPUT.SIZE)} but {cfg.MODEL.BACKBONE.NAME} takes "
                              f"{size}x{size} images: set INPUT.SIZE ({size}, {size})")
        self.adapter = self.adapt_clip()
        self.classnames = list(self.dm.dataset.classnames)
        template = c.TEMPLATE or get_templates(cfg.DATASET.NAME, "single")[0]
        print(f"Text prompts: {template!r}")
        self.tokens = tokenize_short([template.format(name) for name in self.classnames],
                                     context_length=self.clip_model.context_length).to(self.device)
        self.tau = float(c.LOGIT_SCALE) or float(self.clip_model.logit_scale.exp().item())
        self.amp = self.prec == "amp"
        self.scaler = grad_scaler(self.prec, self.device)
        optim = build_optimizer(self.adapter, cfg.OPTIM)  # AdamW
        self.register_model(self.model_name, self.adapter, optim, None)
        per_epoch = len(self.train_loader_x)
        if int(c.N_ITERS) > 0:
            total = int(c.N_ITERS) * max(int(cfg.DATASET.NUM_SHOTS), 1)
            self.max_epoch = math.ceil(total / per_epoch)
            print(f"{total} iterations (N_ITERS {c.N_ITERS} x shots): {self.max_epoch} epochs of {per_epoch} batches")
        steps = max(self.max_epoch * per_epoch, 1)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(optim, T_max=steps, eta_min=float(c.ETA_MIN))
        self._eval_text: Optional[Tensor] = None

    def check_options(self) -> None:
        """ConfigError for bad method options, before CLIP is loaded (default: none)."""

    # ------------------------------------------------------------------ the model
    def autocast(self) -> Any:
        return autocast(self.prec, self.device)

    def text_features(self) -> Tensor:
        """g'(t_k) for every class ``[K, D]``: re-encoded at every training step."""
        if self._eval_text is not None:
            return self._eval_text
        return self.clip_model.encode_text(self.tokens)

    def forward_logits(self, images: Tensor) -> Tensor:
        """tau * cos(f'(x), g'(t_k)) ``[B, K]`` in float32."""
        image = self.clip_model.encode_image(images.to(self.device, self.clip_model.dtype))
        text = self.text_features()
        return self.tau * F.normalize(image.float(), dim=-1) @ F.normalize(text.float(), dim=-1).t()

    # ------------------------------------------------------------------ training
    def forward_backward(self, batch: Dict[str, Any]) -> Dict[str, float]:
        images, labels = batch["img"].to(self.device), batch["label"].to(self.device)
        with self.autocast():
            logits = self.forward_logits(images)
            loss = F.cross_entropy(logits, labels)
        self.model_zero_grad()
        if self.scaler is None:
            self.model_backward(loss)  # detect_anomaly (PrecisionChecks) first
            self.check_gradients(self.adapter.parameters())
            self.model_update()
        else:
            self.detect_anomaly(loss)
            self.scaler.scale(loss).backward()
            self.scaler.step(self._optims[self.model_name])
            self.scaler.update()
        self.sched.step()  # cosine, per iteration
        return {"loss": loss.item(), "acc": (logits.argmax(dim=1) == labels).float().mean().item() * 100,
                "lr": self.sched.get_last_lr()[0]}

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def test(self, split: Optional[str] = None) -> float:
        """Evaluation in eval mode with the class text encoded once."""
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
        """Save CLIP with the method's parameters folded into its weights (a plain clip-anytorch
        state dict) to ``path`` and return that model; the trainer's own model is left as it is."""
        merged = self.merge(copy.deepcopy(self.clip_model).eval())
        torch.save(merged.state_dict(), path)
        print(f"Merged {type(self).__name__} model written to {path}")
        return merged
