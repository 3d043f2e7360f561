"""Read final results from run logs (``log.txt``) and summarise them; CoOp's parse_test_res.

A run's result is the last ``* <keyword>: X%`` line after the line ``Finish training`` (after
``=> result`` for test-only logs), the lines the trainer prints. A run folder without
``log.txt``, or whose log has no such line (a crashed or unfinished run), is reported as
missing and left out of the mean, never averaged silently.

Command line (``parse_test_res.py`` and ``fsclip-parse``), CoOp's arguments plus ``--table``::

    parse_test_res.py DIR                  # DIR/*/log.txt (e.g. the seed folders): mean +- std
    parse_test_res.py DIR --ci95           # +- 1.96 * std / sqrt(n) instead of the std
    parse_test_res.py DIR --test-log       # results of --eval-only runs
    parse_test_res.py DIR --multi-exp      # every sub-folder of DIR is one experiment
    parse_test_res.py DIR --keyword macro_f1
    parse_test_res.py output --table       # a method x shots table per dataset
    parse_test_res.py BASE --base2new NEW  # CoCoOp's base-to-new: base, new, harmonic mean

The standard deviation is the population one (numpy's default, as CoOp). ``--table`` reads
every run below DIR laid out as ``<dataset>/<Trainer>/<cfg>_<N>shots/[...]/seed<S>`` (runs
without a ``_<N>shots`` folder, e.g. ``<dataset>/ZeroshotCLIP/<cfg>``, count as 0 shots) and
takes each log's result after ``Finish training``, or after ``=> result`` for logs of
``--eval-only`` runs.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

TRAIN_END = "Finish training"
TEST_END = "=> result"
LOG_NAME = "log.txt"
_SEED_DIR = re.compile(r"^seed(\d+)$")
_SHOTS_DIR = re.compile(r"^(?:(?P<cfg>.+)_)?(?P<shots>\d+)shots$")


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


def _subdirs(directory: str) -> List[str]:
    return sorted(d for d in os.listdir(directory)
                  if not d.startswith(".") and os.path.isdir(os.path.join(directory, d)))


def parse_dir(directory: str, keyword: str = "accuracy",
              test_log: Optional[bool] = False) -> List[RunResult]:
    """One :class:`RunResult` per sub-folder of ``directory`` (sorted), from ``<sub>/log.txt``."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory} is not a directory of runs (e.g. seed1, seed2, ...)")
    return [parse_log(os.path.join(directory, sub, LOG_NAME), keyword, test_log)
            for sub in _subdirs(directory)]


def summarize(values: Sequence[float], ci95: bool = False) -> Tuple[float, float]:
    """``(mean, spread)``: spread is the population std, or ``1.96 * std / sqrt(n)`` with ci95."""
    if not values:
        raise ValueError("summarize needs at least one value")
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / n)
    return mean, (1.96 * std / math.sqrt(n) if ci95 else std)


def report_dir(directory: str, keyword: str = "accuracy", test_log: Optional[bool] = False,
               ci95: bool = False, out: Callable[[str], None] = print
               ) -> Tuple[Optional[float], Optional[float], List[RunResult]]:
    """Print CoOp's per-file lines and summary for one directory of runs.

    Returns ``(mean, spread, results)``; mean and spread are None when no run has a result.
    """
    out(f"Parsing files in {directory}")
    results = parse_dir(directory, keyword, test_log)
    found = [r for r in results if r.ok]
    for r in results:
        if r.ok:
            out(f"file: {r.path}. {keyword}: {r.value:.2f}%. ")
        else:
            out(f"MISSING: {r.path}: {r.problem}")
    if not found:
        out(f"Nothing found in {directory}")
        return None, None, results
    mean, spread = summarize([r.value for r in found], ci95)  # type: ignore[misc]
    out("===")
    out(f"Summary of directory: {directory}")
    out(f"* {keyword}: {mean:.2f}% +- {spread:.2f}%")
    if len(found) < len(results):
        out(f"* runs: {len(found)} of {len(results)} ({len(results) - len(found)} missing, "
            "not in the mean)")
    out("===")
    return mean, spread, results


