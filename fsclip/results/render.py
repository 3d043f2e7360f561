"""Render :class:`~fsclip.results.tables.Table` as markdown, LaTeX (booktabs) or CSV.

A cell reads ``72.31 ± 1.20``: the mean over seeds and its spread (std or ci95; none for a single
run). The best per column is bold (markdown ``**72.31**``, LaTeX ``\\textbf{72.31}``). A cell
with fewer results than expected runs ends in ``(k/n)``; an average over cells that miss runs
in ``(partial)``; a cell without any result reads ``missing (0/n)``. A cell the table does not
hold (a cross-dataset target that was not run) is empty in every format.

CSV is for spreadsheets and scripts: one row per method, for each column three fields (the
mean as a plain number, empty when missing; ``<column> std`` or ``<column> ci95``; ``<column>
runs`` as ``k/n``, plus `` partial`` for partial averages) and a last field ``best`` listing the
columns where the row is best, separated by ``;``. Base-to-new tables start with a ``dataset``
field.
"""

from __future__ import annotations

import csv
import io
from typing import Iterable, List, Sequence

from .cells import Cell
from .tables import Table

FORMATS = {"md": "md", "markdown": "md", "latex": "tex", "tex": "tex", "csv": "csv"}


def cell_text(cell: Cell, decimals: int = 2, style: str = "md", best: bool = False) -> str:
    """One cell as text (style ``md``, ``latex`` or ``plain``: ASCII ``+-`` as CoOp prints);
    ``best`` puts the mean in bold (md, latex)."""
    count = f"({cell.found}/{cell.expected})"
    if cell.missing:
        return (r"\textit{missing} " if style == "latex" else "missing ") + count
    mean = f"{cell.mean:.{decimals}f}"
    if best:
        mean = {"md": f"**{mean}**", "latex": rf"\textbf{{{mean}}}"}.get(style, mean)
    text = mean
    if cell.spread is not None:
        text += {"latex": r" $\pm$ ", "md": " ± "}.get(style, " +- ") + f"{cell.spread:.{decimals}f}"
    if cell.found < cell.expected:
        text += " " + count
    elif cell.partial:
        text += " (partial)"
    return text


def _rows(table: Table) -> Iterable[tuple]:
    """(group, first row of its group?, row label) in order."""
    for group, rows in table.groups:
        for i, row in enumerate(rows):
            yield group, i == 0, row


def to_markdown(table: Table, decimals: int = 2) -> str:
    """A GitHub markdown table, padded so that it also reads well on a terminal."""
    lead = 2 if table.group_header else 1
    header = ([table.group_header] if table.group_header else []) + [table.row_header] + table.columns
    rows = []
    for group, first, row in _rows(table):
        cells = [_text(table, (group, row, col), decimals, "md") for col in table.columns]
        rows.append(([f"**{group}**" if first else ""] if table.group_header else []) + [row] + cells)
    rows = [[c.replace("|", r"\|") for c in r] for r in [header] + rows]
    widths = [max(3, *(len(r[i]) for r in rows)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if i < lead else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    rule = "| " + " | ".join(":" + "-" * (w - 1) if i < lead else "-" * (w - 1) + ":"
                             for i, w in enumerate(widths)) + " |"
    lines = [f"### {table.title}", "", line(rows[0]), rule] + [line(r) for r in rows[1:]]
    if table.notes:
        lines += ["", " ".join(table.notes)]
    return "\n".join(lines)


def _text(table: Table, key: tuple, decimals: int, style: str) -> str:
    if key not in table.cells:  # an empty cell (a column of the protocol that was not run)
        return ""
    return cell_text(table.cells[key], decimals, style, key in table.best)


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def to_latex(table: Table, decimals: int = 2) -> str:
    """A booktabs ``tabular`` (wrap it in your own ``table`` with ``\\input``); the title and
    notes come as ``%`` comments above it."""
    lead = 2 if table.group_header else 1
    lines = [f"% {table.title}"] + [f"% {note}" for note in table.notes]
    lines += [r"\begin{tabular}{" + "l" * lead + "c" * len(table.columns) + "}", r"\toprule"]
    if table.column_spans:
        spans, rules, at = [], [], lead + 1
        for label, width in table.column_spans:
            spans.append(rf"\multicolumn{{{width}}}{{c}}{{{latex_escape(label)}}}")
            rules.append(rf"\cmidrule(lr){{{at}-{at + width - 1}}}")
            at += width
        lines.append(" & " * lead + " & ".join(spans) + r" \\")
        lines.append(" ".join(rules))
    header = ([table.group_header] if table.group_header else []) + [table.row_header] + table.columns
    lines += [" & ".join(latex_escape(h) for h in header) + r" \\", r"\midrule"]
    for g, (group, first, row) in enumerate(_rows(table)):
        if table.group_header and first and g:
            lines.append(r"\midrule")
        cells = [_text(table, (group, row, col), decimals, "latex") for col in table.columns]
        lead_cells = [latex_escape(group) if first else ""] if table.group_header else []
        lines.append(" & ".join(lead_cells + [latex_escape(row)] + cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines)


def to_csv(table: Table, decimals: int = 2, spread_name: str = "std") -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header: List[str] = (["dataset"] if table.group_header else []) + ["method"]
    for col in table.columns:
        header += [col, f"{col} {spread_name}", f"{col} runs"]
    writer.writerow(header + ["best"])
    for group, _, row in _rows(table):
        fields: List[str] = ([group] if table.group_header else []) + [row]
        best = []
        for col in table.columns:
            cell = table.cells.get((group, row, col))
            if cell is None:  # an empty cell: not run
                fields += ["", "", ""]
                continue
            fields += [_number(cell.mean, decimals), _number(cell.spread, decimals),
                       f"{cell.found}/{cell.expected}" + (" partial" if cell.partial else "")]
            if (group, row, col) in table.best:
                best.append(col)
        writer.writerow(fields + [";".join(best)])
    return buffer.getvalue()


def _number(value, decimals: int) -> str:
    return "" if value is None else f"{value:.{decimals}f}"


def render(table: Table, fmt: str, decimals: int = 2, spread_name: str = "std") -> str:
    fmt = FORMATS[fmt]
    if fmt == "md":
        return to_markdown(table, decimals)
    if fmt == "tex":
        return to_latex(table, decimals)
    return to_csv(table, decimals, spread_name)


def problems_markdown(problems: Sequence[str]) -> str:
    if not problems:
        return ""
    return "### Missing runs (not in any mean)\n\n" + "\n".join(f"- {p}" for p in problems)
