"""CLIP-LoRA: low-rank few-shot adaptation of CLIP (Zanella and Ben Ayed, CVPRW 2024).

Every weight of CLIP stays frozen; what trains is a rank-r update of the query, key and value
projections in the attention of every block of both encoders (fsclip.lowrank):

  Eq. 1   W_p' = W_p + s B_p A_p,  p in {q, k, v},  A in R^{r x d} (Kaiming-uniform), B in
          R^{d x r} (zero), s = alpha / sqrt(r) (the reference code's rank-stabilised scaling);
          the forward is W_p x + s B_p A_p drop(x): dropout on the low-rank branch only
  Eq. 2   p(y = k | x) = softmax_k(tau * cos(f'(x), g'(t_k))), tau = 100 fixed, t_k the dataset's
          first template filled with class k, g' the adapted text encoder, re-encoded at every step
  Eq. 3   L = CE(p(.|x), y), AdamW (lr 2e-4, wd 1e-2), cosine decay to 1e-6 per iteration over
          500 x shots iterations, batch 32

Defaults r = 2, alpha = 1, dropout 0.25 on every block of both encoders (TRAINER.CLIP_LORA). The
same hyperparameters serve every dataset and shot count (the paper's claim; no val search), and
the reported model is the last one (TEST.FINAL_MODEL last_step). Iterations are rounded up to
whole epochs of the training loader (the reference code stops mid-epoch).

ResNet backbones: the reference code supports ViTs only. A ResNet image encoder has no attention
blocks (only the attention pool), so on RN50/RN101/MicroRN CLIP-LoRA adapts the text encoder
only and says so in the log; asking for ENCODERS ["vision"] alone there is one ConfigError.

Known pitfalls of the reference code avoided here: weight decay is 1e-2 (its first release had
1e2, MaxZanella/CLIP-LoRA#1); the scaling is alpha / sqrt(r), not PEFT's alpha / r; the factors are
created after CLIP is frozen, so they are what trains (#6).

Checkpoints hold only the low-rank factors (the ``lora`` model); ``export_merged(path)`` writes
CLIP with every ``W + s B A`` folded in, for deployment without fsclip. Precision is
TRAINER.FEATURES.PREC: fp16 keeps CLIP's half weights with float32 factors. The training loop,
evaluation and export are fsclip.lowrank.trainer's, shared with CLIP-SVD.
"""

from __future__ import annotations

import torch.nn as nn
from yacs.config import CfgNode as CN

from fsclip.adapt.trainer import add_features_cfg
from fsclip.backend import TRAINER_REGISTRY
from fsclip.clip.features import is_vit
from fsclip.errors import ConfigError
from fsclip.lowrank.lora import apply_lora, check_lora_options, merge_lora
from fsclip.lowrank.trainer import EncoderTuningTrainer


@TRAINER_REGISTRY.register()
class CLIPLoRA(EncoderTuningTrainer):
    """LoRA on the q/k/v projections of CLIP's encoders, trained with cross-entropy (Eq. 1-3)."""

    cfg_node = "CLIP_LORA"
    model_name = "lora"

    @classmethod
    def extend_cfg(cls, cfg) -> None:
        add_features_cfg(cfg)  # TRAINER.FEATURES.PREC: the precision of CLIP
        if "CLIP_LORA" in cfg.TRAINER:
            return
        cfg.TRAINER.CLIP_LORA = c = CN()
        c.R = 2  # rank r
        c.ALPHA = 1.0  # s = ALPHA / sqrt(R)
        c.DROPOUT = 0.25  # on the input of the low-rank branch
        c.ENCODERS = ["text", "vision"]  # a ResNet image encoder has none: text only there
        c.POSITIONS = []  # block indices; [] = every block
        c.PARAMS = ["q", "k", "v"]  # projections; "o" (output projection) is off by default
        c.N_ITERS = 500  # iterations per shot (total = N_ITERS x shots); 0 = OPTIM.MAX_EPOCH epochs
        c.ETA_MIN = 1e-6  # the cosine schedule's final learning rate
        c.LOGIT_SCALE = 100.0  # tau of Eq. 2; 0 = CLIP's learned logit scale
        c.TEMPLATE = ""  # "" = the dataset's single template (e.g. "a photo of a {}.")

    def check_options(self) -> None:
        c = self.cfg.TRAINER.CLIP_LORA
        check_lora_options(list(c.ENCODERS), list(c.POSITIONS) or "all", list(c.PARAMS), "TRAINER.CLIP_LORA")

    def adapt_clip(self) -> nn.Module:
        """Eq. 1 in the chosen blocks; returns the factors (``self.lora``)."""
        cfg, c = self.cfg, self.cfg.TRAINER.CLIP_LORA
        encoders = list(c.ENCODERS)
        if not is_vit(self.clip_model) and "vision" in encoders:
            encoders.remove("vision")
            if not encoders:
                raise ConfigError(f"TRAINER.CLIP_LORA.ENCODERS is ['vision'] but {cfg.MODEL.BACKBONE.NAME} is a "
                                  "ResNet (no attention blocks): add \"text\" or use a ViT backbone")
            print(f"Note: {cfg.MODEL.BACKBONE.NAME} is a ResNet: LoRA adapts the text encoder only")
        try:
            sites = apply_lora(self.clip_model, encoders, list(c.POSITIONS) or "all", list(c.PARAMS), int(c.R),
                               float(c.ALPHA), float(c.DROPOUT))  # Eq. 1
        except ValueError as err:
            raise ConfigError(f"TRAINER.CLIP_LORA (R, DROPOUT or POSITIONS): {err}; use R >= 1, 0 <= DROPOUT < 1 "
                              "and block indices of the backbone") from None
        self.lora = nn.ModuleDict({name: m.lora for name, m in sites.items()})  # the factors only
        n = sum(p.numel() for p in self.lora.parameters())
        print(f"LoRA r={c.R} alpha={c.ALPHA} dropout={c.DROPOUT} on {list(c.PARAMS)} of {len(sites)} blocks "
              f"({', '.join(encoders)}): {n:,} trainable params")
        return self.lora

    def merge(self, model: nn.Module) -> nn.Module:
        return merge_lora(model)  # W + s B A
