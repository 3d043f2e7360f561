"""Display names and order: datasets as the papers print them, methods as the user asks.

Datasets: the folder names of ``configs/datasets`` (and Dassl's class names) map to the
papers' display names; the 11 few-shot benchmarks come in CoOp/CoCoOp's column order, the
ImageNet shifts in CoCoOp's order (V2, Sketch, A, R), then the offline kit's datasets, then any
other dataset sorted by name.

Methods: a method is one series of runs with the same trainer, config and variant folders
(``SAFE/rn50`` and ``SAFE/micro_rn`` are two methods). Its label in tables and plots:

    full     ``Trainer/cfg[/variant...]`` always
    trainer  ``Trainer`` only; an error when two shown methods would get the same label
    auto     ``Trainer`` where the trainer has one config among the shown methods, else ``full``

An eval-only re-run keeps its tag in every mode (``SAFE (beta0.9)``, ``SAFE/rn50 (beta0.9)``).

``--rename NAME=LABEL`` sets a label by hand (NAME: a full name, a trainer or an auto label).
"""

from __future__ import annotations

import fnmatch
import re
from typing import Dict, Iterable, List, Optional, Sequence

from fsclip.errors import ConfigError

# (folder name as in configs/datasets, display name); the order is the papers' column order
_DATASETS = [
    # the 11 few-shot benchmarks, CoOp / CoCoOp order
    ("imagenet", "ImageNet"), ("caltech101", "Caltech101"), ("oxford_pets", "OxfordPets"),
    ("stanford_cars", "StanfordCars"), ("oxford_flowers", "Flowers102"), ("food101", "Food101"),
    ("fgvc_aircraft", "FGVCAircraft"), ("sun397", "SUN397"), ("dtd", "DTD"),
    ("eurosat", "EuroSAT"), ("ucf101", "UCF101"),
    # ImageNet shifts (distribution-shift targets)
    ("imagenetv2", "ImageNet-V2"), ("imagenet_sketch", "ImageNet-Sketch"),
    ("imagenet_a", "ImageNet-A"), ("imagenet_r", "ImageNet-R"),
    # the offline kit
    ("synth_shapes", "SynthShapes"), ("synth_textures", "SynthTextures"),
    ("synth_shapes_sketch", "SynthShapesSketch"),
]
# Dassl / CoOp class names and other spellings of the same datasets
_ALIASES = {"oxfordflowers": "oxford_flowers", "flowers102": "oxford_flowers",
            "describabletextures": "dtd", "imagenetadversarial": "imagenet_a",
            "imagenetrendition": "imagenet_r", "caltech": "caltech101"}


# datasets with a test split only (distribution-shift targets): never few-shot columns
_TEST_ONLY = {"imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r", "synth_shapes_sketch"}


BENCHMARKS = [key for key, _ in _DATASETS[:11]]  # the 11 few-shot benchmarks


def benchmark_targets(source: str) -> List[str]:
    """The cross-dataset targets of a source among the 11 benchmarks: the ten others, in the
    papers' order (CoOp's and CoCoOp's Table 2); none for another source."""
    i = _BY_NORM.get(_norm(source))
    if i is None or i >= len(BENCHMARKS):
        return []
    return [d for d in BENCHMARKS if d != BENCHMARKS[i]]


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


_BY_NORM = {_norm(key): i for i, (key, _) in enumerate(_DATASETS)}
_BY_NORM.update({alias: _BY_NORM[_norm(key)] for alias, key in _ALIASES.items()})


def _known(dataset: str) -> Optional[int]:
    return _BY_NORM.get(_norm(dataset))


def dataset_label(dataset: str) -> str:
    """The papers' display name of a dataset folder (``oxford_flowers`` -> ``Flowers102``)."""
    i = _known(dataset)
    return dataset if i is None else _DATASETS[i][1]


def is_test_only(dataset: str) -> bool:
    """A distribution-shift target (ImageNet-V2/Sketch/A/R, SynthShapesSketch): no training split."""
    i = _known(dataset)
    return i is not None and _DATASETS[i][0] in _TEST_ONLY


def order_datasets(datasets: Iterable[str]) -> List[str]:
    """Known datasets in the papers' order, then the others sorted by name."""
    unique = set(datasets)
    return sorted(unique, key=lambda d: (0, _known(d), "") if _known(d) is not None
                  else (1, 0, d.lower()))


def matches(patterns: Sequence[str], *names: str) -> Optional[int]:
    """Index of the first shell-style pattern (``SAFE*``, ``*/micro_rn``) matching any of
    ``names``, case-insensitively; None when none does."""
    for i, pattern in enumerate(patterns):
        if any(fnmatch.fnmatchcase(n.lower(), pattern.lower()) for n in names if n):
            return i
    return None


def select_datasets(datasets: Iterable[str], patterns: Sequence[str]) -> List[str]:
    """Datasets matching the patterns (folder or display name), in the patterns' order, else
    the papers' order."""
    ordered = order_datasets(datasets)
    if not patterns:
        return ordered
    picked = [(matches(patterns, d, dataset_label(d)), i, d) for i, d in enumerate(ordered)]
    return [d for m, _, d in sorted(p for p in picked if p[0] is not None)]


def parse_renames(pairs: Sequence[str]) -> Dict[str, str]:
    """``["SAFE/rn50=SAFE", ...]`` -> ``{"SAFE/rn50": "SAFE"}``."""
    renames = {}
    for pair in pairs:
        old, sep, new = pair.partition("=")
        if not sep or not old.strip() or not new.strip():
            raise ConfigError(f"--rename {pair!r}: expected NAME=LABEL, e.g. SAFE/rn50=SAFE")
        renames[old.strip()] = new.strip()
    return renames


def method_labels(names: Iterable[str], trainers: Dict[str, str], mode: str = "auto",
                  renames: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The label of every method ``name`` (full name -> label); see the module docstring.

    ``trainers`` maps a full name to its trainer. Raises ConfigError when two methods would
    share a label.
    """
    names = sorted(set(names))
    renames = renames or {}
    configs: Dict[str, set] = {}  # trainer -> its methods' names without eval tags
    for name in names:
        configs.setdefault(trainers[name], set()).add(_untagged(name))
    if mode not in ("auto", "trainer", "full"):
        raise ConfigError(f"--method-name {mode!r}: choose auto, trainer or full")
    labels = {}
    for name in names:
        tag = name[len(_untagged(name)):]  # " (beta0.9)" of an eval-only re-run, else ""
        if mode == "full" or (mode == "auto" and len(configs[trainers[name]]) > 1):
            labels[name] = name
        else:
            labels[name] = trainers[name] + tag
    for name in names:  # names a rename does not match are left alone (one list for every run)
        key = next((k for k in (name, labels[name], trainers[name]) if k in renames), None)
        if key is not None:  # a trainer's new label keeps the eval tag
            labels[name] = renames[key] + (name[len(_untagged(name)):] if key == trainers[name] else "")
    seen: Dict[str, str] = {}
    for name in names:
        if labels[name] in seen:
            raise ConfigError(
                f"methods {seen[labels[name]]!r} and {name!r} would both be labelled "
                f"{labels[name]!r}: use --method-name full (or auto), pick one with --methods, "
                "or name them with --rename NAME=LABEL")
        seen[labels[name]] = name
    return labels


def _untagged(name: str) -> str:
    """``SAFE/rn50 (beta0.9)`` -> ``SAFE/rn50``."""
    return name.split(" (", 1)[0]
