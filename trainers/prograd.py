"""ProGrad: Prompt-aligned Gradient (Zhu et al., "Prompt-aligned Gradient for Prompt Tuning",
ICCV 2023).

CoOp's prompts, updated only in directions that do not conflict with zero-shot CLIP's general
knowledge. Two losses on the same logits (Sec. 3.2):

  L_ce  = cross-entropy of the prompted logits with the labels           -> gradient G_d
  L_kl  = KL(p_zs || p_prompt) at temperature T, p_zs = softmax of zero-shot
          CLIP's logits with the same template (the teacher; no gradient) -> gradient G_g

  Eq. (3)  G_prograd = G_d                               if G_d . G_g >= 0
                       G_d - lambda (G_d . G_g / |G_g|^2) G_g    otherwise

per parameter tensor (the official code), with lambda 1 in the paper (the official scripts use
0.8 for Flowers, DTD and EuroSAT at 8 and 16 shots: ``TRAINER.PROGRAD.LAMBDA 0.8``). L_kl only
shapes the update direction; it is never added to the loss. With context initialised from the
teacher's template, the prompts start as the teacher (G_g = 0: no projection at the first step).

Teacher: ``TRAINER.FEATURES.PROMPTS`` (the configs: ``single``, the dataset's CoOp template).
The official code initialises 16 context tokens with the dataset template's words in the last
positions and zeros before; here CTX_INIT follows CoOp (the context is the words, see configs).
The official code logs T^2 * cross-entropy(p_zs, p_prompt); its gradient is the KL's.
"""

from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F
from torch import Tensor
from yacs.config import CfgNode as CN

from fsclip.backend import TRAINER_REGISTRY
from fsclip.prompting.trainer import PromptLearningTrainer, accuracy, add_prompt_learner_cfg


def prograd_projection(g_d: Tensor, g_g: Tensor, lam: float = 1.0) -> Tensor:
    """Eq. (3): ``g_d`` minus ``lam`` times its projection on ``g_g`` when the two conflict
    (negative dot product); ``g_d`` unchanged otherwise (and when ``g_g`` is zero)."""
    dot = torch.dot(g_d.flatten().float(), g_g.flatten().float())
    sq = g_g.float().pow(2).sum()
    if dot >= 0 or sq == 0:
        return g_d
    return g_d - (lam * dot / sq).to(g_d.dtype) * g_g


@TRAINER_REGISTRY.register()
class ProGrad(PromptLearningTrainer):
    """CoOp trained with prompt-aligned gradients (Eq. 3)."""

    cfg_name = "PROGRAD"

    @classmethod
    def extend_cfg(cls, cfg) -> None:
        super().extend_cfg(cfg)
        if "PROGRAD" not in cfg.TRAINER:
            node = add_prompt_learner_cfg(CN(), n_ctx=16)
            # lambda of Eq. (3): how much of the conflicting component is removed
            node.LAMBDA = 1.0
            # Temperature T of the distillation term L_kl
            node.T = 1.0
            cfg.TRAINER.PROGRAD = node

    def forward_backward_features(self, image_features: Tensor, labels: Tensor) -> Dict[str, float]:
        c = self.method_cfg
        t = float(c.T)
        with self.autocast():
            logits = self.logits(image_features)
            loss_ce = F.cross_entropy(logits, labels)
            with torch.no_grad():
                teacher = self.clip_logits(image_features)  # zero-shot CLIP, same template
            loss_kl = F.kl_div(F.log_softmax(logits / t, dim=1), F.log_softmax(teacher / t, dim=1),
                               reduction="batchmean", log_target=True) * t * t
        self.detect_anomaly(loss_ce)
        params = [p for p in self.prompt_learner.parameters() if p.requires_grad]
        g_g = torch.autograd.grad(self.scale(loss_kl), params, retain_graph=True, allow_unused=True)
        g_d = torch.autograd.grad(self.scale(loss_ce), params, allow_unused=True)
        self.model_zero_grad()
        for p, d, g in zip(params, g_d, g_g):
            if d is not None:
                p.grad = d if g is None else prograd_projection(d, g, float(c.LAMBDA))
        self.optimizer_step()
        return {"loss": loss_ce.item(), "kl_loss": loss_kl.item(), "acc": accuracy(logits, labels)}
