"""The papers' tables from the runs of an output tree (:func:`fsclip.results.parse.collect_runs`).

* Few-shot: one method x dataset table per shot count (SAFE's Table I, CoOp's Fig. 3 numbers),
  with the average over the datasets as the last column ("Average" of the 11-dataset
  benchmark). Zero-shot methods (runs without a shots folder) are reference rows in every table.
  Eval-only re-runs (``evaluation/...shots_<TAG>``) are methods of their own (``SAFE (beta0.9)``).
* Distribution shift: per source and shot count, the source's few-shot result, each target's
  result of the same models (``..._from_<source>``) and the average over the targets
  (CoCoOp's Table 3, SAFE's Table III).
* Cross-dataset transfer: the same from a source to datasets of other classes (CoOp's and
  CoCoOp's Table 2: 16-shot ImageNet to the ten other benchmarks, which are the columns
  whenever the source is one of the 11, empty where not run; on the kit SynthShapes to
  SynthTextures). Targets with the source's classes (ImageNet-V2/Sketch/A/R, the kit's
  SynthShapesSketch) make the distribution-shift table, the others this one.
* Base-to-new: per shot count and dataset, base, new and H = harmonic mean of the two means,
  then the average over datasets with H of the averages (CoCoOp's Table 1).

Cells hold mean +- spread over seeds (:mod:`fsclip.results.cells`); the best per column is
marked; missing runs stay visible and are listed in :attr:`Results.problems`.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

from .cells import Cell, average_cell, best_of, h_cell, seed_cell
from .names import (
    benchmark_targets, dataset_label, is_test_only, matches, method_labels, order_datasets, select_datasets,
)
from .parse import B2N_BASE, B2N_NEW, EVAL, FEWSHOT, OOD, ZEROSHOT, RunRecord, RunResult

AVERAGE = "Average"


@dataclass
class TableOptions:
    """What to show and how (the ``fsclip-results`` flags)."""

    keyword: str = "accuracy"
    ci95: bool = False
    decimals: int = 2
    seeds: Sequence[int] = ()  # the seeds every method should have; default: all seen in a table
    methods: Sequence[str] = ()  # shell patterns on method names or trainers; also the row order
    datasets: Sequence[str] = ()  # shell patterns on dataset folders or display names
    shots: Sequence[int] = ()
    method_name: str = "auto"  # auto | trainer | full (fsclip.results.names)
    renames: Dict[str, str] = field(default_factory=dict)

    @property
    def higher_is_better(self) -> bool:
        return self.keyword != "error"

    @property
    def spread_name(self) -> str:
        return "ci95" if self.ci95 else "std"


@dataclass
class Table:
    """A table ready to render: cells keyed by (group, row, column).

    ``groups``: (group label, row labels); one unnamed group for the few-shot and OOD tables,
    one per dataset (and the average) for base-to-new, where the best is marked per group.
    ``column_spans``: an optional header row above the columns (LaTeX), e.g. Source / Target.
    ``best``: the keys of the cells holding the best mean of their column (within the group).
    Cells may be shared between tables (a zero-shot row appears in every few-shot table), so
    the marks live here, not in the cells.
    """

    name: str  # file stem, e.g. "fewshot_16shots"
    title: str
    columns: List[str]
    groups: List[Tuple[str, List[str]]]
    cells: Dict[Tuple[str, str, str], Cell]
    row_header: str = "Method"
    group_header: str = ""
    column_spans: List[Tuple[str, int]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    best: Set[Tuple[str, str, str]] = field(default_factory=set)



@dataclass
class Curves:
    """Accuracy vs shots for the plots: panel -> method label -> shots -> cell.

    Panels are the datasets (key = folder name) and ``"average"``; ``zero_shot`` holds the
    zero-shot methods' cells per panel (drawn as a horizontal line and a point at 0 shots).
    """

    keyword: str
    spread_name: str
    panels: List[Tuple[str, str]]  # (key, title)
    methods: List[str]  # every method label, in the tables' order (fixes the colours)
    lines: Dict[str, Dict[str, Dict[int, Cell]]]
    zero_shot: Dict[str, Dict[str, Cell]]


@dataclass
class Results:
    tables: List[Table]
    curves: Optional[Curves]
    problems: List[str]  # one line per missing run


# --------------------------------------------------------------------------- building
Series = Dict[Optional[int], RunResult]  # seed -> result
Key = Tuple[str, str, str, str, int]  # (kind, method name, dataset, OOD source or "", shots)


class _Builder:
    """Indexes the selected runs once; builds each kind of table from the index."""

    def __init__(self, records: Sequence[RunRecord], opts: TableOptions):
        self.opts = opts
        self.runs: Dict[Key, Series] = defaultdict(dict)
        self.where: Dict[Key, str] = {}  # a log path of each series
        self.problems: Dict[str, None] = {}  # ordered set
        trainers = {}
        for rec in records:
            kind = FEWSHOT if rec.kind == EVAL else rec.kind  # its name carries the tag
            key = (kind, rec.name, rec.dataset, rec.source, rec.shots)
            self.runs[key][rec.seed] = rec.result
            self.where[key] = rec.result.path
            trainers[rec.name] = rec.trainer
        self.trainers = trainers
        self.labels = method_labels(trainers.keys(), trainers, opts.method_name, opts.renames)
        self.zero_shot = self._ordered({k[1] for k in self.runs if k[0] == ZEROSHOT})
        self.order = self._ordered(trainers)
        self.seedless: Dict[str, bool] = defaultdict(lambda: True)  # runs without seed folders
        for (_, name, _, _, _), series in self.runs.items():
            self.seedless[name] &= all(s is None for s in series)

    def _ordered(self, names: Iterable[str]) -> List[str]:
        """Rows: by the --methods pattern they match, else zero-shot methods first; then by label."""
        def key(name: str):
            zero_first = 0 if all(k[0] == ZEROSHOT for k in self.runs if k[1] == name) else 1
            pattern = matches(self.opts.methods, name, self.trainers[name], self.labels[name])
            pattern = len(self.opts.methods) if pattern is None else pattern
            return (pattern, zero_first, self.labels[name].lower())
        return sorted(set(names), key=key)

    def seeds_of(self, kinds: Sequence[str]) -> List[int]:
        if self.opts.seeds:
            return sorted(self.opts.seeds)
        return sorted({s for key, series in self.runs.items() if key[0] in kinds
                       for s in series if s is not None})

    def cell(self, kind: str, name: str, dataset: str, shots: int, seeds: Sequence[int],
             what: str, source: str = "") -> Cell:
        """The cell of one series; records its missing runs as problems (``what`` names it)."""
        key = (kind, name, dataset, source, shots)
        series = self.runs.get(key, {})
        expected = () if self.seedless[name] else seeds
        cell = seed_cell(series, expected, self.opts.ci95)
        if not series:
            self.problems[f"{what}: no runs" + (f" ({_seeds(expected)})" if expected else "")] = None
            return cell
        for seed in sorted(set(expected) - set(series)):
            folder = os.path.dirname(os.path.dirname(self.where[key]))
            self.problems[f"{what}: no run for seed {seed} (no seed{seed} in {folder})"] = None
        for seed, result in sorted(series.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)):
            if not result.ok:
                self.problems[f"{what}: {result.path}: {result.problem}"] = None
        return cell

    def build(self, kinds: Sequence[str]) -> Results:
        tables: List[Table] = []
        curves = None
        if "fewshot" in kinds:
            fewshot, curves = self.fewshot()
            tables += fewshot
        if "ood" in kinds:
            tables += self.ood()
        if "xd" in kinds:
            tables += self.xd()
        if "base2new" in kinds:
            tables += self.base2new()
        return Results(tables, curves, list(self.problems))

    # ------------------------------------------------------------------ few-shot
    def fewshot(self) -> Tuple[List[Table], Optional[Curves]]:
        opts = self.opts
        # every dataset with few-shot or zero-shot runs, except distribution-shift targets (a
        # dataset only zero-shot ran on is a column: the few-shot methods miss it)
        targets = {k[2] for k in self.runs if k[0] == OOD}
        datasets = select_datasets({k[2] for k in self.runs if k[0] == FEWSHOT} | {
            k[2] for k in self.runs if k[0] == ZEROSHOT and k[2] not in targets
            and not is_test_only(k[2])}, opts.datasets)
        shots = sorted({k[4] for k in self.runs if k[0] == FEWSHOT and k[2] in datasets})
        if not datasets:
            return [], None
        seeds = self.seeds_of([FEWSHOT])
        methods_at = {n: sorted({s for (k, m, d, _, s) in self.runs
                                 if k == FEWSHOT and m == n and d in datasets}) for n in self.order}
        zero = [n for n in self.zero_shot if any((ZEROSHOT, n, d, "", 0) in self.runs for d in datasets)]
        grid: Dict[Tuple[str, str, int], Cell] = {}
        for name in self.order:
            for n_shots in methods_at[name]:
                for d in datasets:
                    grid[name, d, n_shots] = self.cell(FEWSHOT, name, d, n_shots, seeds,
                                                       f"{d} / {name} / {_shots(n_shots)}")
        for name in zero:
            for d in datasets:
                grid[name, d, 0] = self.cell(ZEROSHOT, name, d, 0, seeds, f"{d} / {name} / zero-shot")
        with_avg = len(datasets) > 1
        averages = {}
        for (name, n_shots) in {(m, s) for (m, _, s) in grid}:
            averages[name, n_shots] = average_cell([grid[name, d, n_shots] for d in datasets], opts.ci95)

        tables = []
        columns = [dataset_label(d) for d in datasets] + ([AVERAGE] if with_avg else [])
        # zero-shot methods alone make one table, unless --shots asked for other shot counts
        for n_shots in shots or ([] if opts.shots else [0]):
            rows = [(n, 0) for n in zero] + [(n, n_shots) for n in self.order
                                             if n_shots and n_shots in methods_at[n]]
            cells = {}
            for name, s in rows:
                for d, col in zip(datasets, columns):
                    cells["", self.labels[name], col] = grid[name, d, s]
                if with_avg:
                    cells["", self.labels[name], AVERAGE] = averages[name, s]
            title = (_shots(n_shots) if n_shots else "Zero-shot") + \
                f": {opts.keyword} (%), mean ± {opts.spread_name} over {_seeds(seeds) or 'runs'}"
            notes = _notes(opts, with_avg and f"{AVERAGE}: over the {len(datasets)} datasets")
            tables.append(_mark(Table(
                f"fewshot_{n_shots}shots" if n_shots else "zeroshot", title, columns,
                [("", [self.labels[n] for n, _ in rows])], cells, notes=notes), opts))

        panels = [(d, dataset_label(d)) for d in datasets]
        if with_avg:
            panels.append(("average", f"Average over {len(datasets)} datasets"))
        lines: Dict[str, Dict[str, Dict[int, Cell]]] = {p: {} for p, _ in panels}
        zs: Dict[str, Dict[str, Cell]] = {p: {} for p, _ in panels}
        for name in self.order:
            label = self.labels[name]
            for panel, _ in panels:
                pick = (lambda s: averages[name, s]) if panel == "average" \
                    else (lambda s, d=panel: grid[name, d, s])
                if methods_at[name]:
                    lines[panel][label] = {s: pick(s) for s in methods_at[name]}
                if name in zero:
                    zs[panel][label] = pick(0)
        curves = Curves(opts.keyword, opts.spread_name, panels,
                        [self.labels[n] for n in self.order], lines, zs)
        return tables, curves

    # ------------------------------------------------------------------ OOD and cross-dataset
    def ood(self) -> List[Table]:
        """Distribution shift: the targets with the source's classes (ImageNet-V2/Sketch/A/R)."""
        return self._transfer("ood", is_test_only)

    def xd(self) -> List[Table]:
        """Cross-dataset transfer: targets with other classes; from one of the 11 benchmarks the
        columns are the ten others (CoOp's and CoCoOp's Table 2), empty where not run."""
        return self._transfer("xd", lambda d: not is_test_only(d), fixed=benchmark_targets)

    def _transfer(self, kind: str, is_target, fixed=lambda source: []) -> List[Table]:
        opts = self.opts
        pairs = sorted({(src, s) for (k, _, d, src, s) in self.runs if k == OOD and is_target(d)})
        tables = []
        for source, n_shots in pairs:
            if opts.datasets and not select_datasets([source], opts.datasets):
                continue
            ran = order_datasets(d for (k, _, d, src, s) in self.runs
                                 if k == OOD and src == source and s == n_shots and is_target(d))
            standard = list(fixed(source))
            targets = standard + [d for d in ran if d not in standard]
            empty = set(targets) - set(ran)  # columns of the protocol that no method ran
            trained = [n for n in self.order
                       if any((OOD, n, t, source, n_shots) in self.runs for t in ran)]
            zero = [n for n in self.zero_shot
                    if any((ZEROSHOT, n, d, "", 0) in self.runs for d in [source] + ran)]
            seeds = self.seeds_of([OOD])
            columns = [dataset_label(d) for d in [source] + targets]
            with_avg = len(targets) > 1
            cells = {}
            for name in zero + trained:
                label = self.labels[name]
                if name in zero:
                    row = [None if d in empty else
                           self.cell(ZEROSHOT, name, d, 0, seeds, f"{d} / {name} / zero-shot")
                           for d in [source] + targets]
                else:
                    row = [self.cell(FEWSHOT, name, source, n_shots, seeds,
                                     f"{source} / {name} / {_shots(n_shots)}")]
                    row += [None if t in empty else
                            self.cell(OOD, name, t, n_shots, seeds,
                                      f"{t} / {name} / {_shots(n_shots)} from {source}", source)
                            for t in targets]
                for col, cell in zip(columns, row):
                    if cell is not None:  # an empty cell: no key (rendered blank)
                        cells["", label, col] = cell
                if with_avg:
                    cells["", label, AVERAGE] = average_cell(
                        [Cell(expected=1) if c is None else c for c in row[1:]], opts.ci95)
            what = "Distribution shift" if kind == "ood" else "Cross-dataset transfer"
            title = (f"{what}: trained on {dataset_label(source)} ({_shots(n_shots)}), "
                     f"{opts.keyword} (%), mean ± {opts.spread_name} over "
                     f"{_seeds(seeds) or 'runs'}")
            spans = [("Source", 1), ("Target", len(targets) + with_avg)]
            notes = _notes(opts, with_avg and f"{AVERAGE}: over the {len(targets)} targets")
            if empty:
                notes.append(f"Empty: not run ({', '.join(dataset_label(d) for d in targets if d in empty)}).")
            tables.append(_mark(Table(
                f"{kind}_{source}_{n_shots}shots", title, columns + ([AVERAGE] if with_avg else []),
                [("", [self.labels[n] for n in zero + trained])], cells, column_spans=spans,
                notes=notes), opts))
        return tables

    # ------------------------------------------------------------------ base-to-new
    def base2new(self) -> List[Table]:
        opts = self.opts
        b2n = (B2N_BASE, B2N_NEW)
        datasets = select_datasets({k[2] for k in self.runs if k[0] in b2n}, opts.datasets)
        all_shots = sorted({k[4] for k in self.runs if k[0] in b2n and k[2] in datasets})
        shots = [s for s in all_shots if s] or ([] if opts.shots else all_shots)
        seeds = self.seeds_of(list(b2n))
        tables = []
        for n_shots in shots:
            def runs_at(name: str, s: int) -> bool:
                return any((k, name, d, "", s) in self.runs for k in b2n for d in datasets)
            rows = [(n, 0) for n in self.order if n_shots and runs_at(n, 0) and not runs_at(n, n_shots)]
            rows += [(n, n_shots) for n in self.order if runs_at(n, n_shots)]
            groups, cells = [], {}
            per_method: Dict[str, List[Tuple[Cell, Cell]]] = defaultdict(list)
            for d in datasets:
                label_d = dataset_label(d)
                for name, s in rows:
                    what = f"{d} / {name} / " + (_shots(s) if s else "zero-shot")
                    base = self.cell(B2N_BASE, name, d, s, seeds, f"{what} / base classes")
                    new = self.cell(B2N_NEW, name, d, s, seeds, f"{what} / new classes")
                    per_method[name].append((base, new))
                    for col, cell in zip(("Base", "New", "H"), (base, new, h_cell(base, new))):
                        cells[label_d, self.labels[name], col] = cell
                groups.append((label_d, [self.labels[n] for n, _ in rows]))
            if len(datasets) > 1:
                for name, _ in rows:
                    base = average_cell([b for b, _ in per_method[name]], opts.ci95)
                    new = average_cell([n for _, n in per_method[name]], opts.ci95)
                    for col, cell in zip(("Base", "New", "H"), (base, new, h_cell(base, new))):
                        cells[AVERAGE, self.labels[name], col] = cell
                groups.append((AVERAGE, [self.labels[n] for n, _ in rows]))
            title = (f"Base-to-new, {_shots(n_shots)}: {opts.keyword} (%) on the base and new classes, "
                     f"mean ± {opts.spread_name} over {_seeds(seeds) or 'runs'}; "
                     "H = harmonic mean of the two means")
            notes = _notes(opts, len(datasets) > 1 and
                           f"{AVERAGE}: base and new averaged over the {len(datasets)} datasets, "
                           "H of the two averages (as CoCoOp)")
            tables.append(_mark(Table(f"base2new_{n_shots}shots", title, ["Base", "New", "H"],
                                      groups, cells, group_header="Dataset", notes=notes), opts))
        return tables


