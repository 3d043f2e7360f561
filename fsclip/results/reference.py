"""Published numbers next to the user's: ``fsclip-results OUTPUT --reference NAME``.

The papers' tables ship as data, one JSON file per table in ``fsclip/results/reference/``
(``fsclip-results --reference`` lists them). A file holds the table's ``kind``, its ``columns``
(fsclip dataset folder names, or an ablation's settings), whether it prints an ``average``
column, ``notes`` (every number repaired from the PDF's text, and why) and ``rows``; each row
names its source (``paper``, ``table``, ``backbone``, ``shots``, ``protocol``), its ``method`` as
printed and the fsclip ``trainer`` it corresponds to (null: no fsclip trainer), optionally
``match`` / ``exclude``: shell patterns on the user's method name (``*_shallow*``).

Kinds: ``fewshot`` (method x dataset, one table per shot count, zero-shot rows in each; by
default the shot counts the user ran, else all; ``--shots`` picks them, run or not),
``ood`` (trained on ``source_dataset``, tested on the shifted targets; one table per backbone),
``base2new`` (CoCoOp's protocol: columns ``base``, ``new``, ``hm``, each row the averages over
``average_over``; ours: base and new averaged over the same datasets, H of the two averages, as
CoCoOp computes it; the self-check asserts that each printed H is the harmonic mean of its row)
and ``ablation`` (published only: no fsclip run maps to its settings).

A comparison cell reads ``ours / paper (diff)``: the user's mean +- spread over seeds, the
published value, and ours minus paper; the difference is flagged (bold, ``flag`` in CSV) when
it is larger than 1 point or larger than 2 std of the user's seeds (:func:`flags`). A dataset
or shot count the user did not run leaves the user's side empty. ``--reference-map
synth_shapes=imagenet`` reads a user dataset as one of the paper's columns.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from fsclip.errors import ConfigError

from .cells import Cell, average_cell, h_cell, seed_cell
from .names import dataset_label, matches, method_labels
from .parse import B2N_BASE, B2N_NEW, EVAL, FEWSHOT, OOD, ZEROSHOT, RunRecord, summarize
from .render import latex_escape

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference")
KINDS = ("fewshot", "ood", "ablation", "base2new")
B2N_COLUMNS = ["base", "new", "hm"]
ROW_FIELDS = ("method", "paper", "table", "backbone", "shots", "protocol", "values")
AVERAGE_TOLERANCE = 0.011  # a printed average vs the mean of its printed (rounded) cells
FLAG_POINTS = 1.0
FLAG_STDS = 2.0


@dataclass
class RefRow:
    method: str
    trainer: Optional[str]
    shots: int
    values: Dict[str, float]
    average: Optional[float] = None
    backbone: str = ""
    paper: str = ""
    table: str = ""
    protocol: str = ""
    label: str = ""  # the row label: method, or the dataset of an ablation by dataset
    match: List[str] = field(default_factory=list)  # patterns the user's method name must match
    exclude: List[str] = field(default_factory=list)  # ... and must not

    def value(self, column: str) -> Optional[float]:
        return self.average if column == "Average" else self.values.get(column)


@dataclass
class RefTable:
    name: str
    kind: str
    title: str
    paper: str
    table: str
    source: str
    columns: List[str]
    has_average: bool
    rows: List[RefRow]
    notes: List[str] = field(default_factory=list)
    row_header: str = "Method"
    source_dataset: str = ""
    path: str = ""
    average_over: List[str] = field(default_factory=list)  # the datasets of the Average column

    @property
    def average_only(self) -> bool:
        """A table of averages over datasets it does not print one by one."""
        return self.has_average and not self.columns

    @property
    def shots(self) -> List[int]:
        return sorted({r.shots for r in self.rows})


# ------------------------------------------------------------------------------- loading
def available() -> List[str]:
    """The names of the shipped tables (file stems), sorted."""
    if not os.path.isdir(DATA_DIR):
        return []
    return sorted(f[:-5] for f in os.listdir(DATA_DIR) if f.endswith(".json"))


def load(name: str) -> RefTable:
    """One shipped table by name (``safe_table1``); ConfigError listing the known ones."""
    known = available()
    if name not in known:
        raise ConfigError(f"--reference {name!r}: no such table; known: {', '.join(known)} "
                          "(fsclip-results --reference lists them)")
    path = os.path.join(DATA_DIR, name + ".json")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    rows = []
    for r in data["rows"]:
        missing = [k for k in ROW_FIELDS if k not in r]
        if missing:
            raise ConfigError(f"{path}: row {r.get('method')!r} lacks {', '.join(missing)}")
        label = dataset_label(r["dataset"]) if r.get("dataset") else r["method"]
        rows.append(RefRow(r["method"], r.get("trainer"), int(r["shots"]),
                           {k: float(v) for k, v in r["values"].items()}, r.get("average"),
                           r["backbone"], r["paper"], r["table"], r["protocol"], label,
                           list(r.get("match", [])), list(r.get("exclude", []))))
    return RefTable(data["name"], data["kind"], data["title"], data["paper"], data["table"],
                    data["source"], list(data["columns"]), bool(data.get("average")), rows,
                    list(data.get("notes", [])), data.get("row_header", "Method"),
                    data.get("source_dataset", ""), path,
                    list(data.get("average_over") or data["columns"]))


def self_check(ref: RefTable) -> List[str]:
    """What is wrong with a table (empty when nothing): unknown kind or column, values out of
    [0, 100], a printed average that is not the mean of its row to rounding."""
    problems = []
    if ref.kind not in KINDS:
        problems.append(f"kind {ref.kind!r} is not one of {', '.join(KINDS)}")
    for row in ref.rows:
        where = f"{row.label} ({row.shots} shots, {row.backbone})"
        for col, v in row.values.items():
            if col not in ref.columns:
                problems.append(f"{where}: column {col!r} is not in the table's columns")
            if not 0.0 <= v <= 100.0:
                problems.append(f"{where} / {col}: {v} is not a percentage")
        if ref.kind == "base2new":
            if ref.columns != B2N_COLUMNS or set(row.values) != set(B2N_COLUMNS):
                problems.append(f"{where}: a base2new table has the columns base, new, hm")
                continue
            b, n = row.values["base"], row.values["new"]
            if abs(2 * b * n / (b + n) - row.values["hm"]) > AVERAGE_TOLERANCE:
                problems.append(f"{where}: printed H {row.values['hm']} but base {b} and new {n} "
                                f"give {2 * b * n / (b + n):.3f}")
        elif ref.average_only:
            if row.average is None or row.values or len(ref.average_over) < 2:
                problems.append(f"{where}: an average-only table needs average_over and each "
                                "row's average (no values)")
        elif ref.has_average:
            if row.average is None or set(row.values) != set(ref.columns):
                problems.append(f"{where}: the table has an average column; the row needs "
                                "every column and its average")
                continue
            mean = sum(row.values.values()) / len(row.values)
            if abs(mean - row.average) > AVERAGE_TOLERANCE:
                problems.append(f"{where}: printed average {row.average} but its "
                                f"{len(row.values)} values average {mean:.3f}")
    return problems


def listing() -> str:
    """``fsclip-results --reference`` without a name: one line per shipped table."""
    lines = ["Published tables (fsclip-results OUTPUT --reference NAME):"]
    names = available()
    width = max((len(n) for n in names), default=0)
    for name in names:
        lines.append(f"  {name:<{width}}  {load(name).title}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------- flags
def flags(mean: Optional[float], std: Optional[float], published: Optional[float],
          points: float = FLAG_POINTS, n_std: float = FLAG_STDS) -> List[str]:
    """Why ``mean - published`` stands out: ``>1pt`` when larger than ``points``, ``>2std``
    when larger than ``n_std`` std of the user's seeds (no std: one run, never this flag)."""
    if mean is None or published is None:
        return []
    diff = abs(mean - published)
    out = []
    if diff > points:
        out.append(f">{points:g}pt")
    if std is not None and diff > n_std * std:
        out.append(f">{n_std:g}std")
    return out


