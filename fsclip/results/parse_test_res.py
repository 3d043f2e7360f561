"""CoOp's ``parse_test_res.py``: summaries of seed runs from their logs, CoOp's flags kept.

Command line (``parse_test_res.py`` and ``fsclip-parse``), CoOp's arguments plus ``--table``::

    parse_test_res.py DIR                  # DIR/*/log.txt (e.g. the seed folders): mean +- std
    parse_test_res.py DIR --ci95           # +- 1.96 * std / sqrt(n) instead of the std
    parse_test_res.py DIR --test-log       # results of --eval-only runs
    parse_test_res.py DIR --multi-exp      # every sub-folder of DIR is one experiment
    parse_test_res.py DIR --keyword macro_f1
    parse_test_res.py output --table       # a method x shots table per dataset
    parse_test_res.py BASE --base2new NEW  # CoCoOp's base-to-new: base, new, harmonic mean

The standard deviation is the population one (numpy's default, as CoOp). ``--table`` reads
every run below DIR (:func:`fsclip.results.parse.collect_runs`) and takes each log's result
after ``Finish training``, or after ``=> result`` for logs of ``--eval-only`` runs. The papers'
tables (markdown, LaTeX, CSV) and plots come from ``fsclip-results`` (:mod:`fsclip.results.cli`).
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from .cells import seed_cell
from .parse import (
    RunRecord, RunResult, collect_runs, harmonic_mean, parse_dir, subdirs, summarize,
)
from .render import cell_text


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
    for sub in subdirs(directory):
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


def shots_tables(records: Iterable[RunRecord], ci95: bool = False, keyword: str = "accuracy",
                 tablefmt: str = "github") -> str:
    """One method x shots table per dataset (mean +- spread over seeds, with n/total when runs
    are missing), then, for several datasets, the average over datasets of the cells that every
    dataset has complete, and the list of missing runs."""
    from tabulate import tabulate

    records = list(records)
    grouped: Dict[str, Dict[Tuple[str, int], Dict[Optional[int], RunResult]]] = \
        defaultdict(lambda: defaultdict(dict))
    for rec in records:
        grouped[rec.dataset][rec.method, rec.shots][rec.seed] = rec.result
    spread_name = "ci95" if ci95 else "std"
    blocks = []
    for dataset in sorted(grouped):
        cells = grouped[dataset]
        methods = sorted({m for m, _ in cells})
        shots = sorted({s for _, s in cells})
        rows = [[m] + [cell_text(seed_cell(cells[m, s], (), ci95), style="plain")
                       if (m, s) in cells else "" for s in shots]
                for m in methods]
        blocks.append(f"{dataset}: {keyword} (%), mean +- {spread_name} over seeds\n"
                      + tabulate(rows, headers=["method"] + [f"{s} shots" for s in shots],
                                 tablefmt=tablefmt, disable_numparse=True))
    if len(grouped) > 1:
        complete: Dict[Tuple[str, int], List[float]] = defaultdict(list)
        for dataset, cells in grouped.items():
            for key, series in cells.items():
                cell = seed_cell(series, ())
                if not cell.missing and not cell.incomplete:
                    complete[key].append(cell.mean)  # type: ignore[arg-type]
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
