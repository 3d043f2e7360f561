"""Shared pieces of the learning tests: one real kit run of a trainer, and tables over seeds.

A learning test runs a trainer on the offline kit's synthetic benchmark (generated once per test
session under ``kit_root``) with the committed MicroRN / MicroViT weights and the shipped
``configs/trainers/<Trainer>/micro_{rn,vit}.yaml``, and compares its mean test accuracy over
seeds 1-3 with zero-shot CLIP's (the ensemble prompts the frozen-feature methods use).
"""

from __future__ import annotations

import contextlib
import io
import os.path as osp
import re
from typing import Dict, Iterable, Optional, Sequence, Tuple

import fsclip.datasets  # noqa: F401
import fsclip.trainers  # noqa: F401
from fsclip.backend import build_trainer
from fsclip.cli import extend_cfg
from fsclip.engine.config import get_cfg_default
from fsclip.engine.utils import set_random_seed
from fsclip.protocol import resolve_max_epoch

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DATASETS = ("synth_shapes", "synth_textures")
SEEDS = (1, 2, 3)  # few-shot draws; methods are compared on their mean, as the protocol reports
MARGIN = 3.0  # accuracy points over zero-shot that count as "learned"


def config_file(trainer: str, kit_cfg: str) -> str:
    folder = "ZeroshotCLIP" if trainer.startswith("ZeroshotCLIP") else trainer
    return osp.join(REPO, "configs", "trainers", folder, f"{kit_cfg}.yaml")


def kit_trainer(trainer: str, dataset: str, root: str, cache: str, out: str, seed: int,
                kit_cfg: str = "micro_rn", shots: int = 4, opts: Optional[Sequence] = None):
    """``trainer`` built on a kit dataset with its kit config (``opts``: extra KEY VALUE pairs)."""
    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.merge_from_file(osp.join(REPO, "configs", "datasets", f"{dataset}.yaml"))
    cfg.merge_from_file(config_file(trainer, kit_cfg))
    cfg.DATASET.ROOT = root
    cfg.DATASET.NUM_SHOTS = shots
    cfg.SEED = seed
    cfg.TRAINER.NAME = trainer
    cfg.OUTPUT_DIR = out
    cfg.USE_CUDA = False
    if "FEATURES" in cfg.TRAINER:
        cfg.TRAINER.FEATURES.CACHE_DIR = cache
    if opts:
        cfg.merge_from_list(list(opts))
    resolve_max_epoch(cfg, explicit="OPTIM.MAX_EPOCH" in list(opts or [])[::2])
    set_random_seed(seed)  # as train.py does: a trainer's random init does not depend on earlier runs
    return build_trainer(cfg)


def run_kit(trainer: str, dataset: str, root: str, cache: str, out: str, seed: int,
            kit_cfg: str = "micro_rn", shots: int = 4, opts: Optional[Sequence] = None) -> float:
    """Train ``trainer`` on a kit dataset in this process; its final test accuracy (%)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        kit_trainer(trainer, dataset, root, cache, out, seed, kit_cfg, shots, opts).train()
    tail = buf.getvalue().split("Finish training")[1]
    return float(re.search(r"^\* accuracy: ([\d.]+)%$", tail, re.M).group(1))


def zero_shot(dataset: str, root: str, cache: str, out, kit_cfg: str = "micro_rn",
              trainer: str = "ZeroshotCLIP2") -> float:
    """Zero-shot CLIP (does not depend on the seed): the template ensemble (``ZeroshotCLIP2``) or
    the dataset's single template (``ZeroshotCLIP``)."""
    return run_kit(trainer, dataset, root, cache, str(out / f"{kit_cfg}_{dataset}_zs"), 1, kit_cfg)


def learning_table(kit_cfg: str, methods: Iterable[str], root: str, cache: str, out,
                   datasets: Sequence[str] = DATASETS, opts: Optional[Dict[str, Sequence]] = None,
                   zero_shot_trainer: str = "ZeroshotCLIP2") -> Dict[Tuple[str, str], float]:
    """{(dataset, "ZeroShot" or method): accuracy}; a method's is its mean over SEEDS.

    ``opts`` maps a method to extra KEY VALUE options for its runs; ``zero_shot_trainer`` gives
    the "ZeroShot" entry (the prompts the methods start from).
    """
    table: Dict[Tuple[str, str], float] = {}
    methods = list(methods)
    for dataset in datasets:
        table[(dataset, "ZeroShot")] = zero_shot(dataset, root, cache, out, kit_cfg, zero_shot_trainer)
        for m in methods:
            accs = [run_kit(m, dataset, root, cache, str(out / dataset / m / f"seed{s}"), s, kit_cfg,
                            opts=(opts or {}).get(m)) for s in SEEDS]
            table[(dataset, m)] = sum(accs) / len(accs)
            print(f"{kit_cfg} {dataset:15s} {m:14s} seeds {SEEDS}: " + " ".join(f"{a:5.1f}" for a in accs))
    print("\n" + "\n".join(f"{kit_cfg} {d:15s} {m:14s} {a:5.1f}%" for (d, m), a in sorted(table.items())))
    return table