@dataclass
class Compared:
    """One cell: the user's cell (None: no such run), its std over seeds, the published value."""

    ours: Optional[Cell]
    published: Optional[float]
    std: Optional[float] = None

    @property
    def mean(self) -> Optional[float]:
        return None if self.ours is None else self.ours.mean

    @property
    def diff(self) -> Optional[float]:
        if self.mean is None or self.published is None:
            return None
        return self.mean - self.published

    @property
    def flags(self) -> List[str]:
        return flags(self.mean, self.std, self.published)


def compared(ours: Optional[Cell], published: Optional[float]) -> Compared:
    values = [] if ours is None or ours.missing else [
        v for v in ours.per_seed.values() if v is not None]
    std = summarize(values)[1] if len(values) > 1 else None
    return Compared(None if ours is None or ours.missing else ours, published, std)


@dataclass
class Comparison:
    name: str
    title: str
    row_header: str
    columns: List[str]  # labels
    rows: List[Tuple[str, List[Compared]]]
    notes: List[str] = field(default_factory=list)


# ------------------------------------------------------------------------------- comparing
class _Runs:
    """The user's runs: (kind, name, dataset, source, shots) -> seed -> result."""

    def __init__(self, records: Sequence[RunRecord], methods: Sequence[str], method_name: str,
                 renames: Dict[str, str]):
        self.runs: Dict[tuple, dict] = defaultdict(dict)
        self.trainers: Dict[str, str] = {}
        for rec in records:
            if methods and matches(methods, rec.name, rec.trainer) is None:
                continue
            kind = FEWSHOT if rec.kind == EVAL else rec.kind
            self.runs[kind, rec.name, rec.dataset, rec.source, rec.shots][rec.seed] = rec.result
            self.trainers[rec.name] = rec.trainer
        self.labels = method_labels(self.trainers, self.trainers, method_name, renames) \
            if self.trainers else {}
        self.datasets = {k[2] for k in self.runs}
        # the seeds a trained method should have: every seed seen (zero-shot runs have none)
        self.seeds = sorted({s for series in self.runs.values() for s in series if s is not None})

    def names_of(self, row: RefRow, kind: str, shots: int) -> List[str]:
        """The user's methods that stand for a published row: its trainer, and the name
        patterns of the row (``match``, ``exclude``: e.g. the shallow configs)."""
        if row.trainer is None:
            return []
        return sorted({k[1] for k in self.runs if k[0] == kind and k[4] == shots
                       and self.trainers[k[1]] == row.trainer
                       and (not row.match or matches(row.match, k[1]) is not None)
                       and matches(row.exclude, k[1]) is None}, key=lambda n: self.labels[n])

    def cell(self, kind: str, name: str, dataset: str, shots: int, ci95: bool,
             source: str = "") -> Optional[Cell]:
        series = self.runs.get((kind, name, dataset, source, shots))
        if not series:
            return None
        return seed_cell(series, () if kind == ZEROSHOT else self.seeds, ci95)


