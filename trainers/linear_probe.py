"""Linear probe (CLIP paper, App. A3) with CoOp's few-shot protocol (KaiyangZhou/CoOp, lpclip/):
logistic regression on CLIP's image embeddings, its inverse regularisation C chosen on the
few-shot val split.

  logits   = W f + b                 f: CLIP's image embedding, not normalised
  fit      min_{W, b}  C * sum_i CE(W f_i + b, y_i) + 0.5 * ||W||^2      (scikit-learn's objective;
           multinomial, bias not penalised; L-BFGS, at most MAX_ITER iterations)
  C        a coarse pass over C_GRID = {1e6, 1e4, 1e2, 1, 1e-2, 1e-4, 1e-6} (ties: the first, as
           numpy's argmax), then SEARCH_STEPS = 8 bisection-like steps in log10 space starting from
           [0.1 C, 10 C]: fit both ends, keep the better (ties: the left, smaller C) and halve the
           interval towards it. The model is the one kept at the last step, as in CoOp (even if an
           earlier C scored higher on val).

Features: CoOp extracts each training image once with the test transform (centre crop); so do
we by default. TRAINER.LINEAR_PROBE.AUGMENTED_VIEWS True trains on every cached augmented
view instead (TRAINER.FEATURES.TRAIN_VIEWS samples per image). CoOp runs scikit-learn; we
solve the same objective in torch (``fsclip.adapt.linear.logistic_regression``, float64) and
test that the chosen C and the predictions match scikit-learn's on a set where both converge;
where the val curve is flat, one val prediction flipping between the two solvers' stopping
points can move the choice (measured in the README, ``benchmarks/linear_probe_sklearn.py``),
and a fit stopping at MAX_ITER before TOL is noted in the log. For two classes
scikit-learn fits one binary weight vector, which equals our (multinomial) fit at C / 2.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List

import torch
import torch.nn as nn
from torch import Tensor
from yacs.config import CfgNode as CN

from fsclip.adapt.linear import accuracy, logistic_regression
from fsclip.adapt.search import RunResult, grid_search
from fsclip.adapt.trainer import FrozenFeatureTrainer
from fsclip.backend import TRAINER_REGISTRY


class LogisticHead(nn.Module):
    """``W f + b`` on unnormalised features, with the chosen C kept as a buffer."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("weight", torch.zeros(num_classes, dim))  # W [K, D]
        self.register_buffer("bias", torch.zeros(num_classes))  # b [K]
        self.register_buffer("C", torch.tensor(0.0))

    def forward(self, f: Tensor) -> Tensor:
        return f.float() @ self.weight.t() + self.bias  # [B, K]


def coop_c_search(run: Callable[[float], RunResult], grid: List[float], steps: int,
                  log: Callable[[str], None] = print) -> RunResult:
    """CoOp's search of C (see the module docstring); ``run(C)`` fits and scores one C on val."""
    memo: Dict[float, RunResult] = {}

    def fit(c: float) -> RunResult:
        if c not in memo:
            memo[c] = run(c)
        return memo[c]

    best = grid_search({"C": grid}, lambda p: fit(p["C"]), log=log)  # coarse pass
    c_left, c_right = 0.1 * best.params["C"], 10.0 * best.params["C"]
    for step in range(steps):
        left, right = fit(c_left), fit(c_right)
        mid = 0.5 * (math.log10(c_left) + math.log10(c_right))
        if left.val_acc < right.val_acc:
            best, lo, hi = right, mid, math.log10(c_right)
        else:
            best, lo, hi = left, math.log10(c_left), mid
        log(f"* search step {step + 1}: C={c_left:.4g} ({left.val_acc:.2f}%) vs C={c_right:.4g} "
            f"({right.val_acc:.2f}%): keep C={best.params['C']:.4g}")
        c_left, c_right = 10.0 ** lo, 10.0 ** hi
    return best


@TRAINER_REGISTRY.register()
class LinearProbe(FrozenFeatureTrainer):
    """Logistic regression on frozen CLIP image embeddings, C chosen on val."""

    PER_CLASS_STATE = True  # the logistic head has one row per class (fsclip.model_dir)

    @classmethod
    def extend_cfg(cls, cfg) -> None:
        super().extend_cfg(cfg)
        if "LINEAR_PROBE" in cfg.TRAINER:
            return
        p = cfg.TRAINER.LINEAR_PROBE = CN()
        # Train on every cached augmented view (True) or, as CoOp, one test-transform view per image
        p.AUGMENTED_VIEWS = False
        # Coarse values of C, then bisection-like steps around the best (CoOp's search)
        p.C_GRID = [1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6]
        p.SEARCH_STEPS = 8
        # L-BFGS iterations per fit and tolerance on the largest gradient entry (scikit-learn's max_iter=1000, tol=1e-4 as CoOp runs it)
        p.MAX_ITER = 1000
        p.TOL = 1e-4

    def build_method(self) -> None:
        self.probe = LogisticHead(self.text_weights.shape[1], len(self.classnames)).to(self.device)
        self.register_model("linear_probe", self.probe, None, None)

    def logits_from_dense(self, dense: Tensor) -> Tensor:
        return self.probe(self.head_o(dense.float()))

    def training_set(self):
        """``(features [N', D], labels [N'])`` the regression is fitted on."""
        labels = self.labels("train")
        if not self.cfg.TRAINER.LINEAR_PROBE.AUGMENTED_VIEWS:
            return self.global_features("train", augmented=False), labels
        views = self.global_features("train")  # [N, V, D]
        return views.flatten(0, 1), labels.repeat_interleave(views.shape[1])

    def fit(self) -> None:
        p = self.cfg.TRAINER.LINEAR_PROBE
        x, y = self.training_set()
        val_x, val_y = self.global_features("val"), self.labels("val")
        k = len(self.classnames)

        unconverged: List[float] = []

        def run(c: float) -> RunResult:
            report: Dict[str, object] = {}
            w, b = logistic_regression(x, y, k, c, int(p.MAX_ITER), float(p.TOL), report=report)
            if not report["converged"]:
                unconverged.append(c)
            acc = accuracy(val_x @ w.t() + b, val_y)
            return RunResult({"C": c}, acc, 0, {"weight": w, "bias": b, "C": torch.tensor(c)})

        print(f"Linear probe: {x.shape[0]} training samples of dimension {x.shape[1]}, "
              f"{'augmented views' if p.AUGMENTED_VIEWS else 'one test-transform view per image'}")
        best = coop_c_search(run, [float(c) for c in p.C_GRID], int(p.SEARCH_STEPS))
        if unconverged:
            print(f"Note: L-BFGS reached TRAINER.LINEAR_PROBE.MAX_ITER {p.MAX_ITER} before TOL {p.TOL:g} at C = "
                  f"{', '.join(f'{c:.4g}' for c in unconverged)} (scikit-learn's ConvergenceWarning; usual at "
                  "large C on separable few-shot sets, where the objective is flat)")
        self.probe.load_state_dict(best.state)
        self.log_choice("LinearProbe", C=best.params["C"], val_accuracy=best.val_acc)
        self.save_model(0, self.output_dir, val_result=best.val_acc, model_name="model-best.pth.tar")
