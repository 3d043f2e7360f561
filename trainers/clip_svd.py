"""CLIP-SVD: singular-value few-shot adaptation of CLIP (Koleilat, Rivaz and Xiao, 2025).

Every weight of CLIP stays frozen except the singular values of the weight matrices in every
block of both encoders (fsclip.lowrank.svd): the q, k and v projections (three row-blocks of the
packed in_proj_weight), the attention output projection and the MLP's c_fc and c_proj:

  Eq. 1   W = U diag(s) V^T (float32 SVD of the pretrained weight, computed once and cached);
          W' = U diag(s') V^T with U, V and the biases frozen and s' trainable, s' = s at start
  Eq. 2   p(y = k | x) = softmax_k(tau * cos(f'(x), g'(t_k))), tau = 100 fixed, t_k the dataset's
          single template filled with class k, g' the adapted text encoder, re-encoded every step
  Eq. 3   L = CE(p(.|x), y), AdamW (lr 5e-4, wd 1e-2), cosine decay to 1e-6 per iteration over
          200 x shots iterations, batch 32

At ViT-B/16 that is 12 x 6 x 768 + 12 x 6 x 512 = 92,160 trainable numbers. The same
hyperparameters serve every dataset and shot count (no val search), the reported model is the
last one (TEST.FINAL_MODEL last_step), and the test split is evaluated once, at the end.

Differences from the reference code (HealthX-Lab/CLIP-SVD):
- W' is applied as W + U diag(s' - s) V^T (the same matrix up to the SVD's round-off; unchanged
  s' gives the frozen model bit for bit), recomposed in float32 each forward instead of running
  the tokens through V^T, diag(s') and U; the SVD is cached on disk instead of redone per run.
- Weight decay: kept as there, AdamW's decoupled decay on s' itself, which pulls the singular
  values toward 0 (not toward the pretrained ones). Its size is small at the paper's settings:
  the decay alone scales s' by exp(-wd * sum_t lr_t), about 0.992 at 16 shots (3,200 iterations
  of a cosine from 5e-4) and 0.9995 at 1 shot; OPTIM.WEIGHT_DECAY 0 turns it off.
- Full rank k = min(m, n) (the reference's default --rank 1.0 gives the same for CLIP's widths).
- Iterations are rounded up to whole epochs of the training loader (the reference stops
  mid-epoch). Its base-to-new schedule bug (a cosine with T_max = epochs stepped per batch, so the
  learning rate oscillates) is not reproduced: one cosine over all iterations in every protocol.
- amp uses a GradScaler on CUDA (the reference runs fp16 autocast without one).

ResNet backbones are not supported for the image encoder (the reference code is ViT only, and a
ResNet has no transformer blocks): asking for "vision" on one is one ConfigError;
ENCODERS ["text"] adapts the text encoder alone on any backbone.

Checkpoints hold only the singular values (the ``svd`` model); ``export_merged(path)`` writes
CLIP with every W' written into its weights, for deployment without fsclip. The SVD cache is
TRAINER.CLIP_SVD.CACHE_DIR ("" = <TRAINER.FEATURES.CACHE_DIR>/svd; "none" = no disk).
"""

from __future__ import annotations

import os.path as osp

import torch.nn as nn
from yacs.config import CfgNode as CN

from fsclip.adapt.cache import default_cache_dir
from fsclip.adapt.trainer import add_features_cfg
from fsclip.backend import TRAINER_REGISTRY
from fsclip.clip.features import is_vit
from fsclip.errors import ConfigError
from fsclip.lowrank.svd import apply_svd, check_svd_options, merge_svd
from fsclip.lowrank.trainer import EncoderTuningTrainer


def svd_cache_dir(cfg) -> str:
    """Folder of the SVD cache ("" = none): TRAINER.CLIP_SVD.CACHE_DIR, else the feature cache's svd/."""
    own = str(cfg.TRAINER.CLIP_SVD.CACHE_DIR)
    if own:
        return "" if own.lower() == "none" else osp.expanduser(own)
    features = str(cfg.TRAINER.FEATURES.CACHE_DIR)
    if features.lower() == "none":
        return ""
    return osp.join(osp.expanduser(features or default_cache_dir()), "svd")


@TRAINER_REGISTRY.register()
class CLIPSVD(EncoderTuningTrainer):
    """Singular values of CLIP's weight matrices, trained with cross-entropy (Eq. 1-3)."""

    cfg_node = "CLIP_SVD"
    model_name = "svd"

    @classmethod
    def extend_cfg(cls, cfg) -> None:
        add_features_cfg(cfg)  # TRAINER.FEATURES.PREC: the precision of CLIP
        if "CLIP_SVD" in cfg.TRAINER:
            return
        cfg.TRAINER.CLIP_SVD = c = CN()
        c.ENCODERS = ["text", "vision"]  # "vision" needs a ViT
        c.POSITIONS = []  # block indices; [] = every block
        c.MATRICES = ["q", "k", "v", "o", "c_fc", "c_proj"]  # the reference's "all"
        c.N_ITERS = 200  # iterations per shot (total = N_ITERS x shots); 0 = OPTIM.MAX_EPOCH epochs
        c.ETA_MIN = 1e-6  # the cosine schedule's final learning rate
        c.LOGIT_SCALE = 100.0  # tau of Eq. 2; 0 = CLIP's learned logit scale
        c.TEMPLATE = ""  # "" = the dataset's single template (e.g. "{} texture." for DTD)
        c.CACHE_DIR = ""  # SVD cache; "" = <TRAINER.FEATURES.CACHE_DIR>/svd, "none" = no disk

    def check_options(self) -> None:
        c = self.cfg.TRAINER.CLIP_SVD
        check_svd_options(list(c.ENCODERS), list(c.POSITIONS) or "all", list(c.MATRICES), "TRAINER.CLIP_SVD")

    def adapt_clip(self) -> nn.Module:
        """Eq. 1 in the chosen blocks; returns the singular values (``self.svd``)."""
        cfg, c = self.cfg, self.cfg.TRAINER.CLIP_SVD
        encoders = list(c.ENCODERS)
        if "vision" in encoders and not is_vit(self.clip_model):
            raise ConfigError(f"TRAINER.CLIP_SVD.ENCODERS has \"vision\" but {cfg.MODEL.BACKBONE.NAME} is a ResNet "
                              "(CLIP-SVD adapts transformer blocks): use a ViT backbone, or set "
                              "TRAINER.CLIP_SVD.ENCODERS [\"text\"] to adapt the text encoder only")
        try:
            sites = apply_svd(self.clip_model, encoders, list(c.POSITIONS) or "all", list(c.MATRICES),
                              svd_cache_dir(cfg))  # Eq. 1
        except ValueError as err:
            raise ConfigError(f"TRAINER.CLIP_SVD.POSITIONS: {err}; use block indices of the backbone") from None
        self.svd = nn.ModuleDict(sites)  # the singular values only (U, V are non-persistent buffers)
        n = sum(p.numel() for p in self.svd.parameters())
        blocks = len({"_".join(name.split("_")[:2]) for name in sites})  # "text_3_c_fc" -> "text_3"
        print(f"SVD on {list(c.MATRICES)} of {blocks} blocks ({', '.join(encoders)}): {n:,} trainable singular values")
        return self.svd

    def merge(self, model: nn.Module) -> nn.Module:
        return merge_svd(model)  # W' = U diag(s') V^T