def report_multi_exp(directory: str, keyword: str = "accuracy", test_log: Optional[bool] = False,
                     ci95: bool = False, out: Callable[[str], None] = print
                     ) -> Tuple[Optional[float], List[RunResult]]:
    """Every sub-folder of ``directory`` is an experiment of runs; prints a table and the average.

    Returns the average over experiments (None when nothing was found) and every run's result.
    """
    from tabulate import tabulate

    rows = []
    means = []
    every: List[RunResult] = []
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory} is not a directory of experiments")
    for sub in _subdirs(directory):
        mean, spread, results = report_dir(os.path.join(directory, sub), keyword, test_log, ci95, out)
        every.extend(results)
        runs = f"{sum(r.ok for r in results)}/{len(results)}"
        if mean is None:
            rows.append([sub, "missing", "", runs])
            continue
        means.append(mean)
        rows.append([sub, f"{mean:.2f}", f"{spread:.2f}", runs])
    spread_name = "ci95" if ci95 else "std"
    out(tabulate(rows, headers=["experiment", f"{keyword} (%)", spread_name, "runs"],
                 tablefmt="github", disable_numparse=True))
    if not means:
        out(f"Nothing found in {directory}")
        return None, every
    average = sum(means) / len(means)
    out("Average performance")
    out(f"* {keyword}: {average:.2f}%")
    return average, every


def harmonic_mean(base: float, new: float) -> float:
    """CoCoOp's H = 2 * base * new / (base + new) (0 when both are 0)."""
    return 2 * base * new / (base + new) if base + new > 0 else 0.0


def report_base2new(base_dir: str, new_dir: str, keyword: str = "accuracy", ci95: bool = False,
                    out: Callable[[str], None] = print) -> Optional[Tuple[float, float, float]]:
    """CoCoOp's base-to-new summary: the runs of ``base_dir`` (trained on the base classes and
    tested on them) and of ``new_dir`` (the same models evaluated on the new classes, eval-only
    logs), each as :func:`report_dir` prints it, then ``* base``, ``* new`` and ``* H`` lines.

    H is the harmonic mean of the two mean accuracies (as CoCoOp reports it). Returns
    ``(base, new, H)``, or None when either side has no result.
    """
    base, _, _ = report_dir(base_dir, keyword, None, ci95, out)
    new, _, _ = report_dir(new_dir, keyword, None, ci95, out)
    if base is None or new is None:
        out("Base-to-new: " + ("no base result" if base is None else "no new result"))
        return None
    h = harmonic_mean(base, new)
    out("=== base-to-new")
    out(f"* base: {base:.2f}%")
    out(f"* new: {new:.2f}%")
    out(f"* H: {h:.2f}%")
    return base, new, h


# ------------------------------------------------------------------------- results tree
@dataclass
class RunRecord:
    """A run found below an output folder, placed by its path."""

    dataset: str
    method: str
    shots: int
    seed: Optional[int]
    result: RunResult


def _is_run_dir(path: str, name: str) -> bool:
    return bool(_SEED_DIR.match(name)) or os.path.isfile(os.path.join(path, LOG_NAME))


def _place(root: str, parts: List[str]) -> Tuple[str, str, int]:
    """``(dataset, method, shots)`` from a run folder's path below root (seed part removed)."""
    root_name = os.path.basename(os.path.normpath(root))
    parent_name = os.path.basename(os.path.dirname(os.path.normpath(root)))
    shots_at = next((i for i, p in enumerate(parts) if _SHOTS_DIR.match(p)), None)
    if shots_at is None:  # zero-shot style: <dataset>/<Trainer>/<cfg>
        if len(parts) >= 3:
            return parts[0], "/".join(parts[1:]), 0
        return root_name, "/".join(parts) or root_name, 0
    match = _SHOTS_DIR.match(parts[shots_at])
    assert match is not None
    shots = int(match.group("shots"))
    if shots_at >= 2:
        dataset, trainer = "/".join(parts[: shots_at - 1]), parts[shots_at - 1]
    elif shots_at == 1:
        dataset, trainer = root_name, parts[0]
    else:
        dataset, trainer = parent_name, root_name
    method = "/".join([trainer] + ([match.group("cfg")] if match.group("cfg") else [])
                      + parts[shots_at + 1:])
    return dataset, method, shots


