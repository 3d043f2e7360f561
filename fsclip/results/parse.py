"""Read final results from run logs (``log.txt``) and place every run of an output tree.

A run's result is the last ``* <keyword>: X%`` line after the line ``Finish training`` (after
``=> result`` for test-only logs), the lines the trainer prints. A run folder without
``log.txt``, or whose log has no such line (a crashed or unfinished run), is a missing run: it
is reported, never averaged silently.

The output layouts the scripts write (``scripts/common.sh``), all understood by
:func:`collect_runs` below any root (the output folder, a dataset folder, a method folder):

    <dataset>/<Trainer>/<cfg>_<N>shots[/<variant>...]/seed<S>            few-shot runs
    <dataset>/<Trainer>/<cfg>                                            zero-shot (0 shots)
    evaluation/<dataset>/<Trainer>/<cfg>_<N>shots[_<TAG>]/seed<S>        eval-only re-runs
    evaluation/<target>/<Trainer>/<cfg>_<N>shots_from_<source>/seed<S>   distribution shift
    base2new/train_base|test_new/<dataset>/<Trainer>/<cfg>_<N>shots/seed<S>  base-to-new

Folders above ``<dataset>`` that are none of these markers (``output/ablation_x/<dataset>/...``)
name an experiment: they become a prefix of the method's name.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

TRAIN_END = "Finish training"
TEST_END = "=> result"
LOG_NAME = "log.txt"
_SEED_DIR = re.compile(r"^seed(\d+)$")
# <cfg>_<N>shots, optionally followed by _from_<source> (OOD) or _<TAG> (EVAL_TAG)
_SHOTS_DIR = re.compile(r"^(?:(?P<cfg>.+?)_)?(?P<shots>\d+)shots(?:_from_(?P<source>.+)|_(?P<tag>.+))?$")
EVALUATION = "evaluation"
BASE2NEW = "base2new"
BASE, NEW = "train_base", "test_new"
_MARKERS = {EVALUATION, BASE2NEW, BASE, NEW}

# kinds of runs
FEWSHOT, ZEROSHOT, EVAL, OOD, B2N_BASE, B2N_NEW = "fewshot", "zeroshot", "eval", "ood", "base", "new"


@dataclass
class RunResult:
    """One run: its log path, the value found (None when missing) and why it is missing."""

    path: str
    value: Optional[float]
    problem: str = ""

    @property
    def ok(self) -> bool:
        return self.value is not None


def metric_regex(keyword: str = "accuracy") -> "re.Pattern[str]":
    """``* <keyword>: <number>%`` as the evaluator prints it."""
    return re.compile(rf"\* {re.escape(keyword)}: ([\.\deE+-]+)%")


def _end_signal(test_log: Optional[bool], lines: Sequence[str]) -> str:
    if test_log is not None:
        return TEST_END if test_log else TRAIN_END
    # auto: training logs end with "Finish training"; --eval-only logs print their arguments
    if any(line == TRAIN_END for line in lines):
        return TRAIN_END
    return TEST_END if any(line == "eval_only: True" for line in lines) else TRAIN_END


def parse_log(path: str, keyword: str = "accuracy", test_log: Optional[bool] = False) -> RunResult:
    """The final ``keyword`` value of one log file.

    test_log: False reads after ``Finish training``, True after ``=> result``, None decides per
    log (``=> result`` only for logs of ``--eval-only`` runs).
    """
    if not os.path.isfile(path):
        return RunResult(path, None, f"no {os.path.basename(path)}")
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [line.strip() for line in f]
    signal = _end_signal(test_log, lines)
    regex = metric_regex(keyword)
    value: Optional[float] = None
    seen_signal = False
    for line in lines:
        if line == signal:
            seen_signal = True
        match = regex.search(line)
        if match and seen_signal:
            value = float(match.group(1))
    if value is not None:
        return RunResult(path, value)
    if not seen_signal:
        return RunResult(path, None, f"no '{signal}' line: crashed or unfinished run")
    return RunResult(path, None, f"no '* {keyword}: ...%' line after '{signal}'")


def subdirs(directory: str) -> List[str]:
    """Sorted names of the visible sub-folders of ``directory``."""
    return sorted(d for d in os.listdir(directory)
                  if not d.startswith(".") and os.path.isdir(os.path.join(directory, d)))


def parse_dir(directory: str, keyword: str = "accuracy",
              test_log: Optional[bool] = False) -> List[RunResult]:
    """One :class:`RunResult` per sub-folder of ``directory`` (sorted), from ``<sub>/log.txt``."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory} is not a directory of runs (e.g. seed1, seed2, ...)")
    return [parse_log(os.path.join(directory, sub, LOG_NAME), keyword, test_log)
            for sub in subdirs(directory)]


