"""VT-CLIP: CLIP with visual-guided texts (Qiu et al., Sec. 3 of the paper).

Eq. 1  V_s = VB(I)                 spatial visual features, brought to the text width D
                                   (TRAINER.VTCLIP.VISUAL, see fsclip.adapt.dense)
Eq. 2  V_c = Pooling(V_s)          CLIP's own pooled image feature: AttnPool_O(G(x)) (ViT: the
                                   class token through the last block, ln_post and proj)
Eq. 3  T_c = TextEn(T([H; C_i]))   text features of the hand-crafted prompts (FEATURES.PROMPTS)
Eq. 5  VT_c = CrossAttn(V_s, V_s, T_c) + T_c
                                   CrossAttn: LAYERS cascaded transformer decoder blocks, each
                                   self-attention over the K text features, cross-attention with
                                   the text as queries and V_s as keys and values, feed-forward
Eq. 6  P = softmax(V_c VT_c^T / tau)
                                   per image (VT_c depends on it): logit_scale *
                                   normalize(V_c) . normalize(VT_c)

Choices the paper leaves open, and ours:
- Pre-norm blocks. Each sublayer reads LayerNorm(x) and adds its output to the text stream x,
  which starts as T_c; so the decoder's own residual stream is Eq. 5's residual and
  CrossAttn(V_s, V_s, T_c) is the sum of the sublayer outputs. (Post-norm blocks would
  renormalise T_c and lose CLIP's text feature at the start.)
- The output projections of the three sublayers start at zero: a fresh module gives
  VT_c = T_c, i.e. exactly zero-shot CLIP, and training moves away from it.
- V_s goes through one LayerNorm before it serves as keys and values of every block.
- Feed-forward width FFN_RATIO x D with GELU; dropout (DROPOUT) on attention weights and on
  every sublayer output, as in the standard decoder block.
- V_c is CLIP's pooled feature, not a pooling of V_s of our own (Eq. 2: CLIP's attention pool).
- The self-attention of the first block sees only T_c, the same for every image: computed once
  per batch and broadcast.

Training (Sec. 4.1): frozen encoders, cross-entropy, OPTIM (SGD, lr 2e-3, CoOp's warmup and
cosine schedule), batch 32, CoOp's epochs per shot count (OPTIM.EPOCHS_BY_SHOTS), CLIP's
augmentation (a random cached view of each image: random resized crop and flip). Learning rate
and weight decay grid (LRS x WDS) and the best epoch are chosen on the few-shot val split.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from yacs.config import CfgNode as CN

from fsclip.adapt.dense import DenseSplit, SpatialProjection, add_dense_cfg, check_mode, fit_on_dense, spatial_stem
from fsclip.adapt.trainer import FrozenFeatureTrainer
from fsclip.backend import TRAINER_REGISTRY
from fsclip.clip.attention import map_entries, recorded_attention, spatial_tokens
from fsclip.errors import ConfigError


class VisualGuidedBlock(nn.Module):
    """One decoder block on the text stream ``x`` ``[1 or B, K, D]`` with keys/values ``[B, L, D]``."""

    def __init__(self, width: int, heads: int, ffn_ratio: float, dropout: float) -> None:
        super().__init__()
        self.ln_self = nn.LayerNorm(width)
        self.self_attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.ln_cross = nn.LayerNorm(width)
        self.cross_attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.ln_ffn = nn.LayerNorm(width)
        hidden = int(round(ffn_ratio * width))
        self.ffn = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, width))
        self.drop = nn.Dropout(dropout)
        for out in (self.self_attn.out_proj, self.cross_attn.out_proj, self.ffn[-1]):
            nn.init.zeros_(out.weight)  # zero sublayer outputs: a fresh block is the identity
            nn.init.zeros_(out.bias)

    def forward(self, x: Tensor, visual: Tensor) -> Tensor:
        h = self.ln_self(x)
        x = x + self.drop(self.self_attn(h, h, h, need_weights=False)[0])  # self-attention over the K texts
        x = x.expand(visual.shape[0], -1, -1)  # [B, K, D]
        h = self.ln_cross(x)
        x = x + self.drop(self.cross_attn(h, visual, visual, need_weights=False)[0])  # texts query V_s
        return x + self.drop(self.ffn(self.ln_ffn(x)))


class VisualGuidedText(nn.Module):
    """Eq. 5: ``VT_c = T_c + CrossAttn(V_s, V_s, T_c)`` with ``layers`` cascaded blocks."""

    def __init__(self, visual, mode: str, width: int, heads: int, layers: int, ffn_ratio: float,
                 dropout: float) -> None:
        super().__init__()
        self.project = SpatialProjection(visual, mode)  # trainable only in "learned" mode
        self.ln_visual = nn.LayerNorm(width)
        self.blocks = nn.ModuleList(VisualGuidedBlock(width, heads, ffn_ratio, dropout) for _ in range(layers))

    def forward(self, text: Tensor, stem: Tensor) -> Tensor:
        """``text`` T_c ``[K, D]``, ``stem`` the spatial stem ``[B, L, W]`` -> VT_c ``[B, K, D]``."""
        visual = self.ln_visual(self.project(stem))  # V_s [B, L, D]
        x = text.unsqueeze(0)  # [1, K, D]
        for block in self.blocks:
            x = block(x, visual)
        return x.expand(stem.shape[0], -1, -1)


def vt_logits(image: Tensor, vt: Tensor, scale: float) -> Tensor:
    """Eq. 6: ``scale * normalize(V_c) . normalize(VT_c)`` for ``[B, D]`` and ``[B, K, D]``: ``[B, K]``."""
    return scale * torch.einsum("bd,bkd->bk", F.normalize(image.float(), dim=-1), F.normalize(vt, dim=-1))


@TRAINER_REGISTRY.register()
class VTCLIP(FrozenFeatureTrainer):
    """Text features refined per image by a visual-guided cross-attention module."""

    PER_CLASS_STATE = False  # attention blocks over any set of class texts (fsclip.model_dir)
    backbone_needs = ("clip-internals",)  # V_s from CLIP's attention pool / ln_post and proj

    @classmethod
    def extend_cfg(cls, cfg) -> None:
        super().extend_cfg(cfg)
        add_dense_cfg(cfg)
        if "VTCLIP" in cfg.TRAINER:
            return
        cfg.TRAINER.VTCLIP = CN()
        v = cfg.TRAINER.VTCLIP
        # Attention heads of both attentions (Table 1: 4, 8, 16, 32; must divide CLIP's embed width)
        v.HEADS = 8
        # Cascaded decoder blocks (Table 2: 1-4)
        v.LAYERS = 1
        # V_s in the text width: project (ResNet: the attention pool's value and output
        # projections, as MaskCLIP; ViT: ln_post and proj of every token), attnpool (every token
        # through CLIP's attention pool as its own query) or learned (a trainable copy of project)
        v.VISUAL = "project"
        # Feed-forward hidden width in multiples of the embed width
        v.FFN_RATIO = 4.0
        # Dropout on attention weights and sublayer outputs, while training
        v.DROPOUT = 0.1
        # Grids searched on val, each run keeping its best epoch; [] -> OPTIM.LR / OPTIM.WEIGHT_DECAY
        v.LRS = []
        v.WDS = []
        # Validate every EVAL_EVERY epochs; stop a run after PATIENCE validations without a gain (0: never)
        v.EVAL_EVERY = 1
        v.PATIENCE = 0

    def build_method(self) -> None:
        v = self.cfg.TRAINER.VTCLIP
        self.visual_mode = check_mode(v.VISUAL, "TRAINER.VTCLIP.VISUAL")
        width = self.text_weights.shape[1]
        if int(v.HEADS) < 1 or width % int(v.HEADS):
            raise ConfigError(f"TRAINER.VTCLIP.HEADS is {v.HEADS}, which does not divide CLIP's embedding width "
                              f"{width}; use a divisor of {width}")
        if int(v.LAYERS) < 1:
            raise ConfigError(f"TRAINER.VTCLIP.LAYERS must be at least 1, got {v.LAYERS}")
        self.vt = self.new_module()
        self.register_model("vtclip", self.vt, None, None)

    def new_module(self) -> VisualGuidedText:
        v = self.cfg.TRAINER.VTCLIP
        return VisualGuidedText(self.visual, self.visual_mode, self.text_weights.shape[1], int(v.HEADS),
                                int(v.LAYERS), float(v.FFN_RATIO), float(v.DROPOUT)).to(self.device)

    def stem(self, dense: Tensor) -> Tensor:
        return spatial_stem(self.visual, dense, self.visual_mode)

    def logits(self, module: VisualGuidedText, image: Tensor, stem: Tensor) -> Tensor:
        return vt_logits(image, module(self.text_weights, stem), self.logit_scale)  # Eq. 5-6

    def logits_from_dense(self, dense: Tensor) -> Tensor:
        return self.logits(self.vt, self.head_o(dense.float()), self.stem(dense))

    def attention_maps(self, images: Tensor, labels: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """Fig. 1: each block's text-to-region cross-attention, per head, for the predicted class
        (``layer<l>_pred``) and the true one (``layer<l>_true``, with ``labels``): ``[B, H, h, w]``,
        recorded in the forward that gives ``logits`` (fsclip.explain.hooks)."""
        dense = self.trunk_features(images)
        with recorded_attention([block.cross_attn for block in self.vt.blocks]) as seen:
            logits = self.restrict_logits(self.logits_from_dense(dense))
        out, rows = {"logits": logits}, torch.arange(logits.shape[0], device=logits.device)
        for l, weights in enumerate(seen, start=1):  # [B, H, K, HW]: the K texts query the HW positions
            for tag, cls in (("pred", logits.argmax(dim=1)), ("true", labels)):
                if cls is not None:
                    out.update(map_entries(f"layer{l}_{tag}", weights[rows, :, cls.to(rows.device)], 0,
                                           spatial_tokens(self.visual)))  # [B, H, HW]
        return out

    def fit(self) -> None:
        v = self.cfg.TRAINER.VTCLIP
        train, val = DenseSplit(self, "train", self.stem), DenseSplit(self, "val", self.stem)
        what = f"VT-CLIP ({v.LAYERS} block(s), {v.HEADS} heads, V_s {self.visual_mode})"
        best, epoch = fit_on_dense(self.new_module, self.logits, train, val, self.cfg, v, what)
        self.vt.load_state_dict(best.state)
        self.log_choice("VT-CLIP", lr=best.params["lr"], weight_decay=best.params["weight_decay"], epoch=epoch,
                        val_accuracy=best.val_acc)
        self.save_model(epoch, self.output_dir, val_result=best.val_acc, model_name="model-best.pth.tar")