def parse_map(pairs: Sequence[str]) -> Dict[str, str]:
    """``["synth_shapes=imagenet"]`` -> paper column -> user dataset."""
    out = {}
    for pair in pairs:
        ours, sep, paper = pair.partition("=")
        if not sep or not ours.strip() or not paper.strip():
            raise ConfigError(f"--reference-map {pair!r}: expected YOUR_DATASET=PAPER_COLUMN, "
                              "e.g. synth_shapes=imagenet")
        out[paper.strip()] = ours.strip()
    return out


def compare(records: Sequence[RunRecord], ref: RefTable, *, ci95: bool = False,
            methods: Sequence[str] = (), shots: Sequence[int] = (), method_name: str = "auto",
            renames: Optional[Dict[str, str]] = None,
            dataset_map: Optional[Dict[str, str]] = None) -> List[Comparison]:
    """The comparison tables of the user's runs against one published table."""
    runs = _Runs(records, methods, method_name, renames or {})
    mapping = dict(dataset_map or {})
    unknown = sorted(set(mapping) - set(ref.columns) - set(ref.average_over))
    if unknown:
        raise ConfigError(f"--reference-map: {', '.join(unknown)} is not a column of "
                          f"{ref.name}; its columns: {', '.join(ref.columns)}")
    ds = {c: mapping.get(c, c) for c in ref.columns}  # paper column -> user dataset
    labels = [dataset_label(c) for c in ref.columns]
    spread = "ci95" if ci95 else "std"
    ds.update({c: mapping.get(c, c) for c in ref.average_over})
    over = ref.average_over if ref.kind == "base2new" else (ref.columns or ref.average_over)
    common = [c for c in over if ds[c] in runs.datasets]
    notes = [f"Published: {ref.source}; {ref.paper}.",
             f"Cells: ours (mean ± {spread} over seeds) / published (ours - published); a bold "
             "difference is larger than 1 point or than 2 std of our seeds; an empty side: "
             "not run / not published."]
    if ref.average_only:
        notes.append(f"Average: over {len(ref.average_over)} datasets ("
                     + ", ".join(dataset_label(d) for d in ref.average_over)
                     + "); ours is empty unless every one of them ran.")
    if mapping:
        notes.append("Read as the paper's columns: " + ", ".join(
            f"{u} as {dataset_label(c)}" for c, u in mapping.items()) + ".")
    if runs.runs and not common and ref.kind != "ablation":
        notes.append(f"None of your datasets ({', '.join(sorted(runs.datasets))}) is a column "
                     f"of {ref.name}: compare one with --reference-map YOURS=COLUMN.")
    if ref.kind == "ablation":
        rows = [(r.label, [Compared(None, r.values.get(c)) for c in ref.columns]) for r in ref.rows]
        cols = [dataset_label(c) for c in ref.columns]
        return [Comparison(ref.name, f"{ref.title} (published only: an ablation)",
                           ref.row_header, cols, rows, notes[:1])]
    if ref.kind == "base2new":
        return [_base2new(runs, ref, ds, ci95, notes)]
    out = []
    if ref.kind == "fewshot":
        with_avg = ref.has_average
        # the asked shot counts; by default those the user ran (of the table's), else all
        ran = {k[4] for k in runs.runs if k[0] == FEWSHOT and k[1] in runs.trainers
               and any(r.trainer == runs.trainers[k[1]] for r in ref.rows)}
        wanted = list(shots) or [s for s in ref.shots if s in ran] or ref.shots
        for n_shots in [s for s in wanted if s] or [0]:
            rows = []
            for r in ref.rows:
                if r.shots not in (0, n_shots):
                    continue
                kind = ZEROSHOT if r.shots == 0 else FEWSHOT
                names = runs.names_of(r, kind, r.shots)
                for name in names or [None]:
                    cells = [None if name is None else runs.cell(kind, name, ds[c], r.shots, ci95)
                             for c in ref.columns]
                    row = [compared(cell, r.values.get(c)) for cell, c in zip(cells, ref.columns)]
                    if with_avg:
                        if ref.average_only:  # ours: the mean over the datasets it averages
                            cells = [None if name is None else runs.cell(
                                kind, name, ds[c], r.shots, ci95) for c in ref.average_over]
                        avg = None if name is None or any(c is None for c in cells) else \
                            average_cell(cells, ci95)  # type: ignore[arg-type]
                        row.append(compared(avg, r.average))
                    label = r.method if name is None else f"{r.method} vs {runs.labels[name]}"
                    rows.append((label, row))
            title = (f"{ref.title}: {n_shots} shots" if n_shots else f"{ref.title}: zero-shot")
            out.append(Comparison(f"reference_{ref.name}_{n_shots}shots", title, "Method",
                                  labels + (["Average"] if with_avg else []), rows, notes))
    else:  # ood: the source's few-shot runs, then the targets' runs of the same models
        source = ref.source_dataset
        for backbone in dict.fromkeys(r.backbone for r in ref.rows):
            rows = []
            for r in (r for r in ref.rows if r.backbone == backbone):
                kind = ZEROSHOT if r.shots == 0 else FEWSHOT
                for name in runs.names_of(r, kind, r.shots) or [None]:
                    row = []
                    for c in ref.columns:
                        if name is None:
                            cell = None
                        elif kind == ZEROSHOT or c == source:
                            cell = runs.cell(kind, name, ds[c], r.shots, ci95)
                        else:
                            cell = runs.cell(OOD, name, ds[c], r.shots, ci95, ds[source])
                        row.append(compared(cell, r.values.get(c)))
                    label = r.method if name is None else f"{r.method} vs {runs.labels[name]}"
                    rows.append((label, row))
            out.append(Comparison(f"reference_{ref.name}_{_slug(backbone)}",
                                  f"{ref.title}: {backbone}", "Method", labels, rows, notes))
    return out


