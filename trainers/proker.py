"""ProKeR (Bendou, Ouasfi, Gripon, Boukhayma, CVPR 2025, "A Kernel Perspective on Training-Free
Few-Shot Adaptation of Large Vision-Language Models"): kernel ridge regression in an RKHS around
zero-shot CLIP, in closed form (``fsclip.adapt.closed_form``).

  k(x, y)  = exp(-beta (1 - x^T y))                         RBF on unit-norm features
  f_0(x)   = x^T W_text                                     the zero-shot prior, raw cosines
  alpha    = (K_SS / lambda + I)^-1 (Y - f_0(S))            S: every cached view of the shots
  f(x)     = f_0(x) + k(x, S) alpha                         logits: logit_scale * f(x)

The regression is regularised towards f_0 (not towards 0): it moves away from zero-shot CLIP
only as far as the few shots ask, and lambda -> 0 gives f_0 back (lambda = 0 is
taken as that limit). (beta, lambda) are searched on the few-shot val split over linspace grids
(BETA, LAMBDA = [start, end, count], as in the code's per-dataset yaml; the default is the code's
widest one, DTD's). The code's form divides K by lambda (lambda also scales the residual term
against textbook ridge regression, (K/lambda + I)^-1 = lambda (K + lambda I)^-1); we keep it so
that the code's hyperparameters transfer. Where the code validates otherwise: by default on the
full val split (its "coop" option is our few-shot val split) and, for ImageNet, on the test set;
we use the few-shot val split and read the test set once. Logits are scaled by CLIP's logit scale
(argmax unchanged) so that lambda = 0 is zero-shot CLIP's logits exactly.
The kernel matrix is |S|^2: every cached view is a support sample, as in the code; lower
VIEWS (the code's README: --augment-epoch) for large datasets.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import Tensor
from yacs.config import CfgNode as CN

from fsclip.adapt.closed_form import (
    ClosedFormState, kernel_gib, linspace_grid, proker_fit, proker_logits, proker_search,
)
from fsclip.adapt.trainer import FrozenFeatureTrainer
from fsclip.backend import TRAINER_REGISTRY
from fsclip.errors import ConfigError

from .gda import support_views


class ProKeRHead(ClosedFormState):
    """The support set S [|S|, D] (unit rows), the dual coefficients alpha [|S|, K], beta, lambda."""

    def __init__(self, num_support: int, dim: int, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("support", torch.zeros(num_support, dim))
        self.register_buffer("alpha", torch.zeros(num_support, num_classes))
        self.register_buffer("beta", torch.tensor(1.0))
        self.register_buffer("lam", torch.tensor(0.0))

    def forward(self, f: Tensor, text: Tensor, logit_scale: float) -> Tensor:
        return logit_scale * proker_logits(f, self.support, self.alpha, text, float(self.beta))


def grid_of(cfg_node, key: str) -> list:
    spec = list(cfg_node[key])
    if len(spec) != 3 or int(spec[2]) < 1 or min(float(spec[0]), float(spec[1])) < 0:
        raise ConfigError(f"TRAINER.PROKER.{key} must be [start, end, count] with start, end >= 0 and "
                          f"count >= 1 (torch.linspace), got {spec}")
    return linspace_grid(spec)


@TRAINER_REGISTRY.register()
class ProKeR(FrozenFeatureTrainer):
    """Training-free ProKeR: kernel regression of the zero-shot residual on the few shots."""

    PER_CLASS_STATE = True  # alpha has a column per class (fsclip.model_dir)

    @classmethod
    def extend_cfg(cls, cfg) -> None:
        super().extend_cfg(cfg)
        if "PROKER" in cfg.TRAINER:
            return
        p = cfg.TRAINER.PROKER = CN()
        # Search grids [start, end, count] (torch.linspace; the code's DTD grid, its widest)
        p.BETA = [0.1, 10.0, 20]
        p.LAMBDA = [0.001, 10.0, 100]
        # Cached augmented views per training image used as support samples (0: all; the code: 10)
        p.VIEWS = 0
        # Largest float64 kernel matrix K_SS allowed, in GiB (|S|^2 * 8 bytes)
        p.MAX_KERNEL_GB = 8.0

    def build_method(self) -> None:
        views = int(self.cfg.TRAINER.FEATURES.TRAIN_VIEWS)
        v = views if int(self.cfg.TRAINER.PROKER.VIEWS) <= 0 else min(int(self.cfg.TRAINER.PROKER.VIEWS), views)
        n = len(self.split_items("train")) * v
        self.head = ProKeRHead(n, self.text_weights.shape[1], len(self.classnames)).to(self.device)
        self.register_model("proker", self.head, None, None)

    def saved_class_count(self) -> int:
        return self.head.alpha.shape[1]

    def fit(self) -> None:
        p = self.cfg.TRAINER.PROKER
        betas, lams = grid_of(p, "BETA"), grid_of(p, "LAMBDA")
        x, y, v = support_views(self, int(p.VIEWS))
        if kernel_gib(x.shape[0]) > float(p.MAX_KERNEL_GB):
            raise ConfigError(
                f"ProKeR's kernel matrix over {x.shape[0]} support samples ({v} view(s) per image) needs "
                f"{kernel_gib(x.shape[0]):.1f} GiB, over TRAINER.PROKER.MAX_KERNEL_GB {float(p.MAX_KERNEL_GB):g}: "
                f"lower TRAINER.PROKER.VIEWS (views per image) or raise TRAINER.PROKER.MAX_KERNEL_GB")
        print(f"ProKeR: {x.shape[0]} support samples ({v} view(s) per image), "
              f"grid {len(betas)} betas x {len(lams)} lambdas")
        beta, lam, acc = proker_search(x, y, self.text_weights, self.global_features("val"), self.labels("val"),
                                       betas, lams)
        alpha = proker_fit(x, y, self.text_weights, beta, lam)
        with torch.no_grad():
            support = F.normalize(x.float(), dim=-1)
            if self.head.support.shape != support.shape:  # another VIEWS or train split than built for
                self.head.support = torch.zeros_like(support)
                self.head.alpha = torch.zeros_like(alpha)
            self.head.support.copy_(support)
            self.head.alpha.copy_(alpha)
            self.head.beta.fill_(beta)
            self.head.lam.fill_(lam)
        self.log_choice("ProKeR", beta=beta, lam=lam, val_accuracy=acc)
        self.save_model(0, self.output_dir, val_result=acc, model_name="model-best.pth.tar")

    def logits_from_dense(self, dense: Tensor) -> Tensor:
        f = F.normalize(self.head_o(dense.float()).float(), dim=-1)
        return self.head(f, self.text_weights, self.logit_scale)
