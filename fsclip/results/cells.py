"""Table cells: a method's runs over seeds, averages over datasets, harmonic means, best marks.

Nothing is averaged silently: a cell counts the runs it expected (the seeds seen anywhere in the
same table, or ``--seeds``) and those with a result; an average over datasets with a missing
cell is itself missing (never a mean of fewer datasets), and an average over cells that miss
some seeds is marked partial.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from .parse import RunResult, harmonic_mean, summarize


@dataclass
class Cell:
    """A mean with its spread over seeds (std or ci95), or a missing value.

    ``found`` / ``expected`` count runs (seeds), datasets for an average, sides for H. ``partial``: an
    average (or H) over cells that miss some runs. ``per_seed``: seed -> value (None for a run
    without seed folders, e.g. zero-shot), used to average over datasets seed by seed.
    """

    mean: Optional[float] = None
    spread: Optional[float] = None
    found: int = 0
    expected: int = 0
    partial: bool = False
    per_seed: Dict[Optional[int], float] = field(default_factory=dict)

    @property
    def missing(self) -> bool:
        return self.mean is None

    @property
    def incomplete(self) -> bool:
        """Has a value, but from fewer runs (or datasets) than expected, or partial ones."""
        return self.mean is not None and (self.found < self.expected or self.partial)


def seed_cell(results: Dict[Optional[int], RunResult], expected_seeds: Sequence[int],
              ci95: bool = False) -> Cell:
    """The cell of one method on one dataset at one shot count from its runs (seed -> result).

    It expects a run for every seed of ``expected_seeds`` and every other seed it has; a
    method whose runs have no seed folders (zero-shot) passes no seeds and expects one run.
    """
    values = {seed: r.value for seed, r in results.items() if r.ok}
    expected = len(set(results) | set(expected_seeds)) or 1
    cell = Cell(found=len(values), expected=expected, per_seed=values)  # type: ignore[arg-type]
    if values:
        cell.mean, spread = summarize(list(values.values()), ci95)  # type: ignore[arg-type]
        cell.spread = spread if len(values) > 1 else None
    return cell


def average_cell(cells: Sequence[Cell], ci95: bool = False) -> Cell:
    """The mean over datasets of the cells' means; missing when any cell is missing.

    Its spread is that of the per-seed averages (the average over datasets of seed s, for each
    seed) when every cell has the same seeds, all complete; otherwise no spread.
    """
    found = sum(not c.missing for c in cells)
    avg = Cell(found=found, expected=len(cells))
    if not cells or found < len(cells):
        return avg
    avg.mean = sum(c.mean for c in cells) / len(cells)  # type: ignore[misc]
    avg.partial = any(c.incomplete for c in cells)
    seeds = set(cells[0].per_seed)
    if not avg.partial and len(seeds) > 1 and None not in seeds \
            and all(set(c.per_seed) == seeds for c in cells):
        per_seed = {s: sum(c.per_seed[s] for c in cells) / len(cells) for s in sorted(seeds)}
        _, avg.spread = summarize(list(per_seed.values()), ci95)
        avg.per_seed = per_seed  # type: ignore[assignment]
    return avg


def h_cell(base: Cell, new: Cell) -> Cell:
    """CoCoOp's H: the harmonic mean of the mean base and mean new accuracies (no spread).

    It counts its two sides: ``found`` of 2 have a value; partial when a side misses runs.
    """
    h = Cell(found=int(not base.missing) + int(not new.missing), expected=2)
    if base.missing or new.missing:
        return h
    h.mean = harmonic_mean(base.mean, new.mean)  # type: ignore[arg-type]
    h.partial = base.incomplete or new.incomplete
    return h


def best_of(cells: Sequence[Cell], decimals: int = 2, higher_is_better: bool = True) -> List[bool]:
    """Which of ``cells`` (one column) hold the best mean; ties at the printed precision all do."""
    rounded = [None if c.missing else round(c.mean, decimals) for c in cells]  # type: ignore[arg-type]
    values = [v for v in rounded if v is not None]
    if not values:
        return [False] * len(cells)
    best = max(values) if higher_is_better else min(values)
    return [v == best for v in rounded]
