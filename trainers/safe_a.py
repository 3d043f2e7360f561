"""SAFE-A (SAFE paper, Eq. 8-10): Tip-Adapter-F whose cache keys and test features are SAFE's
blended features instead of CLIP's.

  Eq. (8)     logits = alpha * phi(f F_Train^T) L_Train + f W_c^T   (phi(x) = exp(-beta (1 - x)),
              the cache affinity; CLIP's logit scale on the zero-shot term)
  Eq. (9)     F_Train = beta * AttnPool_O(G(X_K)) + AttnPool_F(G(X_K)), every augmented view
  Eq. (10)    f = beta * AttnPool_O(G(x_t)) + AttnPool_F(G(x_t)), L2-normalised

SAFE trains first (its grid and early stopping, ``safe.py``); then Tip-Adapter-F's cache is built
on the blended features and fine-tuned, its alpha and beta searched on the few-shot val split
(``fsclip.adapt.tip``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fsclip.adapt.tip import CacheAdapter, fit_cache_adapter
from fsclip.backend import TRAINER_REGISTRY

from .safe import SAFE
from .tip_adapter import add_tip_cfg


@TRAINER_REGISTRY.register()
class SAFE_A(SAFE):
    """SAFE-A: Tip-Adapter-F on SAFE's blended features (Eq. 9-10 into Eq. 8)."""

    PER_CLASS_STATE = True  # Tip-Adapter's cache (keys and one-hot values over these classes)

    @classmethod
    def extend_cfg(cls, cfg) -> None:
        super().extend_cfg(cfg)
        add_tip_cfg(cfg)

    def build_method(self) -> None:
        super().build_method()
        n_keys = len(self.split_items("train"))
        self.adapter = CacheAdapter(n_keys, self.text_weights.shape[1], len(self.classnames)).to(self.device)
        self.register_model("cache_adapter", self.adapter, None, None)

    def saved_class_count(self) -> int:
        return self.adapter.values.shape[1]  # the cache's one-hot values

    def fit(self) -> None:
        self.fit_safe()
        train = self.features("train")
        n, v = train.shape[:2]
        with torch.no_grad():  # Eq. (9): blended features of every training view
            keys = torch.cat([self.blend(train[i:i + 64].flatten(0, 1).to(self.device)) for i in range(0, n, 64)])
            val_feats = self.blend(self.features("val")[:, 0].to(self.device))
        out = fit_cache_adapter(self.adapter, keys.reshape(n, v, -1), self.labels("train"), val_feats,
                                self.labels("val"), self.text_weights, self.logit_scale, self.cfg.TRAINER.TIP,
                                finetune=True, seed=max(self.cfg.SEED, 0))
        self.log_choice("SAFE-A cache", alpha=out["alpha"], gamma=out["gamma"], val_accuracy=out["val_acc"])
        self.save_model(self.safe_result.step - 1, self.output_dir, val_result=out["val_acc"],
                        model_name="model-best.pth.tar")

    def logits_from_dense(self, dense: Tensor) -> Tensor:
        f = F.normalize(self.blend(dense), dim=-1)  # Eq. (10)
        return self.adapter(f, self.text_weights, self.logit_scale)  # Eq. (8)
