"""``python -m fsclip.results`` / ``fsclip-results``: the papers' tables and plots from any
output tree.

    fsclip-results output                                  # markdown tables on the terminal
    fsclip-results output --out results --format md latex csv --plots png pdf
    fsclip-results output --ci95 --shots 1 16 --methods ZeroshotCLIP 'SAFE*' --datasets '*'
    fsclip-results output --method-name full --rename SAFE_A=SAFE-A --keyword macro_f1
    fsclip-results output --reference safe_table1 --plots png --out results   # vs a paper
    fsclip-results --reference                             # the published tables shipped

Tables: few-shot (method x dataset per shot count, with the average over datasets), distribution
shift (source, targets with its classes, their average), cross-dataset transfer (source, the ten
other benchmarks or the kit's other dataset, their average) and base-to-new (base, new, H); see
:mod:`fsclip.results.tables`. Exit status: 0, 1 when no run is found (or, with ``--strict``,
when a run is missing), 2 on bad input (one ``ERROR:`` line).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional, Sequence

from fsclip.errors import ConfigError, UserFacingError

from .names import parse_renames
from .parse import collect_runs
from .render import FORMATS, problems_markdown, render
from .tables import TableOptions, build_results

TABLE_KINDS = ("fewshot", "ood", "xd", "base2new")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fsclip-results",
        description="Tables (markdown, LaTeX, CSV) and accuracy-vs-shots plots from an output "
                    "tree of runs (<dataset>/<Trainer>/<cfg>_<N>shots/seed<S>/log.txt, "
                    "evaluation/..., base2new/...).")
    p.add_argument("directory", nargs="?", help="output folder (or any folder below it)")
    p.add_argument("--format", "-f", nargs="+", default=["md"], choices=sorted(FORMATS),
                   metavar="FMT", help="md, latex and/or csv (default: md)")
    p.add_argument("--out", "-o", default="",
                   help="write the files here (results.md, <table>.tex, <table>.csv, "
                        "plots/<dataset>.png ...); without it, tables go to the terminal")
    p.add_argument("--plots", nargs="*", choices=["png", "pdf"], metavar="FMT",
                   help="accuracy-vs-shots plots into OUT/plots: png and/or pdf (both when "
                        "none is given); needs matplotlib (pip install 'fsclip[plots]')")
    p.add_argument("--tables", nargs="+", choices=TABLE_KINDS, default=list(TABLE_KINDS),
                   help="which tables (default: every kind the runs allow)")
    p.add_argument("--ci95", action="store_true",
                   help="+- 1.96 * std / sqrt(n) instead of the std over seeds")
    p.add_argument("--keyword", default="accuracy",
                   help="metric of the '* <keyword>: X%%' lines (accuracy, macro_f1, error: "
                        "lower is better)")
    p.add_argument("--methods", nargs="+", default=[], metavar="PAT",
                   help="methods to show, in this row order: full names or trainers, shell "
                        "patterns allowed ('SAFE*', '*/micro_rn')")
    p.add_argument("--datasets", nargs="+", default=[], metavar="PAT",
                   help="datasets to show, in this column order (folder or display names, "
                        "patterns allowed); default: all, in the papers' order")
    p.add_argument("--shots", nargs="+", type=int, default=[], metavar="N",
                   help="shot counts to show (zero-shot rows always stay)")
    p.add_argument("--seeds", nargs="+", type=int, default=[], metavar="S",
                   help="seeds every method should have (default: every seed found in the "
                        "table); absent ones are missing runs")
    p.add_argument("--method-name", choices=["auto", "trainer", "full"], default="auto",
                   help="row labels: Trainer, Trainer/cfg, or auto (Trainer unless the trainer "
                        "has several configs shown)")
    p.add_argument("--rename", nargs="+", default=[], metavar="NAME=LABEL",
                   help="labels by hand, e.g. SAFE_A=SAFE-A 'TipAdapterF/rn50=Tip-Adapter-F'")
    p.add_argument("--decimals", type=int, default=2, help="digits after the point (default 2)")
    p.add_argument("--reference", nargs="?", const="", default=None, metavar="NAME",
                   help="the user's results next to a published table (e.g. safe_table1): "
                        "ours / published (difference), flagged beyond 1 point or 2 std; "
                        "plots add the published curves dashed; without NAME: list the tables")
    p.add_argument("--reference-map", nargs="+", default=[], metavar="YOURS=COLUMN",
                   help="read one of your datasets as a column of the published table, e.g. "
                        "synth_shapes=imagenet")
    p.add_argument("--strict", action="store_true", help="exit with status 1 when a run is missing")
    return p


def run(args: argparse.Namespace) -> int:
    ref, dataset_map = None, {}
    if args.reference is not None:
        from . import reference

        if args.reference in ("", "list"):
            print(reference.listing())
            return 0
        ref = reference.load(args.reference)
        dataset_map = reference.parse_map(args.reference_map)
    if args.directory is None:
        raise ConfigError("give the output folder of the runs (fsclip-results OUTPUT ...)")
    formats: List[str] = list(dict.fromkeys(FORMATS[f] for f in args.format))
    plots = None if args.plots is None else (args.plots or ["png", "pdf"])
    if plots and not args.out:
        raise ConfigError("--plots writes files: add --out DIR (the folder for the figures)")
    if plots:
        from .plots import require_matplotlib

        require_matplotlib()
    if not os.path.isdir(args.directory):
        raise ConfigError(f"{args.directory} is not a folder: give the output folder of the runs "
                          "(e.g. output, with <dataset>/<Trainer>/<cfg>_<N>shots/seed<S> inside)")
    opts = TableOptions(keyword=args.keyword, ci95=args.ci95, decimals=args.decimals,
                        seeds=args.seeds, methods=args.methods, datasets=args.datasets,
                        shots=args.shots, method_name=args.method_name,
                        renames=parse_renames(args.rename))
    records = collect_runs(args.directory, args.keyword)
    if not records:
        print(f"Nothing found in {args.directory}: no seed<S> folder or log.txt below it")
        return 1
    results = build_results(records, opts, args.tables)
    if not results.tables:
        print(f"No run in {args.directory} matches the filters")
        return 1

    if ref is not None:
        return run_reference(args, ref, dataset_map, records, results, opts, formats, plots)
    texts = {fmt: [render(t, fmt, opts.decimals, opts.spread_name) for t in results.tables]
             for fmt in formats}

    def figures():
        from .plots import curve_figures

        return curve_figures(results.curves)

    emit(args, texts, results.tables, results, "results.md", plots, figures)
    return 1 if (args.strict and results.problems) else 0


def run_reference(args: argparse.Namespace, ref, dataset_map, records, results, opts,
                  formats: List[str], plots) -> int:
    """``--reference NAME``: the comparison tables instead of the plain ones (same --out,
    --format, --plots); plots are the usual ones with the published curves added."""
    from . import reference

    tables = reference.compare(records, ref, ci95=opts.ci95, methods=opts.methods,
                               shots=opts.shots, method_name=opts.method_name,
                               renames=opts.renames, dataset_map=dataset_map)
    texts = {fmt: [reference.render(t, fmt, opts.decimals, opts.spread_name) for t in tables]
             for fmt in formats}

    def figures():
        from .names import method_labels

        trainers = {r.name: r.trainer for r in records}
        labels = method_labels(trainers, trainers, opts.method_name, opts.renames)
        by_label = {labels[n]: t for n, t in trainers.items()}
        return reference.reference_figures(results.curves, ref, by_label, dataset_map,
                                           {labels[n]: n for n in trainers})

    emit(args, texts, tables, results, f"reference_{ref.name}.md", plots, figures)
    return 1 if (args.strict and results.problems) else 0


def emit(args: argparse.Namespace, texts, tables, results, md_name: str, plots, figures) -> None:
    """Print the tables (markdown, and the other formats when there is no --out), or write them
    under --out: ``md_name`` for the markdown report, ``<table>.<fmt>`` for the others, and the
    accuracy-vs-shots figures (``figures()``) under ``plots/``."""
    if "md" in texts:
        print(markdown_report(texts["md"], results.problems))
    if not args.out:
        for fmt, rendered in texts.items():
            if fmt != "md":
                print("\n\n".join(rendered) + "\n")
    if results.problems and "md" not in texts:
        print(problems_markdown(results.problems), file=sys.stderr)
    if not args.out:
        return
    from fsclip.engine.fileio import atomic_write_text

    written = []
    if "md" in texts:
        written.append(os.path.join(args.out, md_name))
        atomic_write_text(written[-1], markdown_report(texts["md"], results.problems) + "\n")
    for fmt, rendered in texts.items():
        if fmt == "md":
            continue
        for table, text in zip(tables, rendered):
            written.append(os.path.join(args.out, f"{table.name}.{fmt}"))
            atomic_write_text(written[-1], text if text.endswith("\n") else text + "\n")
    if plots:
        if results.curves is None:
            print("No few-shot or zero-shot runs: no accuracy-vs-shots plot")
        else:
            from .plots import save_figures

            written += save_figures(figures(), os.path.join(args.out, "plots"), plots)
    print(f"Wrote {len(written)} files:")
    print("\n".join(f"  {path}" for path in written))


def markdown_report(tables: Sequence[str], problems: Sequence[str]) -> str:
    return "\n\n".join(list(tables) + ([problems_markdown(problems)] if problems else []))


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except UserFacingError as err:
        print(f"ERROR: {err}")
        return 2
