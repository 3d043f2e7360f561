"""CALIP and CALIP-FS (Guo et al., AAAI 2023, "CALIP: Zero-Shot Enhancement of CLIP with
Parameter-free Attention").

F_s ``[L, D]``: spatial visual features (TRAINER.CALIP.VISUAL, see fsclip.adapt.dense; default
every attention-pool token, as CALIP's public code), F_t ``[K, D]``: text features of the
prompts, f: CLIP's pooled image feature; all L2-normalised. Per image:

  A     = F_s F_t^T                          [L, K]
  F_t^a = softmax(A^T / alpha_t) F_s         visual-guided texts (softmax over positions)  [K, D]
  F_s^a = softmax(A / alpha_s) F_t           text-guided visual (softmax over classes)     [L, D]
  F_v^a = mean_L(F_s^a) + max_L(F_s^a)       pooled                                        [D]
  logits = s f F_t^T + beta2 s f F_t^a^T + beta3 s F_v^a F_t^T

s is CLIP's logit scale (100 in the paper, which is CLIP's), so with beta2 = beta3 = 0 the logits
are zero-shot CLIP's. F_t^a and F_v^a are used as the attention gives them, not renormalised
(as the public code does).

CALIP is training-free: beta2 and beta3 are searched on the few-shot val split over the grids
``i * SEARCH_SCALE / SEARCH_STEP`` for i = 0..SEARCH_STEP (public code: 200 x 200 points of
[0.001, 2) x [0.001, 0.1), searched on the test set; our grids start at 0, so zero-shot CLIP
stays a candidate, and ties keep the smaller betas). alpha_t = alpha_s = 0.5 (the public code
multiplies A by 2); lists of alphas are searched too. The chosen values are buffers of the
registered ``calip`` model, so ``--eval-only`` reloads them.

CALIP-FS inserts learnable linear layers before and after the attention and trains them on the
few shots. There is no public code; ours: one pre-projection shared by both modalities gives
queries, keys and values (A_s = Q_s K_t^T, A_t = Q_t K_s^T, attended values V_t and V_s), one
post-projection maps both attended features back; each is a residual linear layer x + W x + b
with W, b starting at zero, so an untrained CALIP-FS is CALIP (weight decay pulls towards it).
Training: the alphas CALIP's search picks on val, betas fixed at FS.TRAIN_BETAS (both attention
terms at full weight; the layers learn their scale), cross-entropy, CoOp's protocol (cfg.OPTIM;
fsclip.adapt.dense.fit_on_dense) with the learning rate (FS.LRS) and the best epoch chosen on
val. The betas are not searched again afterwards: CALIP's grids (beta3 up to 0.1) would undo
what the layers were trained for.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from yacs.config import CfgNode as CN

from fsclip.adapt.dense import DenseSplit, SpatialProjection, add_dense_cfg, check_mode, fit_on_dense, spatial_stem
from fsclip.adapt.search import RunResult, grid_search
from fsclip.adapt.trainer import FrozenFeatureTrainer
from fsclip.backend import TRAINER_REGISTRY


class ResidualLinear(nn.Module):
    """``x -> [x + W_i x + b_i for i < copies]`` with W, b starting at zero (the identity)."""

    def __init__(self, width: int, copies: int = 1) -> None:
        super().__init__()
        self.copies = copies
        self.delta = nn.Linear(width, copies * width)
        nn.init.zeros_(self.delta.weight)
        nn.init.zeros_(self.delta.bias)

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        return tuple(x + d for d in self.delta(x).chunk(self.copies, dim=-1))


class CalipAttention(nn.Module):
    """CALIP's bidirectional attention and logits; with ``learnable``, CALIP-FS's linear layers.

    The chosen alphas and betas are buffers (saved with the model)."""

    def __init__(self, width: int, learnable: bool = False, project: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.project = project or nn.Identity()  # spatial stem -> F_s (fsclip.adapt.dense.SpatialProjection)
        for name, value in (("alpha_t", 0.5), ("alpha_s", 0.5), ("beta2", 0.0), ("beta3", 0.0)):
            self.register_buffer(name, torch.tensor(value))
        self.pre: Optional[ResidualLinear] = ResidualLinear(width, 3) if learnable else None
        self.post: Optional[ResidualLinear] = ResidualLinear(width) if learnable else None

    def _qkv(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        return (x, x, x) if self.pre is None else self.pre(x)

    def _out(self, x: Tensor) -> Tensor:
        return x if self.post is None else self.post(x)[0]

    def terms(self, image: Tensor, stem: Tensor, text: Tensor, alpha_t: Optional[float] = None,
              alpha_s: Optional[float] = None) -> Tuple[Tensor, Tensor, Tensor]:
        """Unscaled ``(f F_t^T, f F_t^a^T, F_v^a F_t^T)``, each ``[B, K]``, for CLIP's image
        features ``[B, D]``, the spatial stem ``[B, L, W]`` and text features ``[K, D]``."""
        a_t = self.alpha_t if alpha_t is None else alpha_t
        a_s = self.alpha_s if alpha_s is None else alpha_s
        f = F.normalize(image.float(), dim=-1)
        fs = F.normalize(self.project(stem.float()), dim=-1)
        ft = F.normalize(text.float(), dim=-1)
        q_s, k_s, v_s = self._qkv(fs)  # [B, L, D] each
        q_t, k_t, v_t = self._qkv(ft)  # [K, D] each
        attn_s = q_s @ k_t.t()  # A = F_s F_t^T  [B, L, K]
        attn_t = q_t @ k_s.transpose(1, 2)  # A^T  [B, K, L]
        ft_a = self._out((attn_t / a_t).softmax(dim=-1) @ v_s)  # F_t^a  [B, K, D]
        fs_a = self._out((attn_s / a_s).softmax(dim=-1) @ v_t)  # F_s^a  [B, L, D]
        fv_a = fs_a.mean(dim=1) + fs_a.amax(dim=1)  # F_v^a  [B, D]
        return f @ ft.t(), torch.einsum("bd,bkd->bk", f, ft_a), fv_a @ ft.t()

    def forward(self, image: Tensor, stem: Tensor, text: Tensor, scale: float,
                betas: Optional[Sequence[float]] = None) -> Tensor:
        """CALIP's logits ``[B, K]`` (betas default to the stored ones)."""
        zs, visual_guided, text_guided = self.terms(image, stem, text)
        b2, b3 = (self.beta2, self.beta3) if betas is None else betas
        return scale * (zs + b2 * visual_guided + b3 * text_guided)


