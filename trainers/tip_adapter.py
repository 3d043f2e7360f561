"""Tip-Adapter and Tip-Adapter-F (Zhang et al.), as SAFE restates them (SAFE Eq. 5-8).

Eq. 5  F_train = AttnPool_O(G(X_K))          keys: few-shot image features (mean over views)
Eq. 6  L_train = OneHot(L_N)                 values
Eq. 7  f = AttnPool_O(G(x_t))                test feature (L2-normalised)
Eq. 8  logits = alpha * phi(f F_train^T) L_train + logit_scale * f W_c^T,  phi(x) = exp(-gamma (1 - x))

TipAdapter is training-free; TipAdapterF trains the keys. alpha and gamma, and Tip-Adapter-F's
epoch, are chosen on the few-shot validation split. The official code (gaopengcuhk/Tip-Adapter)
searches alpha/gamma on val in main.py but on the test set in main_imagenet.py, and keeps
Tip-Adapter-F's epoch with the best test accuracy in both; we never look at the test set.
Cache keys are built as the official code builds them: raw view features averaged, then
L2-normalised (``fsclip.adapt.tip.cache_keys_from_views``).
"""

from __future__ import annotations


import torch.nn.functional as F
from torch import Tensor
from yacs.config import CfgNode as CN

from fsclip.adapt.tip import CacheAdapter, fit_cache_adapter
from fsclip.adapt.trainer import FrozenFeatureTrainer
from fsclip.backend import TRAINER_REGISTRY


def add_tip_cfg(cfg) -> None:
    """``TRAINER.TIP``, shared by TipAdapter, TipAdapterF and SAFE_A."""
    if "TIP" in cfg.TRAINER:
        return
    cfg.TRAINER.TIP = CN()
    t = cfg.TRAINER.TIP
    # Search of (gamma, alpha) on val: from 0.1 towards SCALE in STEP points each
    t.SEARCH_SCALE = [7.0, 3.0]
    t.SEARCH_STEP = [200, 20]
    # alpha and gamma used while fine-tuning the keys (Tip-Adapter-F)
    t.INIT_ALPHA = 1.0
    t.INIT_GAMMA = 1.0
    # Fine-tuning of the keys (Tip-Adapter-F): AdamW with a cosine schedule
    t.LR = 0.001
    t.EPS = 1e-4
    t.WEIGHT_DECAY = 0.01
    t.EPOCHS = 20
    t.BATCH_SIZE = 256


@TRAINER_REGISTRY.register()
class TipAdapter(FrozenFeatureTrainer):
    """Training-free Tip-Adapter on frozen CLIP features."""

    PER_CLASS_STATE = True  # the cache's values are one-hot over the training classes (fsclip.model_dir)

    finetune_keys = False

    @classmethod
    def extend_cfg(cls, cfg) -> None:
        super().extend_cfg(cfg)
        add_tip_cfg(cfg)

    def build_method(self) -> None:
        n_keys = len(self.split_items("train"))
        self.adapter = CacheAdapter(n_keys, self.text_weights.shape[1], len(self.classnames)).to(self.device)
        self.register_model("cache_adapter", self.adapter, None, None)

    def saved_class_count(self) -> int:
        return self.adapter.values.shape[1]  # the cache's one-hot values

    def image_features(self, dense: Tensor) -> Tensor:
        """Eq. 5/7: the frozen pooled feature AttnPool_O(G(x)), [B, D]."""
        return self.head_o(dense.float())

    def fit(self) -> None:
        out = fit_cache_adapter(
            self.adapter, self.global_features("train"), self.labels("train"), self.global_features("val"),
            self.labels("val"), self.text_weights, self.logit_scale, self.cfg.TRAINER.TIP,
            finetune=self.finetune_keys, seed=max(self.cfg.SEED, 0))
        self.log_choice(type(self).__name__, alpha=out["alpha"], gamma=out["gamma"], val_accuracy=out["val_acc"])
        self.save_model(0, self.output_dir, val_result=out["val_acc"], model_name="model-best.pth.tar")

    def logits_from_dense(self, dense: Tensor) -> Tensor:
        f = F.normalize(self.image_features(dense).float(), dim=-1)
        return self.adapter(f, self.text_weights, self.logit_scale)  # Eq. 8


@TRAINER_REGISTRY.register()
class TipAdapterF(TipAdapter):
    """Tip-Adapter-F: the cache keys are fine-tuned on the few-shot views."""

    finetune_keys = True
