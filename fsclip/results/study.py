"""A study's table and bar chart: one bar per variant (a run folder of seeds), mean +- std.

SAFE's prompt-choice study (Fig. 8, scripts/safe/prompts.sh) and its which-layers study (Sec.
IV-D2, scripts/safe/layers.sh) end here. Each variant is ``LABEL=FOLDER``, FOLDER holding
``seed<S>/log.txt`` runs (read with the results parser: the final ``* accuracy`` of each);
a missing folder or seed is an empty cell and a WARNING line, not an error.

    python -m fsclip.results.study --title "SAFE prompts (synth_shapes, 4 shots)" \
        --out OUTPUT/studies/safe_prompts_synth_shapes_4shots \
        "Class name=OUTPUT/synth_shapes/SAFE/micro_rn_classname_4shots" ...

writes ``<out>.md`` (the printed table) and ``<out>.png`` (the bar chart), atomically.
"""

from __future__ import annotations

import argparse
import io
import os
import os.path as osp
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from fsclip.engine.fileio import atomic_write_bytes

from .parse import parse_dir, subdirs, summarize

Study = List[Tuple[str, Dict[str, float]]]  # [(label, {seed folder: accuracy})]


def collect(variants: Sequence[Tuple[str, str]]) -> Tuple[Study, List[str]]:
    """Accuracy per seed of every variant, and one line per missing run."""
    study: Study = []
    problems: List[str] = []
    for label, folder in variants:
        runs: Dict[str, float] = {}
        if not osp.isdir(folder):
            problems.append(f"{label}: {folder} is missing")
        else:
            for seed, res in zip(subdirs(folder), parse_dir(folder)):
                if res.ok:
                    runs[seed] = float(res.value)  # type: ignore[arg-type]
                else:
                    problems.append(f"{label}: {res.path}: {res.problem}")
        study.append((label, runs))
    return study, problems


def table(study: Study, title: str, header: str = "variant") -> str:
    """Markdown: one row per variant, ``mean +- std`` (seeds), the number of seeds."""
    lines = [title, "", f"| {header} | accuracy (%) | seeds |", "| --- | --: | --: |"]
    for label, runs in study:
        if runs:
            mean, std = summarize(list(runs.values()))
            lines.append(f"| {label} | {mean:.2f} +- {std:.2f} | {len(runs)} |")
        else:
            lines.append(f"| {label} | - | 0 |")
    return "\n".join(lines) + "\n"


def bar_figure(study: Study, title: str, ylabel: str = "test accuracy (%)"):
    """Bars of the mean with the std as error bars, the mean written on each bar (as Fig. 8)."""
    from matplotlib.figure import Figure

    from .plots import _COLORS, require_matplotlib
    require_matplotlib()
    fig = Figure(figsize=(max(4.0, 1.1 * len(study) + 1.5), 3.8))
    ax = fig.add_subplot(1, 1, 1)
    means = [summarize(list(r.values())) if r else (0.0, 0.0) for _, r in study]
    xs = list(range(len(study)))
    bars = ax.bar(xs, [m for m, _ in means], yerr=[s for _, s in means], capsize=3,
                  color=[_COLORS[i % len(_COLORS)] for i in xs])
    present = [m for (m, _), (_, r) in zip(means, study) if r]
    if present:  # start the axis near the lowest bar, as the paper's figures do
        ax.set_ylim(max(0.0, min(present) - 10.0), min(100.0, max(present) + 5.0))
    bottom = ax.get_ylim()[0]
    for bar, (label, runs), (m, sd) in zip(bars, study, means):  # above the error bar; missing: "n/a" on the axis
        ax.text(bar.get_x() + bar.get_width() / 2, max(m + sd, bottom), f"{m:.1f}" if runs else "n/a",
                ha="center", va="bottom", fontsize=8)
    ax.set_xticks(xs)
    ax.set_xticklabels([label for label, _ in study], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def write_report(variants: Sequence[Tuple[str, str]], title: str, out: str, header: str = "variant",
                 plot: bool = True) -> Tuple[str, List[str], List[str], bool]:
    """Table (returned and written to ``out.md``) and bar chart (``out.png``); (text, paths,
    problems, whether any variant has a result)."""
    study, problems = collect(variants)
    text = table(study, title, header)
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    paths = [out + ".md"]
    atomic_write_bytes(paths[0], text.encode("utf-8"))
    if plot and any(r for _, r in study):
        buffer = io.BytesIO()
        bar_figure(study, title).savefig(buffer, format="png", dpi=150)
        atomic_write_bytes(out + ".png", buffer.getvalue())
        paths.append(out + ".png")
    return text, paths, problems, any(r for _, r in study)


def parse_variant(text: str) -> Tuple[str, str]:
    label, sep, folder = text.partition("=")
    if not sep or not label or not folder:
        raise argparse.ArgumentTypeError(f"a variant is LABEL=FOLDER, got {text!r}")
    return label, folder


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fsclip.results.study", description=__doc__.split("\n")[0])
    p.add_argument("variants", nargs="+", type=parse_variant, help="LABEL=FOLDER (seed<S>/log.txt inside)")
    p.add_argument("--title", required=True)
    p.add_argument("--out", required=True, help="path stem of the .md and .png written")
    p.add_argument("--header", default="variant", help="the first column's heading")
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args(argv)
    text, paths, problems, found = write_report(args.variants, args.title, args.out, args.header,
                                                not args.no_plot)
    print(text)
    for path in paths:
        print(f"wrote {path}")
    for line in problems:
        print(f"WARNING: {line}", file=sys.stderr)
    if not found:
        print(f"ERROR: no variant of the study has a result ({len(problems)} runs missing, see the "
              f"WARNING lines); run the study's script first", file=sys.stderr)
    return 0 if found else 1


if __name__ == "__main__":
    sys.exit(main())