def _mark(table: Table, opts: TableOptions) -> Table:
    """Fill ``table.best``: per group and column, the cells with the best mean."""
    columns: Dict[Tuple[str, str], List[Tuple[str, str, str]]] = defaultdict(list)
    for key in table.cells:
        columns[key[0], key[2]].append(key)
    for keys in columns.values():
        flags = best_of([table.cells[k] for k in keys], opts.decimals, opts.higher_is_better)
        table.best.update(k for k, flag in zip(keys, flags) if flag)
    return table


def _notes(opts: TableOptions, average: "str | bool") -> List[str]:
    better = "" if opts.higher_is_better else " (lowest)"
    notes = [f"Bold: best per column{better}.",
             "(k/n): k of n expected runs have a result; partial: a mean over cells that miss runs."]
    if average:
        notes.append(f"{average} (missing if one is missing).")
    return notes


def _seeds(seeds: Sequence[Optional[int]]) -> str:
    """"seeds 1-3", "seeds 1, 5", "seed 2"; "" for none."""
    seeds = sorted(s for s in seeds if s is not None)
    if not seeds:
        return ""
    prefix = "seed " if len(seeds) == 1 else "seeds "
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{prefix}{seeds[0]}-{seeds[-1]}"
    return prefix + ", ".join(map(str, seeds))