def _base2new(runs: "_Runs", ref: RefTable, ds: Dict[str, str], ci95: bool,
              notes: List[str]) -> Comparison:
    """Base / new / H averaged over ``average_over`` (ours empty unless every dataset ran)."""
    rows = []
    for r in ref.rows:
        for name in runs.names_of(r, B2N_BASE, r.shots) or [None]:
            if name is None:
                ours: List[Optional[Cell]] = [None, None, None]
            else:
                sides = []
                for side in (B2N_BASE, B2N_NEW):
                    cells = [runs.cell(side, name, ds[c], r.shots, ci95) for c in ref.average_over]
                    sides.append(None if any(c is None for c in cells) else average_cell(cells, ci95))  # type: ignore[arg-type]
                hm = None if None in sides else h_cell(sides[0], sides[1])  # type: ignore[arg-type]
                ours = [sides[0], sides[1], hm]
            label = r.method if name is None else f"{r.method} vs {runs.labels[name]}"
            rows.append((label, [compared(o, r.values.get(c)) for o, c in zip(ours, B2N_COLUMNS)]))
    shots = sorted({r.shots for r in ref.rows if r.shots})
    return Comparison(f"reference_{ref.name}", f"{ref.title}" + (f": {shots[0]} shots" if len(shots) == 1 else ""),
                      "Method", ["Base", "New", "H"], rows,
                      notes + [f"Base and new: averages over {len(ref.average_over)} datasets; H: the "
                               "harmonic mean of the two averages."])