@torch.no_grad()
def search_betas(base: Tensor, term2: Tensor, term3: Tensor, labels: Tensor, beta2s: Sequence[float],
                 beta3s: Sequence[float], chunk: int = 2**24) -> Tuple[float, float, float]:
    """Accuracy-maximising ``(beta2, beta3, accuracy %)`` of ``base + beta2 term2 + beta3 term3``
    (``[M, K]`` each) over the grid; ties keep the first (smallest beta2, then beta3)."""
    b3 = torch.tensor([float(b) for b in beta3s], device=base.device)
    per = max(1, chunk // max(1, base.numel()))
    best = (float(beta2s[0]), float(beta3s[0]), -1.0)
    for b2 in beta2s:
        partial = base + float(b2) * term2
        for j in range(0, len(b3), per):
            logits = partial + b3[j:j + per, None, None] * term3  # [c, M, K]
            acc = (logits.argmax(dim=-1) == labels).float().mean(dim=-1) * 100  # [c]
            top = int(acc.argmax())  # the first of equal maxima
            if float(acc[top]) > best[2]:
                best = (float(b2), float(b3[j + top]), float(acc[top]))
    return best


def beta_grid(scale: float, steps: int) -> list:
    """``steps + 1`` points from 0 to ``scale``."""
    return [i * float(scale) / int(steps) for i in range(int(steps) + 1)]


@TRAINER_REGISTRY.register()
class CALIP(FrozenFeatureTrainer):
    """Training-free CALIP: parameter-free attention, betas (and alphas) chosen on val."""

    PER_CLASS_STATE = False  # betas, alphas (and CALIP-FS's projections) apply to any classes
    backbone_needs = ("clip-internals",)  # F_s from CLIP's attention pool / ln_post and proj

    learnable = False

    @classmethod
    def extend_cfg(cls, cfg) -> None:
        super().extend_cfg(cfg)
        add_dense_cfg(cfg)
        if "CALIP" in cfg.TRAINER:
            return
        cfg.TRAINER.CALIP = CN()
        c = cfg.TRAINER.CALIP
        # F_s in the text width: attnpool (every token through CLIP's attention pool as its own
        # query, as CALIP's code), project (MaskCLIP's value/output projections); ViT: both are
        # ln_post and proj of every last-block token; CALIP_FS also takes learned
        c.VISUAL = "attnpool"
        # Softmax temperatures searched on val (the public code's 0.5 for both)
        c.ALPHA_T = [0.5]
        c.ALPHA_S = [0.5]
        # beta2, beta3 searched on val over i * SCALE / STEP, i = 0..STEP
        c.SEARCH_SCALE = [2.0, 0.1]
        c.SEARCH_STEP = [200, 200]

    def build_method(self) -> None:
        self.visual_mode = check_mode(self.cfg.TRAINER.CALIP.VISUAL, "TRAINER.CALIP.VISUAL", self.learnable)
        self.calip = self.new_module()
        self.register_model("calip", self.calip, None, None)

    def new_module(self) -> CalipAttention:
        return CalipAttention(self.text_weights.shape[1], self.learnable,
                              SpatialProjection(self.visual, self.visual_mode)).to(self.device)

    def stem(self, dense: Tensor) -> Tensor:
        return spatial_stem(self.visual, dense, self.visual_mode)

    def logits(self, module: CalipAttention, image: Tensor, stem: Tensor,
               betas: Optional[Sequence[float]] = None) -> Tensor:
        return module(image, stem, self.text_weights, self.logit_scale, betas)

    def logits_from_dense(self, dense: Tensor) -> Tensor:
        return self.logits(self.calip, self.head_o(dense.float()), self.stem(dense))

    def fit(self) -> None:
        val = DenseSplit(self, "val", self.stem)
        acc = self.search(self.calip, val, "CALIP")
        self.save_model(0, self.output_dir, val_result=acc, model_name="model-best.pth.tar")

    @torch.no_grad()
    def search(self, module: CalipAttention, val: DenseSplit, what: str) -> float:
        """Choose (alpha_t, alpha_s, beta2, beta3) on val for ``module``; store them in its buffers."""
        c = self.cfg.TRAINER.CALIP
        bs = max(1, int(self.cfg.DATALOADER.TEST.BATCH_SIZE))
        beta2s = beta_grid(c.SEARCH_SCALE[0], c.SEARCH_STEP[0])
        beta3s = beta_grid(c.SEARCH_SCALE[1], c.SEARCH_STEP[1])
        module.eval()

        def run(params) -> RunResult:
            terms = []
            for start in range(0, len(val), bs):
                idx = torch.arange(start, min(start + bs, len(val)))
                image, stem, _ = val.batch(idx, torch.zeros_like(idx))
                terms.append(module.terms(image, stem, self.text_weights, params["alpha_t"], params["alpha_s"]))
            base, t2, t3 = (self.logit_scale * torch.cat(t) for t in zip(*terms))
            b2, b3, acc = search_betas(base, t2, t3, val.labels, beta2s, beta3s)
            return RunResult(dict(params, beta2=b2, beta3=b3), acc, 0)

        best = grid_search({"alpha_t": [float(a) for a in c.ALPHA_T], "alpha_s": [float(a) for a in c.ALPHA_S]}, run)
        for name in ("alpha_t", "alpha_s", "beta2", "beta3"):
            getattr(module, name).fill_(best.params[name])
        self.log_choice(what, **best.params, val_accuracy=best.val_acc)
        return best.val_acc


@TRAINER_REGISTRY.register()
class CALIP_FS(CALIP):
    """CALIP-FS: CALIP's attention with learnable linear layers around it, trained on the shots."""

    learnable = True

    @classmethod
    def extend_cfg(cls, cfg) -> None:
        super().extend_cfg(cfg)
        if "FS" in cfg.TRAINER.CALIP:
            return
        cfg.TRAINER.CALIP.FS = CN()
        s = cfg.TRAINER.CALIP.FS
        # (beta2, beta3) of the logits the linear layers are trained for, and kept
        s.TRAIN_BETAS = [1.0, 1.0]
        # Grids searched on val, each run keeping its best epoch; [] -> OPTIM.LR / OPTIM.WEIGHT_DECAY
        s.LRS = []
        s.WDS = []
        # Validate every EVAL_EVERY epochs; stop a run after PATIENCE validations without a gain (0: never)
        s.EVAL_EVERY = 1
        s.PATIENCE = 0

    def fit(self) -> None:
        s = self.cfg.TRAINER.CALIP.FS
        train, val = DenseSplit(self, "train", self.stem), DenseSplit(self, "val", self.stem)
        self.search(self.calip, val, "CALIP (untrained CALIP-FS)")  # the alphas to train with
        betas = [float(b) for b in s.TRAIN_BETAS]

        def make_module() -> CalipAttention:
            module = self.new_module()
            module.load_state_dict(self.calip.state_dict())  # the chosen alphas; identity layers
            return module

        def logits(module: CalipAttention, image: Tensor, stem: Tensor) -> Tensor:
            return self.logits(module, image, stem, betas)

        best, epoch = fit_on_dense(make_module, logits, train, val, self.cfg, s, f"CALIP-FS (betas {betas})")
        self.calip.load_state_dict(best.state)
        with torch.no_grad():  # the betas the layers were trained for
            self.calip.beta2.fill_(betas[0])
            self.calip.beta3.fill_(betas[1])
        self.log_choice("CALIP-FS", lr=best.params["lr"], weight_decay=best.params["weight_decay"], epoch=epoch,
                        alpha_t=float(self.calip.alpha_t), alpha_s=float(self.calip.alpha_s), beta2=betas[0],
                        beta3=betas[1], val_accuracy=best.val_acc)
        self.save_model(epoch, self.output_dir, val_result=best.val_acc, model_name="model-best.pth.tar")
