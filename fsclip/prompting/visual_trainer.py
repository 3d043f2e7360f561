"""``VisualPromptTrainer``: the template for methods that train prompts through CLIP's ViT.

A subclass implements ``build_method()`` (its learnable parts, each registered with
``register_model`` so checkpoints hold it and ``--eval-only`` reloads it) and
``forward_logits(images, frozen) -> (logits [B, K], aux)`` and may override ``compute_loss``.
The base class loads CLIP (frozen; a ViT, else one ConfigError), builds the hand-crafted text
classifier W (``TRAINER.FEATURES.PROMPTS``, computed once), serves the training images as fixed
augmented views with the frozen encoder's features of each view (``visual_data``; only for
methods that set ``needs_frozen``), runs the optimisation step in the configured precision, and
evaluates through the engine's own ``test()`` (val every epoch with TEST.FINAL_MODEL best_val,
the test split once at the end).

Precision (``TRAINER.<NODE>.PREC``): ``fp16`` (CLIP's half weights, CUDA only; fp32 on a CPU),
``fp32``, or ``amp`` (fp32 weights, autocast to fp16 and a gradient scaler on CUDA; plain fp32
on a CPU). Learnable parts are float32 in every case. Only fp32 is exercised on CPU-only test
machines.
"""

from __future__ import annotations

import os.path as osp
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from fsclip.adapt.cache import cache_from_cfg, fingerprint_tensors
from fsclip.adapt.prompts import prompt_classifier
from fsclip.adapt.trainer import STORE_DTYPES, add_features_cfg
from fsclip.backend import TrainerX
from fsclip.clip.features import is_vit
from fsclip.clip.loader import input_resolution, load_clip_from_cfg
from fsclip.clip.precision import PrecisionChecks, autocast, effective_precision, grad_scaler
from fsclip.engine.data.transforms import build_transform
from fsclip.engine.utils import count_num_param
from fsclip.errors import ConfigError

from .visual_data import fixed_view_loader, frozen_view_features