def _shots(n: int) -> str:
    return f"{n} shot" if n == 1 else f"{n} shots"


def select_records(records: Iterable[RunRecord], opts: TableOptions,
                   kinds: Sequence[str] = ("fewshot", "ood", "xd", "base2new")) -> List[RunRecord]:
    """The runs the options and the kinds of tables ask for (methods, shots; datasets are
    chosen per table). Method labels come from these runs only."""
    dropped = set()
    transfer = "ood" in kinds or "xd" in kinds
    if not transfer:
        dropped |= {OOD}
    if "base2new" not in kinds:
        dropped |= {B2N_BASE, B2N_NEW}
    if "fewshot" not in kinds and not transfer:  # OOD / XD tables read few-shot source runs
        dropped |= {FEWSHOT, ZEROSHOT, EVAL}
    kept = []
    for rec in records:
        if rec.kind in dropped:
            continue
        if opts.methods and matches(opts.methods, rec.name, rec.trainer) is None:
            continue
        if opts.shots and rec.shots and rec.shots not in opts.shots:
            continue
        kept.append(rec)
    return kept


def build_results(records: Iterable[RunRecord], opts: Optional[TableOptions] = None,
                  kinds: Sequence[str] = ("fewshot", "ood", "xd", "base2new")) -> Results:
    """Every table the runs allow (few-shot, OOD, base-to-new), the curves and the problems.

    Method labels are chosen among the methods the tables show: a second pass drops the runs
    of methods no table shows (e.g. a zero-shot config used only by a table left out).
    """
    opts = opts or TableOptions()
    selected = select_records(records, opts, kinds)
    builder = _Builder(selected, opts)
    results = builder.build(kinds)
    by_label = {label: name for name, label in builder.labels.items()}
    shown = {by_label[row] for t in results.tables for _, rows in t.groups for row in rows}
    if shown != set(builder.labels):
        results = _Builder([r for r in selected if r.name in shown], opts).build(kinds)
    return results