def _slug(text: str) -> str:
    return "".join(ch.lower() if ch.isalnum() else "_" for ch in text).strip("_")


# ------------------------------------------------------------------------------- rendering
def cell_text(c: Compared, decimals: int = 2, style: str = "md") -> str:
    """``ours / paper (diff)``; an empty side reads ``–`` (``--`` in LaTeX)."""
    dash = "--" if style == "latex" else "–"
    pm = r" $\pm$ " if style == "latex" else " ± "
    if c.ours is None and c.published is None:
        return ""
    ours = dash
    if c.ours is not None:
        ours = f"{c.ours.mean:.{decimals}f}"
        if c.ours.spread is not None:
            ours += pm + f"{c.ours.spread:.{decimals}f}"
        if c.ours.found < c.ours.expected:
            ours += f" ({c.ours.found}/{c.ours.expected})"
        elif c.ours.partial:
            ours += " (partial)"
    paper = dash if c.published is None else f"{c.published:.{decimals}f}"
    text = f"{ours} / {paper}"
    if c.diff is not None:
        diff = f"{c.diff:+.{decimals}f}"
        if c.flags:
            diff = rf"\textbf{{{diff}}}" if style == "latex" else f"**{diff}**"
        text += f" ({diff})"
    return text


def to_markdown(t: Comparison, decimals: int = 2) -> str:
    rows = [[t.row_header] + t.columns] + [[label] + [cell_text(c, decimals) for c in cells]
                                           for label, cells in t.rows]
    rows = [[x.replace("|", r"\|") for x in r] for r in rows]
    widths = [max(3, *(len(r[i]) for r in rows)) for i in range(len(rows[0]))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(x.ljust(w) if i == 0 else x.rjust(w)
                                 for i, (x, w) in enumerate(zip(cells, widths))) + " |"

    rule = "| " + " | ".join(":" + "-" * (w - 1) if i == 0 else "-" * (w - 1) + ":"
                             for i, w in enumerate(widths)) + " |"
    lines = [f"### {t.title}", "", line(rows[0]), rule] + [line(r) for r in rows[1:]]
    return "\n".join(lines + ([""] + [" ".join(t.notes)] if t.notes else []))


def to_latex(t: Comparison, decimals: int = 2) -> str:
    lines = [f"% {t.title}"] + [f"% {n}" for n in t.notes]
    lines += [r"\begin{tabular}{l" + "c" * len(t.columns) + "}", r"\toprule",
              " & ".join(latex_escape(h) for h in [t.row_header] + t.columns) + r" \\", r"\midrule"]
    for label, cells in t.rows:
        lines.append(" & ".join([latex_escape(label)] + [cell_text(c, decimals, "latex")
                                                         for c in cells]) + r" \\")
    return "\n".join(lines + [r"\bottomrule", r"\end{tabular}"])


def to_csv(t: Comparison, decimals: int = 2, spread_name: str = "std") -> str:
    """Long format: one line per (method, column) with ours, spread, runs, published, diff, flag."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method", "column", "ours", spread_name, "runs", "published", "diff", "flag"])

    def num(v: Optional[float]) -> str:
        return "" if v is None else f"{v:.{decimals}f}"

    for label, cells in t.rows:
        for col, c in zip(t.columns, cells):
            o = c.ours
            writer.writerow([label, col, num(c.mean), num(o.spread if o else None),
                             f"{o.found}/{o.expected}" if o else "", num(c.published),
                             num(c.diff), ";".join(c.flags)])
    return buffer.getvalue()


def render(t: Comparison, fmt: str, decimals: int = 2, spread_name: str = "std") -> str:
    if fmt == "md":
        return to_markdown(t, decimals)
    if fmt == "tex":
        return to_latex(t, decimals)
    return to_csv(t, decimals, spread_name)


# ------------------------------------------------------------------------------- plots
def published_curves(ref: RefTable, trainers: Dict[str, str],
                     dataset_map: Optional[Dict[str, str]] = None,
                     names: Optional[Dict[str, str]] = None
                     ) -> Dict[str, Dict[str, Dict[int, float]]]:
    """panel (user dataset folder or ``average``) -> user method label -> shots -> published,
    for the user's methods whose trainer has a row in a few-shot table (``trainers``: label ->
    trainer). Zero-shot rows come at 0 shots."""
    if ref.kind != "fewshot":
        return {}
    ds = {c: (dataset_map or {}).get(c, c) for c in ref.columns}
    out: Dict[str, Dict[str, Dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for label, trainer in trainers.items():
        for r in ref.rows:
            name = (names or {}).get(label, label)
            if r.trainer != trainer or (r.match and matches(r.match, name) is None) \
                    or matches(r.exclude, name) is not None:
                continue
            for c, v in r.values.items():
                out[ds[c]][label][r.shots] = v
            if r.average is not None:
                out["average"][label][r.shots] = r.average
    return out


def reference_figures(curves, ref: RefTable, trainers: Dict[str, str],
                      dataset_map: Optional[Dict[str, str]] = None,
                      names: Optional[Dict[str, str]] = None) -> Dict[str, object]:
    """The accuracy-vs-shots figures (:func:`fsclip.results.plots.curve_figures`) with the
    published curve of each matched method drawn dashed in its colour (zero-shot: dotted, as
    the user's zero-shot line is dashed already). ``trainers``: label -> trainer; ``names``:
    label -> method name, for the rows' match patterns.

    The published average is drawn only when the user's panels are the table's datasets."""
    from matplotlib.figure import Figure

    from .plots import _x, draw_panel, method_colors, require_matplotlib

    require_matplotlib()
    published = published_curves(ref, trainers, dataset_map, names)
    ds = {(dataset_map or {}).get(c, c) for c in ref.columns or ref.average_over}
    if {p for p, _ in curves.panels if p != "average"} != ds:
        published.pop("average", None)
    colors = method_colors(curves.methods)
    figures: Dict[str, object] = {}
    for panel, title in curves.panels:
        fig = Figure(figsize=(5.0, 3.7), layout="constrained")
        ax = fig.add_subplot()
        draw_panel(ax, curves, panel, title, colors, legend=False)
        shots = sorted({s for series in curves.lines.get(panel, {}).values() for s in series})
        for label, series in published.get(panel, {}).items():
            if label not in colors:
                continue
            if label in curves.zero_shot.get(panel, {}) and 0 in series:
                ax.axhline(series[0], color=colors[label], linestyle=":", linewidth=1.3,
                           label=f"{label} ({ref.table})")
            points = [(s, v) for s, v in sorted(series.items())
                      if s > 0 and shots and shots[0] <= s <= shots[-1]]
            if points and label in curves.lines.get(panel, {}):
                ax.plot([_x(s) for s, _ in points], [v for _, v in points], color=colors[label],
                        linestyle="--", marker="x", linewidth=1.4, label=f"{label} ({ref.table})")
        ax.legend(loc="best", fontsize=8, frameon=True, framealpha=0.9, edgecolor="none")
        figures[f"{panel}_{ref.name}"] = fig
    return figures