def summarize(values: Sequence[float], ci95: bool = False) -> Tuple[float, float]:
    """``(mean, spread)``: spread is the population std, or ``1.96 * std / sqrt(n)`` with ci95."""
    if not values:
        raise ValueError("summarize needs at least one value")
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / n)
    return mean, (1.96 * std / math.sqrt(n) if ci95 else std)


def harmonic_mean(base: float, new: float) -> float:
    """CoCoOp's H = 2 * base * new / (base + new) (0 when both are 0)."""
    return 2 * base * new / (base + new) if base + new > 0 else 0.0


# ------------------------------------------------------------------------- results tree
@dataclass
class RunRecord:
    """A run found below an output folder, placed by its path.

    ``name`` is the method's identity, the same in every kind of run (``SAFE/rn50``, or with an
    experiment prefix ``ablation_x/SAFE/rn50``; an eval-only re-run with ``EVAL_TAG=beta0.9``
    is ``SAFE/rn50 (beta0.9)``). ``method`` is ``name`` plus the kind of run where that is not
    few-shot or zero-shot (``SAFE/rn50 (from imagenet)``, ``CoOp/rn50 (base)``), so that one
    (dataset, method, shots) holds one series of seeds.
    """

    dataset: str
    method: str
    shots: int
    seed: Optional[int]
    result: RunResult
    kind: str = FEWSHOT
    name: str = ""
    trainer: str = ""
    config: str = ""
    source: str = ""  # OOD runs: the dataset the model was trained on


def _is_run_dir(path: str, name: str) -> bool:
    return bool(_SEED_DIR.match(name)) or os.path.isfile(os.path.join(path, LOG_NAME))


def _components(path: str) -> List[str]:
    return [p for p in os.path.normpath(os.path.abspath(path)).split(os.sep) if p]


def _place(root_parts: List[str], rel: List[str]) -> dict:
    """Where a run sits: dataset, trainer, config, shots, kind, ... from the absolute folder
    components of the output root and the run's folders below it (seed folder removed)."""
    full = root_parts + rel
    start = len(root_parts)  # index of the first component below the root
    shots_at = next((start + i for i, p in enumerate(rel) if _SHOTS_DIR.match(p)), None)
    if shots_at is None:  # a root inside the run's own folders (e.g. .../SAFE/rn50_16shots)
        shots_at = next((i for i in range(start - 1, -1, -1) if _SHOTS_DIR.match(full[i])), None)
    if shots_at is not None:
        match = _SHOTS_DIR.match(full[shots_at])
        assert match is not None
        trainer_at = shots_at - 1
        config, shots = match.group("cfg") or "", int(match.group("shots"))
        source, tag = match.group("source") or "", match.group("tag") or ""
        variant = full[shots_at + 1:]
    else:  # zero-shot layout: <dataset>/<Trainer>/<cfg>
        trainer_at = len(full) - 2
        config, shots, source, tag, variant = full[-1] if full else "", 0, "", "", []
    dataset_at = trainer_at - 1
    trainer = full[trainer_at] if trainer_at >= 0 else ""
    dataset = full[dataset_at] if dataset_at >= 0 else ""
    marker = full[dataset_at - 1] if dataset_at >= 1 else ""
    prefix = [p for p in full[start:max(dataset_at, start)] if p not in _MARKERS]
    if source:
        kind = OOD
    elif marker == EVALUATION:
        kind = EVAL
    elif marker == BASE:
        kind = B2N_BASE
    elif marker == NEW:
        kind = B2N_NEW
    else:
        kind = ZEROSHOT if shots_at is None else FEWSHOT
    name = "/".join(prefix + [trainer] + ([config] if config else []) + variant)
    if tag:
        name += f" ({tag})"
    elif kind == EVAL:
        name += " (eval)"
    method = name + {OOD: f" (from {source})", B2N_BASE: " (base)", B2N_NEW: " (new)"}.get(kind, "")
    return dict(dataset=dataset, method=method, shots=shots, kind=kind, name=name,
                trainer=trainer, config=config, source=source)


def collect_runs(root: str, keyword: str = "accuracy",
                 test_log: Optional[bool] = None) -> List[RunRecord]:
    """Every run below ``root``: folders named ``seed<S>`` or holding a ``log.txt``."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root} is not a directory (expected an output folder)")
    root_parts = _components(root)
    records = []
    for current, dirnames, _ in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        name = os.path.basename(current)
        if not _is_run_dir(current, name):
            continue
        dirnames[:] = []  # model folders inside a run are not runs
        rel = os.path.relpath(current, root)
        parts = [] if rel == "." else rel.split(os.sep)
        if not parts:  # the root is itself a run folder
            root_parts, parts = root_parts[:-1], root_parts[-1:]
        seed_match = _SEED_DIR.match(parts[-1])
        seed = int(seed_match.group(1)) if seed_match else None
        if seed_match:
            parts = parts[:-1]
        place = _place(root_parts, parts)
        result = parse_log(os.path.join(current, LOG_NAME), keyword, test_log)
        records.append(RunRecord(seed=seed, result=result, **place))
    return records
