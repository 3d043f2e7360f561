"""CoOp: Context Optimization (Zhou et al., "Learning to Prompt for Vision-Language Models",
IJCV 2022).

The class prompt is ``t_k = [v_1, ..., v_M, c_k]`` (Eq. 2): M learnable context vectors v
followed by the word embeddings c_k of class k's name (or with the name in the middle or in
front). With CLIP's text encoder g and image encoder f,

  Eq. (3)  p(y = k | x) = exp(<g(t_k), f(x)> / tau) / sum_j exp(<g(t_j), f(x)> / tau)

with cosine similarity <., .> and CLIP's learned temperature (logit_scale = 1 / tau), trained
with cross-entropy; only the context is learned. Unified context (one v for all classes) or
class-specific context (CSC: one v per class); random init N(0, 0.02^2) or from the words of
CTX_INIT. With CTX_INIT "a photo of a" the initial prompts are that template's, so CoOp starts
as zero-shot CLIP with it (tested).

Here f(x) is read from cached views (``fsclip.prompting.trainer``); the paper's loop encodes a
freshly augmented image each step. Training: SGD lr 0.002, batch 32, cosine schedule with one
constant warmup epoch at 1e-5; 50 epochs at 1 shot, 100 at 2 and 4, 200 at 8 and 16
(``OPTIM.EPOCHS_BY_SHOTS`` in the configs; ImageNet: ``rn50_ep50``, 50 at every shot).
"""

from __future__ import annotations

from yacs.config import CfgNode as CN

from fsclip.backend import TRAINER_REGISTRY
from fsclip.prompting.trainer import PromptLearningTrainer, add_prompt_learner_cfg


@TRAINER_REGISTRY.register()
class CoOp(PromptLearningTrainer):
    """Learned context vectors for CLIP's class prompts (cross-entropy on Eq. 3)."""

    cfg_name = "COOP"

    @classmethod
    def extend_cfg(cls, cfg) -> None:
        super().extend_cfg(cfg)
        if "COOP" not in cfg.TRAINER:
            cfg.TRAINER.COOP = add_prompt_learner_cfg(CN(), n_ctx=16)
