"""CoCoOp: Conditional Context Optimization (Zhou et al., "Conditional Prompt Learning for
Vision-Language Models", CVPR 2022).

A lightweight meta-net h_theta (Linear -> ReLU -> Linear, bottleneck vis_dim / 16) maps the
image feature x to a token pi = h_theta(x) that shifts every context vector (Sec. 3.2):

            v_m(x) = v_m + pi,   pi = h_theta(x),  m = 1..M
  Eq. (4)   t_k(x) = [v_1(x), ..., v_M(x), c_k]
  Eq. (5)   p(y | x) = exp(sim(x, g(t_y(x))) / tau) / sum_k exp(sim(x, g(t_k(x))) / tau)

The context vectors and the meta-net are learned; the input of h_theta is the L2-normalised image
feature (the official code). So the K prompts differ per image and the text encoder runs once
per image: with the prefix-shared encoder, the SOT + context positions run once per image and
only the class suffixes run K times (``fsclip.prompting.text_encoder``).

Paper settings (``vit_b16_c4_ep10_batch1_ctxv1``): ViT-B/16, 4 context tokens from "a photo
of a", batch 1, 10 epochs, SGD lr 0.002, cosine with one warmup epoch at 1e-5; the
base-to-new protocol (DATASET.SUBSAMPLE_CLASSES base for training, new for testing) is
``scripts/cocoop/base2new_train.sh`` / ``base2new_test.sh``. With the meta-net's output at
zero, CoCoOp's prompts are CoOp's.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from yacs.config import CfgNode as CN

from fsclip.backend import TRAINER_REGISTRY
from fsclip.prompting.prompt_learner import TextPromptLearner
from fsclip.prompting.trainer import PromptLearningTrainer, add_prompt_learner_cfg


class ConditionalPromptLearner(TextPromptLearner):
    """CoOp's prompt learner plus the meta-net (state dict keys as CoCoOp's: ctx, meta_net.*)."""

    def __init__(self, clip_model: Any, classnames: Sequence[str], vis_dim: int, **kwargs: Any) -> None:
        super().__init__(clip_model, classnames, **kwargs)
        if self.csc or self.position != "end":
            raise ValueError("CoCoOp conditions a generic context with the class token at the end")
        width = self.ctx.shape[-1]
        self.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(vis_dim, vis_dim // 16)),
            ("relu", nn.ReLU(inplace=True)),
            ("linear2", nn.Linear(vis_dim // 16, width)),
        ])).to(self.ctx.device)  # initialised on the CPU generator

    def conditional_context(self, image_features: Tensor) -> Tensor:
        """v_m(x) = v_m + h_theta(x) for each image: ``[B, D] (normalised) -> [B, M, width]``."""
        pi = self.meta_net(image_features)  # [B, width]
        return self.ctx.unsqueeze(0) + pi.unsqueeze(1)


@TRAINER_REGISTRY.register()
class CoCoOp(PromptLearningTrainer):
    """Instance-conditioned context: CoOp's context shifted by a meta-net of the image feature."""

    cfg_name = "COCOOP"

    @classmethod
    def extend_cfg(cls, cfg) -> None:
        super().extend_cfg(cfg)
        if "COCOOP" not in cfg.TRAINER:
            # a generic context with the class name at the end (no CSC / CLASS_TOKEN_POSITION)
            cfg.TRAINER.COCOOP = add_prompt_learner_cfg(CN(), n_ctx=16, layout=False)

    def build_prompt_learner(self) -> TextPromptLearner:
        c = self.method_cfg
        vis_dim = self.text_weights.shape[1]  # CLIP's joint embedding size D
        return ConditionalPromptLearner(self.backbone, self.classnames, vis_dim, n_ctx=int(c.N_CTX),
                                        ctx_init=c.CTX_INIT)

    def eval_text_features(self) -> Optional[Tensor]:
        return None  # the prompts depend on the image

    def logits(self, image_features: Tensor, text: Optional[Tensor] = None) -> Tensor:
        """Eq. (5) for a batch: ``[B, D] -> [B, K]``, K prompts per image."""
        f = F.normalize(image_features.float(), dim=-1)  # [B, D]
        ctx = self.prompt_learner.conditional_context(f)  # Eq. (4): [B, M, width]
        w = self.prompt_learner.text_features(self.backbone, ctx)  # [B, K, D]
        w = F.normalize(w.float(), dim=-1)
        return self.logit_scale * torch.einsum("bd,bkd->bk", f, w)
