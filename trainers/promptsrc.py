"""PromptSRC: Self-regulating Prompts (Khattak et al., "Self-regulating Prompts: Foundational
Model Adaptation without Forgetting", ICCV 2023).

Independent deep vision-language prompts (no coupling; mechanism in ``fsclip.prompting.deep``):
text prompts P_0 (the 4 tokens of "a photo of a", all learned) and P_1..P_{J_t-1}, visual
prompts V_0..V_{J_v-1} (4 tokens each, N(0, 0.02^2)), in blocks 0..J-1 of each encoder. The
prompted model f~, g~ is regulated towards the frozen CLIP f, g (Sec. 3.2):

  Eq. (3)  L_SCL-image = || f~_p(x) - f(x) ||_1         (L2-normalised features, mean over elements)
  Eq. (4)  L_SCL-text  = || g~_p(t) - g~(t) ||_1,  g~(t): the mean over N textual templates of
           CLIP's normalised text features of each class (textual diversity, Sec. 3.2.2), normalised
  Eq. (5)  L_SCL-logits = KL( p_zs || p~ ) with p_zs = softmax(CLIP's logits of f(x) against g~(t)),
           summed over batch and classes and divided by B * K (the official code), temperature 1
  Eq. (6)  L = L_CE + lambda_1 L_SCL-image + lambda_2 L_SCL-text + L_SCL-logits,
           lambda_1 = 10, lambda_2 = 25
  Eq. (7)  GPA: P = sum_e w_e P^(e), w_e = N(e; mu, sigma^2) / sum_e' N(e'; mu, sigma^2), the
           prompts after each epoch e = 1..E aggregated; the final model is the aggregate

The frozen image features f(x) are those of the same (fixed) augmented views, from the feature
cache. There is no identity case with the visual prompts (extra tokens from the start); the text
prompts start as the template, and the losses and GPA are checked against their formulas.

Defaults (muzairkhattak/PromptSRC): ViT-B/16, SGD lr 0.0025, batch 4, cosine, 1 constant warmup
epoch at 1e-5, fp16; base-to-new 20 epochs, GPA mu 15, sigma 1; few-shot 50 epochs, mu 30,
sigma 30; cross-dataset J = 3, 20 epochs, mu 6, sigma 10. The official code averages the whole
state dict (frozen weights included, which averages to themselves); here only the prompts.
Deviation: the text regulariser's templates are ``TRAINER.PROMPTSRC.REG_PROMPTS`` (default the
dataset's hand-engineered ensemble), not the official 60 ImageNet templates.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from yacs.config import CfgNode as CN

from fsclip.adapt.prompts import prompt_classifier
from fsclip.backend import TRAINER_REGISTRY
from fsclip.errors import ConfigError
from fsclip.prompting.deep import DeepPromptTrainer, DeepPrompts
from fsclip.prompting.prompt_learner import TextPromptLearner


def scl_l1(prompted: Tensor, frozen: Tensor) -> Tensor:
    """Eq. (3)-(4): mean absolute difference of the (normalised) features, over all elements."""
    return (prompted.float() - frozen.float()).abs().mean()


def scl_logits(logits: Tensor, zs_logits: Tensor) -> Tensor:
    """Eq. (5): sum_{b,k} p_zs log(p_zs / p~) / (B * K), temperature 1."""
    log_p, log_zs = logits.float().log_softmax(dim=-1), zs_logits.float().log_softmax(dim=-1)
    return (log_zs.exp() * (log_zs - log_p)).sum() / logits.numel()


def gpa_weights(epochs: int, mean: float, std: float) -> List[float]:
    """Eq. (7): w_e proportional to the Gaussian density N(e; mean, std^2), e = 1..epochs, sum 1."""
    if std <= 0:
        raise ConfigError(f"TRAINER.PROMPTSRC.GPA_STD must be > 0, got {std}")
    dens = [math.exp(-0.5 * ((e - mean) / std) ** 2) for e in range(1, epochs + 1)]
    total = sum(dens)
    return [d / total for d in dens]


class IndependentPromptLearner(TextPromptLearner):
    """P_0 (``ctx``), P_1..P_{J_t-1} (``deep_text.prompts``) and V_0..V_{J_v-1} (``vision.prompts``)."""

    def __init__(self, clip_model: Any, classnames: Sequence[str], n_ctx_text: int = 4, ctx_init: str = "a photo of a",
                 depth_text: int = 9, n_ctx_vision: int = 4, depth_vision: int = 9, std: float = 0.02) -> None:
        super().__init__(clip_model, classnames, n_ctx=n_ctx_text, ctx_init=ctx_init)
        t_blocks, v_blocks = len(clip_model.transformer.resblocks), len(clip_model.visual.transformer.resblocks)
        if not 1 <= depth_text <= t_blocks or not 1 <= depth_vision <= v_blocks:
            raise ConfigError(f"TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT must be in 1..{t_blocks} and PROMPT_DEPTH_VISION "
                              f"in 1..{v_blocks} (the encoders' blocks), got {depth_text} and {depth_vision}")
        device = self.ctx.device
        self.depth_text, self.depth_vision = int(depth_text), int(depth_vision)
        self.deep_text = DeepPrompts(depth_text - 1, self.n_ctx, self.ctx.shape[-1], std).to(device)
        self.vision = DeepPrompts(depth_vision, n_ctx_vision, clip_model.visual.conv1.out_channels, std).to(device)

    def text_prompts(self) -> List[Tensor]:
        return self.deep_text.as_list()

    def visual_prompts(self) -> List[Tensor]:
        return self.vision.as_list()

    def describe(self) -> str:
        return (super().describe() + f"; deep text prompts to depth {self.depth_text}, {self.vision.prompts.shape[1]} "
                f"visual prompt tokens to depth {self.depth_vision} (independent)")


@TRAINER_REGISTRY.register()
class PromptSRC(DeepPromptTrainer):
    """Independent V-L prompts with self-regulating consistency losses (Eq. 6) and GPA (Eq. 7)."""

    cfg_node = "PROMPTSRC"
    needs_frozen = True  # f(x) of the batch (Eq. 3, 5)

    @classmethod
    def extend_cfg(cls, cfg) -> None:
        super().extend_cfg(cfg)
        if "PROMPTSRC" in cfg.TRAINER:
            return
        cfg.TRAINER.PROMPTSRC = c = CN()
        c.N_CTX_TEXT = 4  # ignored with CTX_INIT (its word count)
        c.CTX_INIT = "a photo of a"
        c.N_CTX_VISION = 4
        c.PROMPT_DEPTH_TEXT = 9
        c.PROMPT_DEPTH_VISION = 9
        c.INIT_STD = 0.02
        c.TEXT_LOSS_WEIGHT = 25.0  # lambda_2 of Eq. (6)
        c.IMAGE_LOSS_WEIGHT = 10.0  # lambda_1
        c.KL_WEIGHT = 1.0  # the weight of L_SCL-logits (1 in the paper and code)
        c.REG_PROMPTS = "ensemble"  # templates of g~(t), Eq. (4): a TRAINER.FEATURES.PROMPTS spec
        c.GPA = True  # Eq. (7); False: the last epoch's prompts
        c.GPA_MEAN = 15.0  # mu (epochs)
        c.GPA_STD = 1.0  # sigma
        c.PREC = "fp16"

    def build_prompt_learner(self) -> IndependentPromptLearner:
        c = self.cfg.TRAINER.PROMPTSRC
        return IndependentPromptLearner(self.clip_model, self.classnames, int(c.N_CTX_TEXT), c.CTX_INIT,
                                        int(c.PROMPT_DEPTH_TEXT), int(c.N_CTX_VISION), int(c.PROMPT_DEPTH_VISION),
                                        float(c.INIT_STD))

    def build_method(self) -> None:
        super().build_method()
        c = self.cfg.TRAINER.PROMPTSRC
        print(f"Text regulariser g~(t) from prompts: {c.REG_PROMPTS}")
        self.reg_text = prompt_classifier(self.clip_model, c.REG_PROMPTS, self.cfg.DATASET.NAME,
                                          self.classnames).to(self.device)  # [K, D] unit rows, Eq. (4)
        self.gpa: Optional[List[float]] = None
        if c.GPA:
            if self.cfg.TEST.FINAL_MODEL == "best_val":
                raise ConfigError("TRAINER.PROMPTSRC.GPA aggregates the prompts of every epoch, so there is no "
                                  "best-val epoch to deploy: set TEST.FINAL_MODEL last_step, or GPA False")
            self.gpa = gpa_weights(int(self.cfg.OPTIM.MAX_EPOCH), float(c.GPA_MEAN), float(c.GPA_STD))
        self._gpa_sum: Optional[Dict[str, Tensor]] = None

    def compute_loss(self, images: Tensor, labels: Tensor, frozen: Optional[Tensor]
                     ) -> Tuple[Tensor, Tensor, Dict[str, float]]:
        c = self.cfg.TRAINER.PROMPTSRC
        logits, aux = self.forward_logits(images, frozen)
        text = F.normalize(aux["text"].float(), dim=-1)  # g~_p(t): [K, D]
        image = F.normalize(aux["features"].float(), dim=-1)  # f~_p(x): [B, D]
        zs_logits = self.logit_scale * frozen @ self.reg_text.t()  # CLIP's, against g~(t)
        ce = F.cross_entropy(logits, labels)
        l_image, l_text = scl_l1(image, frozen), scl_l1(text, self.reg_text)  # Eq. (3), (4)
        l_kl = scl_logits(logits, zs_logits)  # Eq. (5)
        loss = (ce + float(c.IMAGE_LOSS_WEIGHT) * l_image + float(c.TEXT_LOSS_WEIGHT) * l_text
                + float(c.KL_WEIGHT) * l_kl)  # Eq. (6)
        return loss, logits, {"loss": loss.item(), "loss_ce": ce.item(), "l1_image": l_image.item(),
                              "l1_text": l_text.item(), "kl": l_kl.item()}

    def after_epoch(self) -> None:
        """Eq. (7): add w_e * P^(e); after the last epoch the aggregate replaces the prompts
        before the checkpoint is written (so eval-only runs load the GPA model)."""
        if self.gpa is not None:
            w = self.gpa[self.epoch]
            state = self.prompt_learner.state_dict()
            if self._gpa_sum is None:
                self._gpa_sum = {k: torch.zeros_like(v, dtype=torch.float32) for k, v in state.items()}
                self._gpa_weight = 0.0
            for k, v in state.items():
                self._gpa_sum[k] += w * v.detach().float()
            self._gpa_weight += w
            if self.epoch + 1 == self.max_epoch:
                if self.start_epoch > 0:  # the weights of the epochs before the resume are renormalised away
                    print(f"Note: training resumed at epoch {self.start_epoch + 1}; GPA aggregates the epochs "
                          "of this run only")
                self.prompt_learner.load_state_dict({k: v / self._gpa_weight for k, v in self._gpa_sum.items()})
                print(f"GPA: deploying the Gaussian-weighted prompts of epochs 1-{self.max_epoch} "
                      f"(mu {self.cfg.TRAINER.PROMPTSRC.GPA_MEAN}, sigma {self.cfg.TRAINER.PROMPTSRC.GPA_STD})")
        super().after_epoch()