class VisualPromptTrainer(PrecisionChecks, TrainerX):
    """Base class of the DPT family (VPT_CLIP, VPT_CLIP_CAVPT, VLP_CLIP, VLP_CLIP_CAVPT)."""

    cfg_node = ""  # TRAINER.<cfg_node> holds PREC
    needs_frozen = False  # whether forward_logits needs the frozen encoder's features

    @classmethod
    def extend_cfg(cls, cfg) -> None:
        add_features_cfg(cfg)

    # ------------------------------------------------------------------ building
    def build_model(self) -> None:
        cfg, fc = self.cfg, self.cfg.TRAINER.FEATURES
        self.prec = effective_precision(cfg.TRAINER[self.cfg_node].PREC, self.device)
        self.prec_key = f"TRAINER.{self.cfg_node}.PREC"
        print(f"Loading CLIP (backbone: {cfg.MODEL.BACKBONE.NAME})")
        self.clip_model = load_clip_from_cfg(cfg, precision=self.prec, device=self.device)
        self.clip_model.requires_grad_(False).eval()
        self.visual = self.clip_model.visual
        name = type(self).__name__
        if not is_vit(self.visual):
            raise ConfigError(f"{name} inserts prompts into a vision transformer, but MODEL.BACKBONE.NAME "
                              f"{cfg.MODEL.BACKBONE.NAME!r} is a ResNet: use a ViT backbone (ViT-B/32, "
                              f"ViT-B/16, ViT-L/14, or MicroViT on the offline kit)")
        size = input_resolution(self.clip_model)
        if tuple(cfg.INPUT.SIZE) != (size, size):
            raise ConfigError(f"INPUT.SIZE is {tuple(cfg.INPUT.SIZE)} but {cfg.MODEL.BACKBONE.NAME} takes "
                              f"{size}x{size} images (its positional embedding): set INPUT.SIZE ({size}, {size})")
        self.amp = self.prec == "amp"
        self.scaler = grad_scaler(self.prec, self.device)  # amp on CUDA only
        self.classnames = list(self.dm.dataset.classnames)
        print(f"Hand-crafted text classifier W from prompts: {fc.PROMPTS}")
        self.text_weights = prompt_classifier(self.clip_model, fc.PROMPTS, cfg.DATASET.NAME,
                                              self.classnames).to(self.device)  # [K, D] unit rows, computed once
        self.logit_scale = float(self.clip_model.logit_scale.exp().item())
        self.cache = cache_from_cfg(fc)
        self.data_root = osp.abspath(osp.expanduser(cfg.DATASET.ROOT)) if cfg.DATASET.ROOT else ""
        self.tfm_train = getattr(self.train_loader_x.dataset, "transform", None) or build_transform(cfg, is_train=True)
        self.tfm_test = getattr(self.test_loader.dataset, "transform", None) or build_transform(cfg, is_train=False)
        self._frozen: Dict[str, Tensor] = {}
        self._eval_split = "test"
        self.views = int(fc.TRAIN_VIEWS)
        if self.views > 0:  # fixed views (see fsclip.prompting.visual_data); 0 keeps Dassl's loader
            print(f"Training on {self.views} fixed augmented views per image (TRAINER.FEATURES.TRAIN_VIEWS)")
            self.train_loader_x = fixed_view_loader(
                self.dm.dataset.train_x, self.tfm_train, self.views, int(fc.VIEW_SEED),
                cfg.DATALOADER.TRAIN_X.BATCH_SIZE, cfg.DATALOADER.NUM_WORKERS, self.data_root,
                pin_memory=self.device.type == "cuda")
        self.build_method()
        n = sum(count_num_param(m) for m in self._models.values())
        print(f"# trainable params of {name}: {n:,}")

    def build_method(self) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ frozen features
    def autocast(self) -> Any:
        return autocast(self.prec, self.device)

    @torch.no_grad()
    def encode_frozen(self, images: Tensor) -> Tensor:
        """The frozen CLIP image feature ``[B, D]`` (CLIP's own forward)."""
        with self.autocast():
            return self.visual(images.to(self.device, self.visual.conv1.weight.dtype))  # CLIP's encode_image cast

    def frozen_features(self, split: str) -> Tensor:
        """Frozen image features of ``split``, L2-normalised float32 on the device: ``[N, V, D]``
        for train (every fixed view), ``[N, D]`` for val/test (the test view). Computed once per
        image through the feature cache; test features only when the test split is evaluated."""
        if split not in self._frozen:
            fc = self.cfg.TRAINER.FEATURES
            items = {"train": self.dm.dataset.train_x, "val": self.dm.dataset.val, "test": self.dm.dataset.test}[split]
            train = split == "train"
            feats = frozen_view_features(
                self.cache, self.encode_frozen, fingerprint_tensors(self.visual.state_dict()),
                [d.impath for d in items], self.tfm_train if train else self.tfm_test,
                self.views if train else 1, int(fc.VIEW_SEED) if train else 0,
                batch_size=int(fc.BATCH_SIZE), num_workers=self.cfg.DATALOADER.NUM_WORKERS, device=self.device,
                store_dtype=STORE_DTYPES[fc.DTYPE], prec=self.prec,
                root=self.data_root, label=split)
            feats = F.normalize(feats.to(self.device).float(), dim=-1)
            self._frozen[split] = feats if train else feats[:, 0]
        return self._frozen[split]

    def batch_frozen(self, batch: Dict[str, Any], split: str) -> Optional[Tensor]:
        """The frozen features ``[B, D]`` of a batch's images (None when the method needs none)."""
        if not self.needs_frozen:
            return None
        if split == "train":
            if self.views == 0:  # fresh augmentation: one frozen forward per step
                return F.normalize(self.encode_frozen(batch["img"]).float(), dim=-1)
            return self.frozen_features("train")[batch["index"].to(self.device), batch["view"].to(self.device)]
        return self.frozen_features(split)[batch["index"].to(self.device)]

    def zero_shot_logits(self, frozen: Tensor) -> Tensor:
        """Zero-shot CLIP's logits ``[B, K]`` from normalised frozen features and W."""
        return self.logit_scale * frozen @ self.text_weights.t()

    def clip_logits(self, features: Tensor, text: Tensor) -> Tensor:
        """``logit_scale * normalize(f) @ normalize(t)^T`` in float32: ``[B, K]``."""
        return self.logit_scale * F.normalize(features.float(), dim=-1) @ F.normalize(text.float(), dim=-1).t()

    # ------------------------------------------------------------------ training
    def forward_logits(self, images: Tensor, frozen: Optional[Tensor]) -> Tuple[Tensor, Dict[str, Any]]:
        raise NotImplementedError

    def compute_loss(self, images: Tensor, labels: Tensor, frozen: Optional[Tensor]
                     ) -> Tuple[Tensor, Tensor, Dict[str, float]]:
        """``(loss, logits, summary)``; the default is cross-entropy on the logits."""
        logits, _ = self.forward_logits(images, frozen)
        loss = F.cross_entropy(logits, labels)
        return loss, logits, {"loss": loss.item()}

    def forward_backward(self, batch: Dict[str, Any]) -> Dict[str, float]:
        images, labels = batch["img"].to(self.device), batch["label"].to(self.device)
        frozen = self.batch_frozen(batch, "train")
        with self.autocast():
            loss, logits, summary = self.compute_loss(images, labels, frozen)
        if self.scaler is None:
            self.model_zero_grad()
            self.model_backward(loss)  # detect_anomaly (PrecisionChecks) first
            self.check_gradients(p for m in self._models.values() for p in m.parameters())
            self.model_update()
        else:
            self.model_zero_grad()
            self.detect_anomaly(loss)
            self.scaler.scale(loss).backward()
            for name in self.get_model_names():
                if self._optims[name] is not None:
                    self.scaler.step(self._optims[name])
            self.scaler.update()
        summary["acc"] = (logits.argmax(dim=1) == labels).float().mean().item() * 100
        if self.batch_idx + 1 == self.num_batches:
            self.update_lr()
        return summary

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def test(self, split: Optional[str] = None) -> float:
        split = split or self.cfg.TEST.SPLIT
        self._eval_split = "val" if split == "val" and self.val_loader is not None else "test"
        return super().test(split)

    def parse_batch_test(self, batch: Dict[str, Any]) -> Tuple[Tuple[Tensor, Optional[Tensor]], Tensor]:
        images, labels = batch["img"].to(self.device), batch["label"].to(self.device)
        return (images, self.batch_frozen(batch, self._eval_split)), labels

    @torch.no_grad()
    def model_inference(self, inputs: Any) -> Tensor:
        """Logits ``[B, K]`` from ``(images, frozen features)`` or from images alone, classes
        outside the dataset's label subset masked (real Dassl's test loop calls this bare)."""
        images, frozen = inputs if isinstance(inputs, tuple) else (inputs, None)
        return self.restrict_logits(self.prompted_forward(images, frozen)[0])

    def prompted_forward(self, images: Tensor, frozen: Optional[Tensor] = None) -> Tuple[Tensor, Dict[str, Any]]:
        """``forward_logits`` in the run's precision from images ``[B, 3, H, W]`` (the frozen
        features, when the method needs them and none are given, computed without gradients):
        float logits ``[B, K]`` and the method's aux outputs."""
        images = images.to(self.device)
        if frozen is None and self.needs_frozen:
            frozen = F.normalize(self.encode_frozen(images).float(), dim=-1)
        with self.autocast():
            logits, aux = self.forward_logits(images, frozen)
        return logits.float(), aux

    def image_logits(self, images: Tensor) -> Tensor:
        """The ``image_logits`` hook (fsclip.explain.hooks): ``model_inference`` with gradients."""
        return self.restrict_logits(self.prompted_forward(images)[0])
