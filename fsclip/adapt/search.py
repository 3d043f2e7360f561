"""Validation-driven training and hyperparameter search (the few-shot protocol).

Every choice (learning rate, weight decay, stopping step, Tip-Adapter's alpha/gamma) is made
on the few-shot validation split; the test split is evaluated once, afterwards.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn


@dataclass
class RunResult:
    """Outcome of one training run: its settings, best validation accuracy and step, weights."""

    params: Dict[str, Any]
    val_acc: float
    step: int
    state: Dict[str, torch.Tensor] = field(repr=False, default_factory=dict)
    history: List[tuple] = field(repr=False, default_factory=list)


def train_with_early_stopping(module: nn.Module, step_fn: Callable[[int], torch.Tensor],
                              eval_fn: Callable[[], float], optimizer: torch.optim.Optimizer,
                              scheduler: Optional[Any], iters: int, eval_every: int,
                              patience: int = 0, params: Optional[Dict[str, Any]] = None) -> RunResult:
    """Run ``iters`` steps; every ``eval_every`` steps (and at the end) evaluate on validation and
    keep the best weights. ``patience > 0`` stops after that many evaluations without a gain.

    ``step_fn(i)`` returns the loss of step i; the optimizer and scheduler step here. The step
    counted for the initial weights is 0 (evaluated first, so a run can never end worse than
    where it started).
    """
    best_acc = eval_fn()
    best_step = 0
    best_state = copy.deepcopy(module.state_dict())
    history = [(0, best_acc)]
    since_best = 0
    for i in range(1, iters + 1):
        module.train()
        loss = step_fn(i)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"Loss is infinite or NaN at step {i} (settings {params})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if i % eval_every == 0 or i == iters:
            module.eval()
            acc = eval_fn()
            history.append((i, acc))
            if acc > best_acc:
                best_acc, best_step, since_best = acc, i, 0
                best_state = copy.deepcopy(module.state_dict())
            else:
                since_best += 1
                if patience and since_best >= patience:
                    break
    module.load_state_dict(best_state)
    module.eval()
    return RunResult(dict(params or {}), best_acc, best_step, best_state, history)


def grid_search(grid: Dict[str, Sequence[Any]], run: Callable[[Dict[str, Any]], RunResult],
                log: Callable[[str], None] = print) -> RunResult:
    """Run every combination of ``grid`` and keep the best validation accuracy (ties: first)."""
    keys = list(grid)
    best: Optional[RunResult] = None
    for values in itertools.product(*(grid[k] for k in keys)):
        params = dict(zip(keys, values))
        result = run(params)
        shown = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
        log(f"* search: {shown}: val accuracy {result.val_acc:.2f}% (step {result.step})")
        if best is None or result.val_acc > best.val_acc:
            best = result
    assert best is not None, "empty search grid"
    return best
