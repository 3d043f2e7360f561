"""MaPLe: Multi-modal Prompt Learning (Khattak et al., CVPR 2023).

CLIP stays frozen; deep prompts are learned in the language branch and coupled into the vision
branch (Sec. 3.2; mechanism in ``fsclip.prompting.deep``):

  Sec. 3.2.1  language prompts P_0 = the first M = N_CTX token embeddings of the prompt
              "a photo of a {class}." (init from those words; the rest stays fixed text), and
              deep prompts P_i in R^{M x d_l} replacing the context positions at the input of
              text blocks i = 1..J-1 (J = PROMPT_DEPTH; N(0, 0.02^2) init), carried on after J
  Eq. (5)     vision-language coupling  V_i = F_i(P_i),  F_i a linear layer d_l -> d_v,
              i = 0..J-1 (F_0: ``proj``; F_1..F_{J-1}: ``compound_prompt_projections``, clones
              of one layer, so identical at init, as in the official code)
  Sec. 3.2.2  the V_i are the visual prompts: appended after the patch tokens (V_0 with the
              embedding, through ``ln_pre``), replaced at the input of vision blocks i < J
  Eq. (1)     p(y | x) = softmax_k(cos(f~(x), w~_k) * exp(t)), trained with cross-entropy

Learned: ``prompt_learner`` (P_0..P_{J-1}, F_0..F_{J-1}); nothing in CLIP. With J = 1 and the
initial context the text features are CLIP's of "a photo of a {class}." (tested); the visual
prompts V_0 are always extra tokens (no identity there; the coupling is checked by hand).

Defaults (the official repository, ``vit_b16_c2_ep5_batch4_2ctx.yaml``): M = 2, J = 9, ViT-B/16,
SGD lr 0.0035, batch 4, 5 epochs, cosine, 1 constant warmup epoch at 1e-5, fp16; base-to-new
trains on the base classes (16 shots) and tests the last epoch on the new ones. Cross-dataset:
J = 3, lr 0.0026, 2 epochs (``vit_b16_c2_ep2_batch4_2ctx_cross_datasets``). MaPLe ships no
few-shot config; ``vit_b16_fewshot`` is the users' setting (batch 4, lr 0.0035, 50 epochs).
Unlike the official code, prompts stay float32 and are cast where they enter an encoder, so
PREC fp32 and amp work; ResNet backbones are refused with one ConfigError (official issue #49).
"""

from __future__ import annotations

import copy
from typing import Any, List, Sequence

import torch.nn as nn
from torch import Tensor
from yacs.config import CfgNode as CN

from fsclip.backend import TRAINER_REGISTRY
from fsclip.errors import ConfigError
from fsclip.prompting.deep import DeepPromptTrainer, DeepPrompts
from fsclip.prompting.prompt_learner import TextPromptLearner


class MultiModalPromptLearner(TextPromptLearner):
    """P_0 (``ctx``), the deep text prompts P_1..P_{J-1} and the coupling functions F_0..F_{J-1}
    (state dict: ``ctx``, ``compound_prompts_text.prompts``, ``proj.*``,
    ``compound_prompt_projections.<i>.*``)."""

    def __init__(self, clip_model: Any, classnames: Sequence[str], n_ctx: int = 2, ctx_init: str = "a photo of a",
                 depth: int = 9, std: float = 0.02) -> None:
        super().__init__(clip_model, classnames, n_ctx=n_ctx, ctx_init=ctx_init, learn_init_words=n_ctx)
        blocks = len(clip_model.transformer.resblocks)
        if not 1 <= depth <= min(blocks, len(clip_model.visual.transformer.resblocks)):
            raise ConfigError(f"TRAINER.MAPLE.PROMPT_DEPTH must be in 1..{blocks} (the encoders' blocks), got {depth}")
        width_t, width_v = self.ctx.shape[-1], clip_model.visual.conv1.out_channels
        device = self.ctx.device
        self.depth = int(depth)
        self.compound_prompts_text = DeepPrompts(depth - 1, self.n_ctx, width_t, std).to(device)  # P_1..P_{J-1}
        self.proj = nn.Linear(width_t, width_v).to(device)  # F_0
        single = nn.Linear(width_t, width_v)
        self.compound_prompt_projections = nn.ModuleList(
            copy.deepcopy(single) for _ in range(depth - 1)).to(device)  # F_1..F_{J-1}, identical at init

    def text_prompts(self) -> List[Tensor]:
        """P_1..P_{J-1}, each ``[M, d_l]``."""
        return self.compound_prompts_text.as_list()

    def visual_prompts(self) -> List[Tensor]:
        """Eq. (5): V_i = F_i(P_i), i = 0..J-1, each ``[M, d_v]``."""
        deep = [f(p) for f, p in zip(self.compound_prompt_projections, self.text_prompts())]
        return [self.proj(self.ctx)] + deep

    def describe(self) -> str:
        return super().describe() + f"; prompt depth J = {self.depth} in both encoders, coupled text -> vision"


@TRAINER_REGISTRY.register()
class MaPLe(DeepPromptTrainer):
    """Deep language prompts coupled to deep vision prompts (Eq. 5), cross-entropy on Eq. (1)."""

    cfg_node = "MAPLE"

    @classmethod
    def extend_cfg(cls, cfg) -> None:
        super().extend_cfg(cfg)
        if "MAPLE" in cfg.TRAINER:
            return
        cfg.TRAINER.MAPLE = m = CN()
        m.N_CTX = 2  # M: the first M tokens of CTX_INIT are learned (P_0)
        m.CTX_INIT = "a photo of a"  # the prompt template's words before the class name
        m.PROMPT_DEPTH = 9  # J: prompts in blocks 0..J-1 of both encoders (1 = first block only)
        m.INIT_STD = 0.02  # deep text prompts from N(0, INIT_STD^2)
        m.PREC = "fp16"  # fp16 (CUDA; fp32 on a CPU), fp32 or amp

    def build_prompt_learner(self) -> MultiModalPromptLearner:
        m = self.cfg.TRAINER.MAPLE
        return MultiModalPromptLearner(self.clip_model, self.classnames, int(m.N_CTX), m.CTX_INIT,
                                       int(m.PROMPT_DEPTH), float(m.INIT_STD))
