"""SAFE's beta study (paper Sec. IV-D1, Fig. 5): accuracy per beta and dataset, and delta accuracy.

Reads the eval-only runs that scripts/safe/beta_sweep.sh writes,

    OUTPUT/evaluation/SOURCE/SAFE/NAME_beta<b>/seed<S>/log.txt                (source test set)
    OUTPUT/evaluation/TARGET/SAFE/NAME_from_SOURCE_beta<b>/seed<S>/log.txt    (shifted sets)

with the results parser (``parse_dir``: the final ``* accuracy`` after ``=> result``), and writes
``OUTPUT/beta_sweep/NAME_from_SOURCE.md`` (accuracy, mean +- std over seeds, one row per beta,
one column per dataset) and ``.png`` (the paper's plot: accuracy(beta) - accuracy(beta = 0) per
seed, averaged over seeds, against beta, one line per dataset).

    python -m fsclip.results.beta_sweep OUTPUT --source imagenet --name rn50_16shots \
        --betas 0.0 0.5 1.0 --targets imagenetv2 imagenet_sketch
"""

from __future__ import annotations

import argparse
import os
import os.path as osp
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from fsclip.engine.fileio import atomic_write_bytes

from .names import dataset_label
from .parse import parse_dir, subdirs, summarize

# {dataset: {beta: {seed folder: accuracy}}}
Sweep = Dict[str, Dict[str, Dict[str, float]]]


def beta_dir(output: str, dataset: str, source: str, name: str, beta: str, trainer: str = "SAFE") -> str:
    """The folder of one beta's eval-only runs (seed<S> inside)."""
    tail = f"{name}_beta{beta}" if dataset == source else f"{name}_from_{source}_beta{beta}"
    return osp.join(output, "evaluation", dataset, trainer, tail)


def collect(output: str, source: str, name: str, betas: Sequence[str], targets: Sequence[str] = (),
            trainer: str = "SAFE") -> Tuple[Sweep, List[str]]:
    """Accuracies of every (dataset, beta, seed) found, and one line per missing run."""
    sweep: Sweep = {}
    problems: List[str] = []
    for dataset in [source, *targets]:
        sweep[dataset] = {}
        for beta in betas:
            folder = beta_dir(output, dataset, source, name, beta, trainer)
            runs: Dict[str, float] = {}
            if not osp.isdir(folder):
                problems.append(f"{folder}: missing")
            else:
                for seed, res in zip(subdirs(folder), parse_dir(folder, test_log=True)):
                    if res.ok:
                        runs[seed] = float(res.value)  # type: ignore[arg-type]
                    else:
                        problems.append(f"{res.path}: {res.problem}")
            sweep[dataset][beta] = runs
    return sweep, problems


def deltas(runs: Dict[str, Dict[str, float]], betas: Sequence[str]) -> Dict[str, Optional[float]]:
    """Mean over seeds of accuracy(beta) - accuracy(betas[0]) (seeds that have both)."""
    ref = runs.get(betas[0], {})
    out: Dict[str, Optional[float]] = {}
    for beta in betas:
        diffs = [runs[beta][s] - ref[s] for s in runs.get(beta, {}) if s in ref]
        out[beta] = sum(diffs) / len(diffs) if diffs else None
    return out


def table(sweep: Sweep, betas: Sequence[str], title: str) -> str:
    """Markdown: one row per beta, one column per dataset, ``mean +- std`` over seeds."""
    datasets = list(sweep)
    lines = [title, "", "| beta | " + " | ".join(dataset_label(d) for d in datasets) + " |",
             "| --: |" + " --: |" * len(datasets)]
    for beta in betas:
        cells = []
        for d in datasets:
            vals = list(sweep[d].get(beta, {}).values())
            if vals:
                mean, std = summarize(vals)
                cells.append(f"{mean:.2f} +- {std:.2f}")
            else:
                cells.append("-")
        lines.append(f"| {beta} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def delta_figure(sweep: Sweep, betas: Sequence[str], title: str):
    """The paper's Fig. 5 panel: delta accuracy (vs the first beta) against beta, one line per dataset."""
    from matplotlib.figure import Figure

    from .plots import _COLORS, require_matplotlib
    require_matplotlib()
    fig = Figure(figsize=(5.0, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    for i, (dataset, runs) in enumerate(sweep.items()):
        d = deltas(runs, betas)
        pts = [(float(b), v) for b, v in d.items() if v is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=_COLORS[i % len(_COLORS)],
                    label=dataset_label(dataset))
    ax.axhline(0.0, color="#999999", linewidth=0.8)
    ax.set_xlabel("beta")
    ax.set_ylabel(f"delta accuracy (%) vs beta = {betas[0]}")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def write_report(output: str, source: str, name: str, betas: Sequence[str], targets: Sequence[str] = (),
                 trainer: str = "SAFE", plot: bool = True) -> Tuple[str, List[str], List[str]]:
    """Table (printed and written) and plot; returns (table text, written paths, problems)."""
    sweep, problems = collect(output, source, name, betas, targets, trainer)
    title = f"{trainer} beta sweep ({name}, trained on {source}): test accuracy (%), mean +- std over seeds"
    text = table(sweep, betas, title)
    out_dir = osp.join(output, "beta_sweep")
    os.makedirs(out_dir, exist_ok=True)
    stem = osp.join(out_dir, f"{name}_from_{source}")
    paths = [stem + ".md"]
    atomic_write_bytes(paths[0], text.encode("utf-8"))
    if plot:
        import io
        fig = delta_figure(sweep, betas, f"{trainer} {name}, trained on {source}")
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=150)
        atomic_write_bytes(stem + ".png", buffer.getvalue())
        paths.append(stem + ".png")
    return text, paths, problems


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fsclip.results.beta_sweep", description=__doc__.split("\n")[0])
    p.add_argument("output", help="the scripts' OUTPUT root")
    p.add_argument("--source", required=True, help="the training dataset")
    p.add_argument("--name", required=True, help="the run folder name, e.g. rn50_16shots")
    p.add_argument("--betas", nargs="+", required=True)
    p.add_argument("--targets", nargs="*", default=[])
    p.add_argument("--trainer", default="SAFE")
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args(argv)
    text, paths, problems = write_report(args.output, args.source, args.name, args.betas, args.targets,
                                         args.trainer, plot=not args.no_plot)
    print(text)
    for path in paths:
        print(f"wrote {path}")
    for line in problems:
        print(f"WARNING: {line}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
