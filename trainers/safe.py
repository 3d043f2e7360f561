"""SAFE: Semantic-Aware FinE-tuning of CLIP's attention pooling (SAFE paper, III-B).

CLIP's image encoder is G (the feature extractor giving dense features F) followed by the
attention pooling layer; for ViTs the last transformer block (with ln_post and the projection)
plays that role. SAFE fine-tunes a copy AttnPool_F of the pooling layer on the few-shot set
(Algorithm 1), keeping AttnPool_O frozen:

  training:   logits = logit_scale * normalize(AttnPool_F(G(x))) W_c^T,  cross-entropy
  Eq. (3)     F_blending = beta * AttnPool_O(F) + AttnPool_F(F)
  Eq. (4)     logits = logit_scale * normalize(F_blending) W_c^T

W_c is the frozen text classifier. Features are L2-normalised and scaled by CLIP's logit scale,
as CLIP does; so with AttnPool_F = AttnPool_O, normalize((1 + beta) f) = normalize(f) and SAFE's
logits equal zero-shot CLIP's exactly. beta is read at evaluation time: change it with
``--eval-only --model-dir RUN TRAINER.SAFE.BETA 0.9`` without retraining.

SAFE-A (Eq. 9-10) is in ``safe_a.py``.

Protocol (SAFE IV-A): AdamW, cosine schedule over ITERS steps, batch 8, grid over LRS x WDS,
early stopping on the few-shot validation split every EVAL_EVERY steps. The grid's settings
train together as one stacked model (``fsclip.adapt.stacked``: same batches, each setting with
its own AdamW, schedule and early stopping) or one after another (``GRID_BATCHED False``);
both choose the same setting.

TRAIN_LAYERS (Sec. IV-D2, which layers to fine-tune): "attnpool" (SAFE; for a ViT the same as
"last_block"), or a deeper split for the ablation: ResNet "attnpool+layer4" /
"attnpool+layer4+layer3", ViT "last_two_blocks". G then ends before those layers (the feature
cache keys on the split), AttnPool_O / AttnPool_F cover them (BatchNorm statistics frozen), and
the grid trains one setting after another.

TRAIN_CLASSIFIER (Fig. 8, "linear fine-tuning"): W_c (from FEATURES.PROMPTS, e.g. a CuPL file)
trains together with AttnPool_F, rows kept unit (``fsclip.adapt.heads.HeadWithClassifier``); the
saved model then holds W_c too, so it is per class. Settings train one after another.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor
from yacs.config import CfgNode as CN

from fsclip.adapt.extract import view_batches
from fsclip.adapt.heads import DeeperHead, HeadWithClassifier, encoder_with_head
from fsclip.adapt.search import RunResult, grid_search, train_with_early_stopping
from fsclip.adapt.stacked import (
    StackedAdamW, StackedHead, cross_entropy_per_setting, grid_search_stacked, train_stacked_with_early_stopping,
)
from fsclip.adapt.trainer import FrozenFeatureTrainer
from fsclip.backend import TRAINER_REGISTRY
from fsclip.clip.attention import ATTENTION_REMEDY
from fsclip.clip.features import is_vit, vit_tokens
from fsclip.engine.optim import adamw
from fsclip.errors import ConfigError


GRID_KEYS = {"lr": "TRAINER.SAFE.LRS", "weight_decay": "TRAINER.SAFE.WDS"}
# TRAINER.SAFE.TRAIN_LAYERS -> (architecture, trunk stages moved into the head; None: either)
TRAIN_LAYERS = {"attnpool": (None, 0), "attnpool+layer4": ("rn", 1), "attnpool+layer4+layer3": ("rn", 2),
                "last_block": ("vit", 0), "last_two_blocks": ("vit", 1)}


def extra_stages(value: str, visual: Any) -> int:
    """How many trunk stages (ResNet layers / ViT blocks) TRAIN_LAYERS moves into the head."""
    arch = "vit" if is_vit(visual) else "rn"
    allowed = [k for k, (a, _) in TRAIN_LAYERS.items() if a in (None, arch)]
    if value not in allowed:
        raise ConfigError(f"TRAINER.SAFE.TRAIN_LAYERS must be one of {', '.join(allowed)} for this "
                          f"{'ViT' if arch == 'vit' else 'ResNet'} backbone, got {value!r}")
    return TRAIN_LAYERS[value][1]


@TRAINER_REGISTRY.register()
class SAFE(FrozenFeatureTrainer):
    """Fine-tune the attention pooling (or the last ViT block), blend with the original."""

    PER_CLASS_STATE = False  # AttnPool_F is an image-side layer; W_c is rebuilt from this run's classes
    # The stacked grid and the deeper splits run OpenAI CLIP's modules; the sequential grid of
    # SAFE's own split trains any backbone's pooling head (OpenCLIP ViTs: the last block + pool).
    backbone_needs: tuple = ()

    @classmethod
    def extend_cfg(cls, cfg) -> None:
        super().extend_cfg(cfg)
        if "SAFE" in cfg.TRAINER:
            return
        cfg.TRAINER.SAFE = CN()
        s = cfg.TRAINER.SAFE
        # Residual ratio beta of Eq. (3); used at evaluation, so it can change without retraining
        s.BETA = 0.5
        # Optimisation steps per run (cosine schedule over them) and batch size
        s.ITERS = 12800
        s.BATCH_SIZE = 8
        # Evaluate on val every EVAL_EVERY steps and keep the best weights (early stopping)
        s.EVAL_EVERY = 100
        # Stop a run after PATIENCE evaluations without improvement (0: never stop early)
        s.PATIENCE = 0
        # Grid searched on val: learning rates x weight decays (AdamW)
        s.LRS = [1e-4, 1e-5, 1e-6, 1e-7]
        s.WDS = [0.0, 1e-3, 1e-5]
        # Train the grid's settings together as one stacked model (False: one after another,
        # the reference path; both choose the same setting)
        s.GRID_BATCHED = True
        # At most this many settings at once when batched (0: the whole grid); each costs one
        # copy of the head with its gradient and AdamW state (RN50: about 240 MB)
        s.GRID_MAX_STACK = 0
        # Layers fine-tuned (Sec. IV-D2): "attnpool" (SAFE), ResNet "attnpool+layer4",
        # "attnpool+layer4+layer3", ViT "last_block" (= "attnpool"), "last_two_blocks"
        s.TRAIN_LAYERS = "attnpool"
        # Fig. 8's linear fine-tuning: also train W_c (initialised from FEATURES.PROMPTS)
        s.TRAIN_CLASSIFIER = False

    def build_split(self) -> None:
        s, name = self.cfg.TRAINER.SAFE, type(self).__name__
        if "clip-internals" not in self.backbone.capabilities:
            if s.GRID_BATCHED or str(s.TRAIN_LAYERS) not in ("attnpool", "last_block"):
                raise ConfigError(f"{name} on {self.backbone.name!r}: the batched grid and the deeper TRAIN_LAYERS "
                                  "stack OpenAI CLIP's modules; on this backbone set TRAINER.SAFE.GRID_BATCHED False "
                                  "and keep TRAINER.SAFE.TRAIN_LAYERS last_block")
            if not self.backbone.has_pooling_head:
                raise ConfigError(f"{name}: the {self.backbone.family} backbone {self.backbone.name!r} has no "
                                  "pooling head to fine-tune (its trunk is the whole encoder): use an OpenAI CLIP "
                                  "or an OpenCLIP ViT")
        self.n_extra = extra_stages(str(s.TRAIN_LAYERS), self.visual)
        if self.n_extra:  # the split moves: G ends earlier (a cache space of its own), heads grow
            self.backbone_id = f"{self.backbone_id}|G-before-last-{self.n_extra + 1}-stages"
            self.head_o = self.make_head().requires_grad_(False).eval()

    def build_method(self) -> None:
        self.head_f = self.make_head()  # AttnPool_F, starts as AttnPool_O
        self.register_model("attnpool_f", self.head_f, None, None)
        self.classifier = None
        if self.cfg.TRAINER.SAFE.TRAIN_CLASSIFIER:
            if type(self) is not SAFE:
                raise ConfigError(f"TRAINER.SAFE.TRAIN_CLASSIFIER is SAFE's (Fig. 8); {type(self).__name__} "
                                  "keeps W_c frozen: set it to False")
            self.classifier = HeadWithClassifier(nn.Identity(), self.text_weights).to(self.device)
            self.register_model("classifier", self.classifier, None, None)

    def per_class_state(self) -> bool:
        return self.classifier is not None  # a trained W_c has a row per class (fsclip.model_dir)

    def trainable(self) -> nn.Module:
        """A fresh AttnPool_F (= AttnPool_O), with a trainable copy of W_c under TRAIN_CLASSIFIER."""
        head = self.make_head()
        return head if self.classifier is None else HeadWithClassifier(head, self.text_weights).to(self.device)

    def weights_of(self, model: nn.Module) -> Tensor:
        return model.unit_weight() if isinstance(model, HeadWithClassifier) else self.text_weights

    def default_weights(self) -> Tensor:
        """Eq. (4)'s classifier: W_c, or the trained W_c once there is one."""
        return self.text_weights if self.classifier is None else self.classifier.unit_weight()

    def trained_visual(self) -> Any:
        """Hook (``fsclip.explain``): the image encoder with AttnPool_F as its pooling layer."""
        self.backbone.require(["clip-internals"], "fsclip-explain correspondence of SAFE",
                              ATTENTION_REMEDY)
        if self.n_extra:
            raise ConfigError("fsclip-explain walks the image encoder of SAFE's own split (TRAIN_LAYERS attnpool) "
                              f"only: this run trained TRAINER.SAFE.TRAIN_LAYERS {self.cfg.TRAINER.SAFE.TRAIN_LAYERS}")
        return encoder_with_head(self.visual, self.head_f)

    def make_head(self) -> nn.Module:
        """A trainable copy of the head of the TRAIN_LAYERS split (AttnPool_O's weights)."""
        head = DeeperHead(self.visual, self.n_extra) if self.n_extra else self.backbone.pooling_head()
        return head.to(self.device)

    def trunk_features(self, images: Tensor) -> Tensor:
        """``G(x)`` up to the TRAIN_LAYERS split."""
        if not self.n_extra:
            return super().trunk_features(images)
        v = self.visual
        with self.autocast():
            if is_vit(v):
                return vit_tokens(v, images.to(self.device), n_last_blocks_skipped=1 + self.n_extra)
            x = images.to(device=v.conv1.weight.device, dtype=v.conv1.weight.dtype)
            for conv, bn, relu in ((v.conv1, v.bn1, v.relu1), (v.conv2, v.bn2, v.relu2), (v.conv3, v.bn3, v.relu3)):
                x = relu(bn(conv(x)))
            x = v.avgpool(x)
            for layer in (v.layer1, v.layer2, v.layer3, v.layer4)[:4 - self.n_extra]:
                x = layer(x)
            return x

    def blend(self, dense: Tensor) -> Tensor:
        """Eq. (3): beta * AttnPool_O(F) + AttnPool_F(F), [B, D]."""
        dense = dense.float()
        return self.cfg.TRAINER.SAFE.BETA * self.head_o(dense) + self.head_f(dense)

    def logits_from_dense(self, dense: Tensor) -> Tensor:
        return self.clip_logits(self.blend(dense))  # Eq. (4)

    def attention_maps(self, images: Tensor, labels: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """AttnPool_O's and AttnPool_F's query attention over the positions (ViT: the class token's
        row in the last block): ``attnpool_o``, ``attnpool_f`` ``[B, H, h, w]`` (fsclip.explain.hooks)."""
        dense = self.trunk_features(images)
        return {"logits": self.restrict_logits(self.logits_from_dense(dense)),
                **self.pooling_attention(dense, attnpool_o=self.head_o, attnpool_f=self.head_f)}

    def fit(self) -> None:
        self.fit_safe()
        self.save_model(self.safe_result.step - 1, self.output_dir, val_result=self.safe_result.val_acc,
                        model_name="model-best.pth.tar")

    def fit_safe(self) -> RunResult:
        """Algorithm 1 for every (lr, weight decay) of the grid; keeps the best on val."""
        s = self.cfg.TRAINER.SAFE
        val = self.features("val")[:, 0]
        self._val = (val, self.labels("val"), self.pooled(self.head_o, val))  # AttnPool_O(F) of val, fixed
        grid = {"lr": [float(x) for x in s.LRS], "weight_decay": [float(x) for x in s.WDS]}
        batched = s.GRID_BATCHED and not self.n_extra and self.classifier is None  # stacked: pooling head only
        way = "trained together" if batched else "one after another"
        print(f"SAFE: {len(s.LRS) * len(s.WDS)} settings x {s.ITERS} steps (batch {self.batch_size()}), "
              f"val every {s.EVAL_EVERY} steps, {way}")
        if batched:
            best = grid_search_stacked(grid, self.train_stacked, int(s.GRID_MAX_STACK), keys=GRID_KEYS)
        else:
            best = grid_search(grid, self.train_one, keys=GRID_KEYS)
        if self.classifier is None:
            self.head_f.load_state_dict(best.state)
        else:  # HeadWithClassifier's state: head.* and weight
            self.head_f.load_state_dict({k[5:]: v for k, v in best.state.items() if k.startswith("head.")})
            self.classifier.weight.data.copy_(best.state["weight"])
        self.log_choice("SAFE", lr=best.params["lr"], weight_decay=best.params["weight_decay"],
                        step=best.step, val_accuracy=best.val_acc, beta=float(s.BETA))
        self.safe_result = best
        return best

    # ---------------------------------------------------------------- Algorithm 1, per setting
    def batch_size(self) -> int:
        return min(int(self.cfg.TRAINER.SAFE.BATCH_SIZE), len(self.split_items("train")))

    def batches(self) -> Callable[[], Tuple[Tensor, Tensor]]:
        """``few_shot_loader.next()``: cached G(x) of shuffled images, a random view each; every
        run (and every setting) draws the same sequence."""
        train, labels = self.features("train"), self.labels("train")
        next_views = view_batches(train.shape[0], train.shape[1], self.batch_size(), max(self.cfg.SEED, 0))

        def next_batch() -> Tuple[Tensor, Tensor]:
            idx, views = next_views()
            return train[idx, views].to(self.device).float(), labels[idx]

        return next_batch

    def loss(self, head: torch.nn.Module, next_batch: Callable[[], Tuple[Tensor, Tensor]]) -> Tensor:
        """Cross-entropy of logit_scale * normalize(AttnPool_F(G(x))) W_c^T (per setting: [S])."""
        x, y = next_batch()
        return cross_entropy_per_setting(self.clip_logits(head(x), self.weights_of(head)), y)

    def val_accuracy(self, head: torch.nn.Module) -> Tensor:
        """Accuracy (%) on val of Eq. (3)-(4) with ``head`` as AttnPool_F (per setting: [S])."""
        val, val_y, pooled_o = self._val
        blended = self.cfg.TRAINER.SAFE.BETA * pooled_o + self.pooled(head, val)
        return (self.clip_logits(blended, self.weights_of(head)).argmax(dim=-1) == val_y).float().mean(dim=-1) * 100

    def train_one(self, params: Dict[str, float]) -> RunResult:
        """One setting: a fresh AttnPool_F = AttnPool_O, AdamW, cosine schedule, early stopping."""
        s = self.cfg.TRAINER.SAFE
        torch.manual_seed(max(self.cfg.SEED, 0))
        head = self.trainable()
        opt = adamw(head.parameters(), lr=params["lr"], weight_decay=params["weight_decay"])
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=int(s.ITERS))
        next_batch = self.batches()
        return train_with_early_stopping(head, lambda _: self.loss(head, next_batch), lambda: self.val_accuracy(head).item(),
                                         opt, sched, int(s.ITERS), int(s.EVAL_EVERY), int(s.PATIENCE), params)

    def train_stacked(self, settings: List[Dict[str, float]]) -> List[RunResult]:
        """The same for several settings at once: stacked copies, one batch, one step for all."""
        s = self.cfg.TRAINER.SAFE
        torch.manual_seed(max(self.cfg.SEED, 0))
        head = StackedHead(self.visual, len(settings)).to(self.device)
        opt = StackedAdamW(list(head.parameters()), [p["lr"] for p in settings], [p["weight_decay"] for p in settings])
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt.optimizer, T_max=int(s.ITERS))
        next_batch = self.batches()
        return train_stacked_with_early_stopping(head, lambda _: self.loss(head, next_batch),
                                                 lambda: self.val_accuracy(head), opt, sched, int(s.ITERS),
                                                 int(s.EVAL_EVERY), int(s.PATIENCE), settings)
