"""Validation-driven training and hyperparameter search (the few-shot protocol).

Every choice (learning rate, weight decay, stopping step, Tip-Adapter's alpha/gamma) is made
on the few-shot validation split; the test split is evaluated once, afterwards.

A run whose loss becomes NaN or infinite (or whose weights do) *diverges*: it stops, keeps its
best weights from before, comes back with ``diverged=True`` and is left out of the choice. A
search fails only when every run diverged, with a :class:`TrainingDivergedError` naming the
config keys to change.
"""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

import torch
import torch.nn as nn

from fsclip.errors import UserFacingError


class TrainingDivergedError(UserFacingError, FloatingPointError):
    """Every setting of a search diverged (loss NaN/inf); the message names the keys to change."""


@dataclass
class RunResult:
    """Outcome of one training run: its settings, best validation accuracy and step, weights.

    ``diverged``: the run stopped because its loss (or weights) became NaN/inf; its last
    ``history`` entry is ``(step, nan)`` and ``val_acc``/``step``/``state`` are the best before.
    """

    params: Dict[str, Any]
    val_acc: float
    step: int
    state: Dict[str, torch.Tensor] = field(repr=False, default_factory=dict)
    history: List[tuple] = field(repr=False, default_factory=list)
    diverged: bool = False

    @property
    def diverged_step(self) -> Optional[int]:
        return self.history[-1][0] if self.diverged and self.history else None


def describe(params: Mapping[str, Any]) -> str:
    """``lr=0.0001, weight_decay=0`` (floats in %g form)."""
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


@torch.no_grad()
def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """True when no tensor holds a NaN or an infinity (checked on their sums: one read, no
    temporary as large as the tensor; a sum beyond float range counts as diverged too)."""
    return all(bool(torch.isfinite(t.sum())) for t in tensors)


def diverged_line(params: Mapping[str, Any], step: int) -> str:
    return (f"* diverged: loss or weights NaN/inf at step {step} ({describe(params)}); "
            "this setting stops and is left out of the choice")


def train_with_early_stopping(module: nn.Module, step_fn: Callable[[int], torch.Tensor],
                              eval_fn: Callable[[], float], optimizer: torch.optim.Optimizer,
                              scheduler: Optional[Any], iters: int, eval_every: int,
                              patience: int = 0, params: Optional[Dict[str, Any]] = None,
                              log: Callable[[str], None] = print, score_initial: bool = True,
                              ties: str = "first", eval_offset: int = 0) -> RunResult:
    """Run ``iters`` steps; every ``eval_every`` steps (and at the end) evaluate on validation and
    keep the best weights. ``patience > 0`` stops after that many evaluations without a gain.

    ``step_fn(i)`` returns the loss of step i; the optimizer and scheduler step here. The step
    counted for the initial weights is 0 (evaluated first, so a run can never end worse than
    where it started). A NaN/inf loss (checked before the update) or NaN/inf weights (checked
    before each evaluation) end the run as diverged (see the module docstring); the module is
    left with its best weights either way.

    The defaults are the project's rule; other projects' loops are reproduced with:
    ``score_initial=False``: the initial weights are not a candidate (they stay the fallback of
    a run diverging before its first evaluation); ``ties="last"``: an equal val accuracy moves
    the choice to the later step (``>=``; ``"first"``: ``>``); ``eval_offset=r``: evaluate after
    the steps i with ``i % eval_every == r % eval_every`` and not also after the last step
    unless it is one of them (``r=1, eval_every=100``: after steps 1, 101, 201, ...).
    """
    if ties not in ("first", "last"):
        raise ValueError(f'ties must be "first" or "last", got {ties!r}')
    offset = int(eval_offset) % max(1, int(eval_every))

    def evaluates(i: int) -> bool:
        return i % eval_every == offset if eval_offset else (i % eval_every == 0 or i == iters)

    def better(acc: float, best: float) -> bool:
        return acc >= best if ties == "last" else acc > best

    best_acc = eval_fn() if score_initial else -math.inf
    best_step = 0
    best_state = copy.deepcopy(module.state_dict())
    history: List[tuple] = [(0, best_acc)] if score_initial else []
    since_best = 0
    diverged = False
    for i in range(1, iters + 1):
        module.train()
        loss = step_fn(i)
        if not torch.isfinite(loss):
            diverged = True
        else:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            if evaluates(i) and not all_finite(module.parameters()):
                diverged = True
        if diverged:
            history.append((i, math.nan))
            log(diverged_line(params or {}, i))
            break
        if evaluates(i):
            module.eval()
            acc = eval_fn()
            history.append((i, acc))
            if better(acc, best_acc):
                best_acc, best_step, since_best = acc, i, 0
                best_state = copy.deepcopy(module.state_dict())
            else:
                since_best += 1
                if patience and since_best >= patience:
                    break
    module.load_state_dict(best_state)
    module.eval()
    if best_acc == -math.inf:  # no evaluation ran (diverged first): score the fallback
        best_acc = eval_fn()
    return RunResult(dict(params or {}), best_acc, best_step, best_state, history, diverged)


def choose_best(results: Sequence[RunResult], keys: Optional[Mapping[str, str]] = None,
                log: Optional[Callable[[str], None]] = print) -> RunResult:
    """The result with the best validation accuracy (ties: the first), diverged runs left out;
    one ``* search:`` line per result when ``log`` is given.

    Raises :class:`TrainingDivergedError` when every run diverged; ``keys`` maps a setting's
    name to the config key it comes from (e.g. ``{"lr": "TRAINER.SAFE.LRS"}``) for that message.
    """
    if not results:
        raise ValueError("empty search grid")
    best: Optional[RunResult] = None
    for result in results:
        if log is not None:
            log_result(result, log)
        if not result.diverged and (best is None or result.val_acc > best.val_acc):
            best = result
    if best is None:
        names = list(results[0].params)
        where = [(keys or {}).get(n, n) for n in names] or ["the learning rate"]
        tried = "; ".join(f"{describe(r.params)} at step {r.diverged_step}" for r in results)
        raise TrainingDivergedError(
            f"training diverged (loss or weights became NaN/inf) for every setting tried ({tried}): "
            f"change {' / '.join(where)} (a smaller learning rate usually fixes this)")
    return best


def grid_search(grid: Dict[str, Sequence[Any]], run: Callable[[Dict[str, Any]], RunResult],
                log: Callable[[str], None] = print, keys: Optional[Mapping[str, str]] = None) -> RunResult:
    """Run every combination of ``grid`` and keep the best validation accuracy (ties: first).

    Diverged runs are left out; :class:`TrainingDivergedError` (naming ``keys[name]`` for each
    grid name, or the names) when every run diverged.
    """
    results = []
    for params in grid_settings(grid):
        results.append(run(params))
        log_result(results[-1], log)
    return choose_best(results, keys, log=None)


def log_result(result: RunResult, log: Callable[[str], None] = print) -> None:
    """The ``* search:`` line of one run: its settings and best val accuracy, or that it diverged."""
    if result.diverged:
        log(f"* search: {describe(result.params)}: diverged at step {result.diverged_step} "
            "(loss or weights NaN/inf), left out")
    else:
        log(f"* search: {describe(result.params)}: val accuracy {result.val_acc:.2f}% (step {result.step})")


def grid_settings(grid: Dict[str, Sequence[Any]]) -> List[Dict[str, Any]]:
    """Every combination of ``grid`` as a list of dicts, in ``itertools.product`` order."""
    names = list(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[k] for k in names))]
