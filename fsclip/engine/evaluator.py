"""Classification evaluator with Dassl's printed report."""

from __future__ import annotations

import os.path as osp
from collections import OrderedDict, defaultdict
from typing import Dict, Optional

import numpy as np
import torch

from .registry import EVALUATOR_REGISTRY


class EvaluatorBase:
    def __init__(self, cfg) -> None:
        self.cfg = cfg

    def reset(self) -> None:
        raise NotImplementedError

    def process(self, mo: torch.Tensor, gt: torch.Tensor) -> None:
        raise NotImplementedError

    def evaluate(self) -> "OrderedDict[str, float]":
        raise NotImplementedError


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Unweighted mean F1 over the labels present in ``y_true`` (sklearn's ``average="macro"``
    with ``labels=np.unique(y_true)``), in [0, 1]."""
    scores = []
    for label in np.unique(y_true):
        tp = np.sum((y_pred == label) & (y_true == label))
        fp = np.sum((y_pred == label) & (y_true != label))
        fn = np.sum((y_pred != label) & (y_true == label))
        denom = 2 * tp + fp + fn
        scores.append(0.0 if denom == 0 else 2 * tp / denom)
    return float(np.mean(scores)) if scores else 0.0


@EVALUATOR_REGISTRY.register()
class Classification(EvaluatorBase):
    """Accuracy, error and macro F1; optional per-class accuracy and confusion matrix."""

    def __init__(self, cfg, lab2cname: Optional[Dict[int, str]] = None, **kwargs) -> None:
        super().__init__(cfg)
        self._lab2cname = lab2cname
        self._per_class_res = None
        if cfg.TEST.PER_CLASS_RESULT and lab2cname is None:
            raise ValueError("TEST.PER_CLASS_RESULT needs lab2cname")
        self.reset()

    def reset(self) -> None:
        self._correct = 0
        self._total = 0
        self._y_true: list = []
        self._y_pred: list = []
        if self.cfg.TEST.PER_CLASS_RESULT:
            self._per_class_res = defaultdict(list)

    def process(self, mo: torch.Tensor, gt: torch.Tensor) -> None:
        """``mo``: [B, K] logits or probabilities; ``gt``: [B] labels."""
        pred = mo.max(1)[1]
        matches = pred.eq(gt).float()
        self._correct += int(matches.sum().item())
        self._total += gt.shape[0]
        self._y_true.extend(gt.data.cpu().numpy().tolist())
        self._y_pred.extend(pred.data.cpu().numpy().tolist())
        if self._per_class_res is not None:
            for i, label in enumerate(gt):
                self._per_class_res[int(label.item())].append(int(matches[i].item()))

    def evaluate(self) -> "OrderedDict[str, float]":
        results: "OrderedDict[str, float]" = OrderedDict()
        acc = 100.0 * self._correct / max(self._total, 1)
        err = 100.0 - acc
        f1 = 100.0 * macro_f1(np.asarray(self._y_true), np.asarray(self._y_pred))
        results["accuracy"] = acc
        results["error"] = err
        results["macro_f1"] = f1
        print(
            "=> result\n"
            f"* total: {self._total:,}\n"
            f"* correct: {self._correct:,}\n"
            f"* accuracy: {acc:.1f}%\n"
            f"* error: {err:.1f}%\n"
            f"* macro_f1: {f1:.1f}%"
        )
        if self._per_class_res is not None:
            print("=> per-class result")
            accs = []
            for label in sorted(self._per_class_res):
                res = self._per_class_res[label]
                correct, total = sum(res), len(res)
                cls_acc = 100.0 * correct / total
                accs.append(cls_acc)
                classname = self._lab2cname[label]
                print(f"* class: {label} ({classname})\ttotal: {total:,}\tcorrect: {correct:,}\tacc: {cls_acc:.1f}%")
            mean_acc = float(np.mean(accs))
            print(f"* average: {mean_acc:.1f}%")
            results["perclass_accuracy"] = mean_acc
        if self.cfg.TEST.COMPUTE_CMAT:
            n = int(max(self._y_true + self._y_pred)) + 1
            cmat = torch.zeros(n, n, dtype=torch.float64)
            for t, p in zip(self._y_true, self._y_pred):
                cmat[t, p] += 1
            cmat = cmat / cmat.sum(1, keepdim=True).clamp_min(1)
            save_path = osp.join(self.cfg.OUTPUT_DIR, "cmat.pt")
            torch.save(cmat, save_path)
            print(f"Confusion matrix is saved to {save_path}")
        return results
