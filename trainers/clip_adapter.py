"""CLIP-Adapter (Gao et al., 2021): a bottleneck MLP on CLIP's frozen image feature, blended with
the feature by a residual ratio, classified by the frozen text classifier.

  A(f)     = ReLU(W_2 ReLU(W_1 f))              W_1 [D/4, D], W_2 [D, D/4], no biases
  f'       = ratio * A(f) + (1 - ratio) * f      ratio 0.2
  logits   = s * normalize(f') W_c^T             s CLIP's logit scale, W_c the text classifier

f is CLIP's unnormalised image feature (AttnPool_O(G(x))), as in the reference; ratio 0 gives
zero-shot CLIP exactly. TRAINER.CLIP_ADAPTER.RATIO is also read at evaluation.

Training. The paper trains 200 epochs with batch 32; the public code is a CoOp trainer that
takes its optimizer from CoOp's configs and ships none of its own. We therefore use CoOp's
recipe: SGD (momentum 0.9, weight decay 5e-4), cosine schedule, one warmup epoch at a constant
1e-5, 200 epochs of batch 32 (each image a random cached view per epoch; the schedule steps per
batch), and choose on the few-shot val split: the epoch (val checked after every epoch, best
kept) and the learning rate from LRS = {2e-3 (CoOp's), 1e-2 (LP++'s re-implementation)}.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor
from yacs.config import CfgNode as CN

from fsclip.adapt.linear import ViewSampler, accuracy, fit_minibatch, warmup_cosine
from fsclip.adapt.search import RunResult, grid_search
from fsclip.adapt.trainer import FrozenFeatureTrainer
from fsclip.backend import TRAINER_REGISTRY


class VisualAdapter(nn.Module):
    """A(f): Linear(D, D/r) -> ReLU -> Linear(D/r, D) -> ReLU, no biases."""

    def __init__(self, dim: int, reduction: int = 4) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(dim, dim // reduction, bias=False), nn.ReLU(),
                                nn.Linear(dim // reduction, dim, bias=False), nn.ReLU())

    def forward(self, f: Tensor) -> Tensor:
        return self.fc(f)

    def blend(self, f: Tensor, ratio: float) -> Tensor:
        """f' = ratio * A(f) + (1 - ratio) * f, [B, D]."""
        f = f.float()
        return ratio * self(f) + (1.0 - ratio) * f


@TRAINER_REGISTRY.register()
class CLIPAdapter(FrozenFeatureTrainer):
    """Residual bottleneck adapter on the image feature; text classifier frozen."""

    PER_CLASS_STATE = False  # an image-feature MLP; W_c is rebuilt from this run's classes (fsclip.model_dir)

    @classmethod
    def extend_cfg(cls, cfg) -> None:
        super().extend_cfg(cfg)
        if "CLIP_ADAPTER" in cfg.TRAINER:
            return
        a = cfg.TRAINER.CLIP_ADAPTER = CN()
        # Residual ratio of the adapter's output (also read at evaluation)
        a.RATIO = 0.2
        # Bottleneck reduction D -> D / REDUCTION
        a.REDUCTION = 4
        # Epochs and batch size (the paper's), SGD as CoOp (momentum, weight decay)
        a.EPOCHS = 200
        a.BATCH_SIZE = 32
        a.MOMENTUM = 0.9
        a.WEIGHT_DECAY = 5e-4
        # One warmup epoch at a constant WARMUP_LR (CoOp's), then cosine
        a.WARMUP_EPOCHS = 1
        a.WARMUP_LR = 1e-5
        # Learning rates tried on val; stop a run after PATIENCE epochs without val gain (0: never)
        a.LRS = [2e-3, 1e-2]
        a.PATIENCE = 0

    def build_method(self) -> None:
        a = self.cfg.TRAINER.CLIP_ADAPTER
        self.adapter = VisualAdapter(self.text_weights.shape[1], int(a.REDUCTION)).to(self.device)
        self.register_model("clip_adapter", self.adapter, None, None)

    def adapter_logits(self, adapter: VisualAdapter, f: Tensor) -> Tensor:
        return self.clip_logits(adapter.blend(f, float(self.cfg.TRAINER.CLIP_ADAPTER.RATIO)))

    def logits_from_dense(self, dense: Tensor) -> Tensor:
        return self.adapter_logits(self.adapter, self.head_o(dense.float()))

    def fit(self) -> None:
        a = self.cfg.TRAINER.CLIP_ADAPTER
        views, labels = self.global_features("train"), self.labels("train")
        val_x, val_y = self.global_features("val"), self.labels("val")
        seed = max(self.cfg.SEED, 0)
        per_epoch = ViewSampler(views, labels, int(a.BATCH_SIZE), torch.Generator()).steps_per_epoch()
        iters = int(a.EPOCHS) * per_epoch

        def run(params) -> RunResult:
            torch.manual_seed(seed)
            adapter = VisualAdapter(views.shape[-1], int(a.REDUCTION)).to(self.device)
            sampler = ViewSampler(views, labels, int(a.BATCH_SIZE), torch.Generator().manual_seed(seed))
            opt = torch.optim.SGD(adapter.parameters(), lr=params["lr"], momentum=float(a.MOMENTUM),
                                  weight_decay=float(a.WEIGHT_DECAY))
            sched = warmup_cosine(opt, iters - int(a.WARMUP_EPOCHS) * per_epoch, int(a.WARMUP_EPOCHS) * per_epoch,
                                  "constant", float(a.WARMUP_LR))

            def evaluate() -> float:
                with torch.no_grad():
                    return accuracy(self.adapter_logits(adapter, val_x), val_y)

            return fit_minibatch(adapter, lambda f: self.adapter_logits(adapter, f), [sampler], opt, sched, iters,
                                 per_epoch, evaluate, int(a.PATIENCE), params)

        print(f"CLIP-Adapter: {views.shape[0]} images x {views.shape[1]} views, {a.EPOCHS} epochs of "
              f"{per_epoch} steps (batch {a.BATCH_SIZE}), ratio {a.RATIO:g}")
        best = grid_search({"lr": [float(x) for x in a.LRS]}, run, keys={"lr": "TRAINER.CLIP_ADAPTER.LRS"})
        self.adapter.load_state_dict(best.state)
        self.log_choice("CLIP-Adapter", lr=best.params["lr"], epoch=best.step // per_epoch, val_accuracy=best.val_acc)
        self.save_model(max(best.step // per_epoch - 1, 0), self.output_dir, val_result=best.val_acc,
                        model_name="model-best.pth.tar")

