"""The few-shot protocol's per-shot training length (CoOp's schedule), for any trainer.

CoOp trains 50 epochs at 1 shot, 100 at 2 and 4 shots and 200 at 8 and 16 (ImageNet: 50 at
every shot, its ``rn50_ep50`` config); methods that follow it (CoOp, CoCoOp, ProGrad, KgCoOp,
VT-CLIP, ...) set ``OPTIM.EPOCHS_BY_SHOTS`` in their configs to ``[[1, 50], [2, 100], [4, 100],
[8, 200], [16, 200]]`` and ``train.py`` resolves ``OPTIM.MAX_EPOCH`` from ``DATASET.NUM_SHOTS``
after merging the configs, so the log's config shows the epochs actually run. An explicit
``OPTIM.MAX_EPOCH`` on the command line wins; an empty list (the default) leaves MAX_EPOCH alone.
"""

from __future__ import annotations

from typing import Sequence

from fsclip.errors import ConfigError

COOP_EPOCHS_BY_SHOTS = ((1, 50), (2, 100), (4, 100), (8, 200), (16, 200))


def add_protocol_cfg(cfg) -> None:
    """Add ``OPTIM.EPOCHS_BY_SHOTS`` (idempotent; works on our config and on Dassl's)."""
    if "EPOCHS_BY_SHOTS" not in cfg.OPTIM:
        # [[shots, epochs], ...]: MAX_EPOCH for DATASET.NUM_SHOTS (a shot count between two entries
        # takes the next larger one's); [] keeps OPTIM.MAX_EPOCH
        cfg.OPTIM.EPOCHS_BY_SHOTS = []


def epochs_for_shots(table: Sequence[Sequence[int]], shots: int) -> int:
    """The epochs of ``table`` ([[shots, epochs], ...]) for ``shots``: the entry with the smallest
    shot count >= ``shots``, else the largest entry."""
    try:
        pairs = sorted((int(s), int(e)) for s, e in table)
    except (TypeError, ValueError):
        raise ConfigError(f"OPTIM.EPOCHS_BY_SHOTS must be a list of [shots, epochs] pairs, got {list(table)}") from None
    if not pairs:
        raise ConfigError("OPTIM.EPOCHS_BY_SHOTS is empty")
    for s, e in pairs:
        if shots <= s:
            return e
    return pairs[-1][1]


def resolve_max_epoch(cfg, explicit: bool = False) -> None:
    """Set ``OPTIM.MAX_EPOCH`` from ``OPTIM.EPOCHS_BY_SHOTS`` and ``DATASET.NUM_SHOTS`` (before
    freezing); nothing happens when the table is empty, shots < 1, or ``explicit`` (MAX_EPOCH
    given on the command line)."""
    table = cfg.OPTIM.get("EPOCHS_BY_SHOTS", [])
    if explicit or not table or int(cfg.DATASET.NUM_SHOTS) < 1:
        return
    cfg.OPTIM.MAX_EPOCH = epochs_for_shots(table, int(cfg.DATASET.NUM_SHOTS))
