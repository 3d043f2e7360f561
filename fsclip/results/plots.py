"""Accuracy-vs-shots curves (CoOp's Fig. 3 / draw_curves.py, SAFE's Fig. 2) from the runs.

One figure per dataset plus the average over datasets, and an overview with every panel: one
line per method (mean over seeds, a band of +- std or ci95), zero-shot methods as a dashed
horizontal line with a star at 0 shots. Shots sit on a log2 axis (1, 2, 4, 8, 16 evenly
spaced), 0 one step left of the smallest. A hollow marker is a mean over fewer seeds than
expected (or an average over such cells); a point whose cell is missing is left out.

matplotlib is optional (``pip install 'fsclip[plots]'``). Figures are built with
``matplotlib.figure.Figure`` directly (no pyplot, no display, Agg rendering) and written
atomically as PNG and/or PDF.
"""

from __future__ import annotations

import io
import math
import os
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence

from fsclip.engine.fileio import atomic_write_bytes
from fsclip.errors import MissingDependencyError

from .tables import Curves

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PLOT_FORMATS = ("png", "pdf")
_COLORS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000",
           "#F0E442", "#882255", "#44AA99", "#999933", "#AA4499"]  # Okabe-Ito, then Tol
_MARKERS = ["o", "s", "^", "D"]
_DASHES = ["-", (0, (4, 1.5)), (0, (1, 1.2)), "-."]


def require_matplotlib() -> None:
    """Raise a one-line, actionable error when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        raise MissingDependencyError(
            "plots need matplotlib, which is not installed: pip install 'fsclip[plots]' "
            "(or pip install matplotlib), or leave out --plots") from err


def _x(shots: int) -> float:
    return math.log2(shots)


def draw_panel(ax: "Axes", curves: Curves, panel: str, title: str,
               colors: Dict[str, str], legend: bool = True) -> None:
    """One dataset (or the average) on ``ax``: a Line2D labelled with the method per method."""
    lines = curves.lines.get(panel, {})
    zero = curves.zero_shot.get(panel, {})
    shots = sorted({s for series in lines.values() for s in series if s > 0})
    x0 = (_x(shots[0]) - 1) if shots else 0.0
    for i, label in enumerate(curves.methods):
        color = colors[label]
        cycle = i // len(_COLORS)  # past the palette: another marker and dash pattern
        marker, dashes = _MARKERS[cycle % len(_MARKERS)], _DASHES[cycle % len(_DASHES)]
        if label in lines:
            series = sorted((s, c) for s, c in lines[label].items() if s > 0)
            xs = [_x(s) for s, _ in series]
            ys = [_value(c.mean) for _, c in series]
            ax.plot(xs, ys, marker=marker, markersize=4.5, linewidth=1.8, color=color, label=label,
                    linestyle=dashes, zorder=3)
            low = [_value(c.mean, c.spread, -1) for _, c in series]
            high = [_value(c.mean, c.spread, 1) for _, c in series]
            ax.fill_between(xs, low, high, color=color, alpha=0.15, linewidth=0, zorder=2)
            hollow = [(x, y) for x, y, (_, c) in zip(xs, ys, series) if c.incomplete]
            if hollow:
                ax.scatter(*zip(*hollow), s=22, facecolors="white", edgecolors=color,
                           linewidths=1.4, zorder=4)
        if label in zero and not zero[label].missing:
            cell = zero[label]
            ax.axhline(cell.mean, color=color, linestyle="--", linewidth=1.3, label=label, zorder=1)
            ax.plot([x0], [cell.mean], marker="*", markersize=11, color=color, linestyle="none",
                    label=f"_{label} at 0 shots", zorder=4,
                    markerfacecolor="white" if cell.incomplete else color)
    ticks = ([0] if zero else []) + shots
    ax.set_xticks([x0 if s == 0 else _x(s) for s in ticks], [str(s) for s in ticks])
    if ticks:
        ax.set_xlim((x0 if zero else _x(shots[0])) - 0.35, (_x(shots[-1]) if shots else 0) + 0.35)
    ax.set_title(title, fontsize=11, fontweight="bold" if panel == "average" else "normal")
    ax.set_xlabel("Shots per class")
    ax.set_ylabel(f"{_metric(curves.keyword)} (%)")
    ax.grid(True, color="#e6e6e6", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=8, frameon=True, framealpha=0.9, edgecolor="none")


def _metric(keyword: str) -> str:
    return keyword[:1].upper() + keyword[1:].replace("_", " ")


def _value(mean: Optional[float], spread: Optional[float] = None, sign: int = 0) -> float:
    if mean is None:
        return float("nan")
    return mean + sign * (spread or 0.0)


def method_colors(methods: Sequence[str]) -> Dict[str, str]:
    return {m: _COLORS[i % len(_COLORS)] for i, m in enumerate(methods)}


def curve_figures(curves: Curves) -> Dict[str, "Figure"]:
    """One figure per panel (dataset folder name, or ``average``) plus ``curves``: all panels
    in one figure with a shared legend."""
    require_matplotlib()
    from matplotlib.figure import Figure

    colors = method_colors(curves.methods)
    figures: Dict[str, Figure] = {}
    for panel, title in curves.panels:
        fig = Figure(figsize=(5.0, 3.7), layout="constrained")
        draw_panel(fig.add_subplot(), curves, panel, title, colors)
        figures[panel] = fig
    if len(curves.panels) > 1:
        n = len(curves.panels)
        cols = min(4, n)
        rows = math.ceil(n / cols)
        fig = Figure(figsize=(3.6 * cols, 2.9 * rows + 0.6), layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=False).ravel()
        for ax, (panel, title) in zip(axes, curves.panels):
            draw_panel(ax, curves, panel, title, colors, legend=False)
        for ax in axes[n:]:
            ax.set_visible(False)
        handles: Dict[str, object] = {}
        for ax in axes[:n]:
            for handle, label in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(label, handle)
        fig.legend(handles.values(), handles.keys(), loc="outside lower center",
                   ncol=min(len(handles), 5), fontsize=9, frameon=False)
        figures["curves"] = fig
    return figures


def save_figures(figures: Dict[str, "Figure"], out_dir: str,
                 formats: Sequence[str] = PLOT_FORMATS, dpi: int = 200) -> List[str]:
    """Write every figure as ``<out_dir>/<name>.<fmt>`` (atomically); returns the paths.

    PDFs embed TrueType fonts (``pdf.fonttype`` 42), not Type 3, which publishers reject.
    """
    import matplotlib

    paths = []
    for name, fig in figures.items():
        for fmt in formats:
            buffer = io.BytesIO()
            with matplotlib.rc_context({"pdf.fonttype": 42}):
                fig.savefig(buffer, format=fmt, dpi=dpi)
            path = os.path.join(out_dir, f"{name}.{fmt}")
            atomic_write_bytes(path, buffer.getvalue())
            paths.append(path)
    return paths