def collect_runs(root: str, keyword: str = "accuracy",
                 test_log: Optional[bool] = None) -> List[RunRecord]:
    """Every run below ``root``: folders named ``seed<S>`` or holding a ``log.txt``."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root} is not a directory (expected an output folder)")
    records = []
    for current, dirnames, _ in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        name = os.path.basename(current)
        if not _is_run_dir(current, name):
            continue
        dirnames[:] = []  # model folders inside a run are not runs
        rel = os.path.relpath(current, root)
        parts = [] if rel == "." else rel.split(os.sep)
        seed_match = _SEED_DIR.match(parts[-1]) if parts else None
        seed = int(seed_match.group(1)) if seed_match else None
        if seed_match:
            parts = parts[:-1]
        dataset, method, shots = _place(root, parts)
        result = parse_log(os.path.join(current, LOG_NAME), keyword, test_log)
        records.append(RunRecord(dataset, method, shots, seed, result))
    return records


def _cell(results: List[RunResult], ci95: bool) -> str:
    values = [r.value for r in results if r.ok]
    if not values:
        return f"missing (0/{len(results)})"
    mean, spread = summarize(values, ci95)  # type: ignore[arg-type]
    text = f"{mean:.2f}" if len(values) == 1 else f"{mean:.2f} +- {spread:.2f}"
    return text if len(values) == len(results) else f"{text} ({len(values)}/{len(results)})"


def shots_tables(records: Iterable[RunRecord], ci95: bool = False, keyword: str = "accuracy",
                 tablefmt: str = "github") -> str:
    """One method x shots table per dataset (mean +- spread over seeds, with n/total when runs
    are missing), then, for several datasets, the average over datasets of the cells that every
    dataset has complete, and the list of missing runs."""
    from tabulate import tabulate

    records = list(records)
    grouped: Dict[str, Dict[Tuple[str, int], List[RunResult]]] = defaultdict(lambda: defaultdict(list))
    for rec in records:
        grouped[rec.dataset][rec.method, rec.shots].append(rec.result)
    spread_name = "ci95" if ci95 else "std"
    blocks = []
    for dataset in sorted(grouped):
        cells = grouped[dataset]
        methods = sorted({m for m, _ in cells})
        shots = sorted({s for _, s in cells})
        rows = [[m] + [_cell(cells[m, s], ci95) if (m, s) in cells else "" for s in shots]
                for m in methods]
        blocks.append(f"{dataset}: {keyword} (%), mean +- {spread_name} over seeds\n"
                      + tabulate(rows, headers=["method"] + [f"{s} shots" for s in shots],
                                 tablefmt=tablefmt, disable_numparse=True))
    if len(grouped) > 1:
        complete: Dict[Tuple[str, int], List[float]] = defaultdict(list)
        for dataset, cells in grouped.items():
            for key, results in cells.items():
                if all(r.ok for r in results):
                    complete[key].append(summarize([r.value for r in results])[0])  # type: ignore[misc]
        keys = {k: v for k, v in complete.items() if len(v) == len(grouped)}
        if keys:
            methods = sorted({m for m, _ in keys})
            shots = sorted({s for _, s in keys})
            rows = [[m] + [f"{sum(keys[m, s]) / len(keys[m, s]):.2f}" if (m, s) in keys else ""
                           for s in shots] for m in methods]
            blocks.append(f"Average over {len(grouped)} datasets: {keyword} (%)\n"
                          + tabulate(rows, headers=["method"] + [f"{s} shots" for s in shots],
                                     tablefmt=tablefmt, disable_numparse=True))
    missing = [rec.result for rec in records if not rec.result.ok]
    if missing:
        blocks.append("Missing runs (not in the means):\n"
                      + "\n".join(f"  {r.path}: {r.problem}" for r in missing))
    return "\n\n".join(blocks)


# ------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Summarise final results of runs from their log.txt (CoOp's parse_test_res)")
    parser.add_argument("directory", type=str, help="path to directory")
    parser.add_argument("--ci95", action="store_true", help="compute 95%% confidence interval")
    parser.add_argument("--test-log", action="store_true", help="parse test-only logs")
    parser.add_argument("--multi-exp", action="store_true", help="parse multiple experiments")
    parser.add_argument("--keyword", default="accuracy", type=str,
                        help="which keyword to extract")
    parser.add_argument("--table", action="store_true",
                        help="method x shots tables for an output/<dataset>/<Trainer>/"
                             "<cfg>_<N>shots/.../seed<S> tree")
    parser.add_argument("--base2new", metavar="NEW_DIR", default="",
                        help="DIR holds runs trained and tested on the base classes, NEW_DIR the "
                             "same runs evaluated on the new classes: print base, new and H")
    parser.add_argument("--tablefmt", default="github", help="tabulate format for tables")
    parser.add_argument("--strict", action="store_true",
                        help="exit with status 1 when a run has no result")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    test_log: Optional[bool] = args.test_log
    try:
        if args.base2new:
            summary = report_base2new(args.directory, args.base2new, args.keyword, args.ci95)
            return 1 if summary is None else 0
        if args.table:
            records = collect_runs(args.directory, args.keyword, True if args.test_log else None)
            if not records:
                print(f"Nothing found in {args.directory}")
                return 1
            print(shots_tables(records, args.ci95, args.keyword, args.tablefmt))
            missing = any(not rec.result.ok for rec in records)
        elif args.multi_exp:
            average, results = report_multi_exp(args.directory, args.keyword, test_log, args.ci95)
            if average is None:
                return 1
            missing = any(not r.ok for r in results)
        else:
            mean, _, results = report_dir(args.directory, args.keyword, test_log, args.ci95)
            if mean is None:
                return 1
            missing = any(not r.ok for r in results)
    except FileNotFoundError as err:
        print(f"ERROR: {err}")
        return 2
    return 1 if (missing and args.strict) else 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
