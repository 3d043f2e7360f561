"""KgCoOp: Knowledge-guided Context Optimization (Yao et al., "Visual-Language Prompt Tuning with
Knowledge-guided Context Optimization", CVPR 2023).

CoOp plus a penalty that keeps the learned class embeddings near zero-shot CLIP's:

  Eq. (6)  L_kg = 1/N_c sum_i || w_i - w_i^clip ||_2^2
  Eq. (7)  L = L_ce + lambda L_kg,  lambda = 8.0

w_i: the (L2-normalised) text feature of class i's learned prompt; w_i^clip: zero-shot CLIP's
of the hand-crafted prompt (``TRAINER.FEATURES.PROMPTS``; the configs use ``single``, the
dataset's CoOp template). With the context initialised from that template ("a photo of a" for
"a photo of a {}."), L_kg is zero at the start (tested).

The official code computes 1 - mean_i cos(w_i, w_i^clip), which is L_kg / 2 for unit vectors,
with weight 8.0: ``TRAINER.KGCOOP.PENALTY cosine`` selects it; ``l2`` (default) is Eq. (6).
"""

from __future__ import annotations

from typing import Dict

import torch.nn.functional as F
from torch import Tensor
from yacs.config import CfgNode as CN

from fsclip.backend import TRAINER_REGISTRY
from fsclip.errors import ConfigError
from fsclip.prompting.trainer import PromptLearningTrainer, accuracy, add_prompt_learner_cfg


def kg_penalty(w: Tensor, w_clip: Tensor, kind: str = "l2") -> Tensor:
    """Eq. (6) over unit rows ``w``, ``w_clip`` ``[K, D]`` (``cosine``: the official 1 - mean cos)."""
    if kind == "l2":
        return (w - w_clip).pow(2).sum(dim=-1).mean()
    if kind == "cosine":
        return 1.0 - (w * w_clip).sum(dim=-1).mean()
    raise ConfigError(f'TRAINER.KGCOOP.PENALTY must be "l2" (the paper) or "cosine" (the official code), got "{kind}"')


@TRAINER_REGISTRY.register()
class KgCoOp(PromptLearningTrainer):
    """CoOp with the knowledge-guided penalty of Eq. (6)-(7)."""

    cfg_name = "KGCOOP"

    @classmethod
    def extend_cfg(cls, cfg) -> None:
        super().extend_cfg(cfg)
        if "KGCOOP" not in cfg.TRAINER:
            node = add_prompt_learner_cfg(CN(), n_ctx=4, ctx_init="a photo of a")
            # lambda of Eq. (7)
            node.W = 8.0
            # l2: Eq. (6), mean squared distance of unit text features; cosine: the official 1 - mean cos
            node.PENALTY = "l2"
            cfg.TRAINER.KGCOOP = node

    def forward_backward_features(self, image_features: Tensor, labels: Tensor) -> Dict[str, float]:
        c = self.method_cfg
        with self.autocast():
            w = self.class_text_features()  # [K, D] unit rows of the learned prompts
            logits = self.logits(image_features, w)
            loss_ce = F.cross_entropy(logits, labels)
            loss_kg = kg_penalty(w, self.text_weights, c.PENALTY)  # Eq. (6)
            loss = loss_ce + float(c.W) * loss_kg  # Eq. (7)
        self.backward_and_update(loss)
        return {"loss": loss.item(), "kg_loss": loss_kg.item(), "acc": accuracy(logits, labels)}
