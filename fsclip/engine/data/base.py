"""Datum and DatasetBase with Dassl's semantics, plus a JSON few-shot split cache."""

from __future__ import annotations

import errno
import json
import math
import os
import os.path as osp
import random
from collections import Counter, defaultdict
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ...errors import DataError
from ..utils import atomic_write_text

_WRITE_FAULTS = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded",
                 errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                 errno.EPERM: "operation not permitted"}


def write_fault(err: OSError) -> str:
    """A short reason for a failed write: "disk full", "read-only file system", ... or the
    error's own text."""
    return _WRITE_FAULTS.get(err.errno or 0, f"{type(err).__name__}: {err.strerror or err}")


class SplitWriteError(DataError):
    """A few-shot split file cannot be written (read-only folder, disk full, ...)."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"Cannot write the few-shot split file {path} ({reason}); make its folder "
                         f"writable or free space")


class Datum:
    """One labelled image: ``Datum(impath, label, domain, classname)``."""

    __slots__ = ("_impath", "_label", "_domain", "_classname")

    def __init__(self, impath: str = "", label: int = 0, domain: int = 0, classname: str = "") -> None:
        if not isinstance(impath, str):
            raise TypeError(f"Datum.impath must be a str, got {type(impath).__name__}")
        self._impath = impath
        self._label = int(label)
        self._domain = int(domain)
        self._classname = classname

    @property
    def impath(self) -> str:
        return self._impath

    @property
    def label(self) -> int:
        return self._label

    @property
    def domain(self) -> int:
        return self._domain

    @property
    def classname(self) -> str:
        return self._classname

    def __repr__(self) -> str:
        return f"Datum({self._impath!r}, label={self._label}, classname={self._classname!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Datum) and (
            self._impath, self._label, self._domain, self._classname
        ) == (other._impath, other._label, other._domain, other._classname)

    def __hash__(self) -> int:
        return hash((self._impath, self._label, self._domain, self._classname))


class DatasetBase:
    """A dataset made of ``train_x``, ``train_u``, ``val`` and ``test`` lists of Datum.

    ``num_classes``, ``lab2cname`` and ``classnames`` are computed from ``train_x`` (Dassl),
    falling back to ``test`` for test-only datasets.
    """

    dataset_dir = ""  # folder name under DATASET.ROOT
    domains: List[str] = []
    # Prompt templates (see fsclip.templates): one CoOp template and a hand-engineered ensemble.
    template: str = "a photo of a {}."
    templates: Optional[List[str]] = None

    def __init__(self, train_x=None, train_u=None, val=None, test=None) -> None:
        self._train_x = train_x
        self._train_u = train_u
        self._val = val
        self._test = test
        reference = train_x if train_x else test
        self._num_classes = self.get_num_classes(reference)
        self._lab2cname, self._classnames = self.get_lab2cname(reference)

    @property
    def train_x(self):
        return self._train_x

    @property
    def train_u(self):
        return self._train_u

    @property
    def val(self):
        return self._val

    @property
    def test(self):
        return self._test

    @property
    def lab2cname(self) -> Dict[int, str]:
        return self._lab2cname

    @property
    def classnames(self) -> List[str]:
        return self._classnames

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @staticmethod
    def get_num_classes(data_source: Sequence[Datum]) -> int:
        labels = {item.label for item in data_source}
        return max(labels) + 1

    @staticmethod
    def get_lab2cname(data_source: Sequence[Datum]) -> Tuple[Dict[int, str], List[str]]:
        mapping = {item.label: item.classname for item in data_source}
        labels = sorted(mapping)
        return mapping, [mapping[label] for label in labels]

    def check_input_domains(self, source_domains, target_domains) -> None:
        for domain in list(source_domains) + list(target_domains):
            if domain not in self.domains:
                raise ValueError(
                    f"Input domain must belong to {self.domains}, but got [{domain}]"
                )

    @staticmethod
    def split_dataset_by_label(data_source: Sequence[Datum]) -> Dict[int, List[Datum]]:
        """Group by label; dict order is the order of first appearance."""
        output: Dict[int, List[Datum]] = defaultdict(list)
        for item in data_source:
            output[item.label].append(item)
        return output

    @staticmethod
    def split_dataset_by_domain(data_source: Sequence[Datum]) -> Dict[int, List[Datum]]:
        output: Dict[int, List[Datum]] = defaultdict(list)
        for item in data_source:
            output[item.domain].append(item)
        return output

    def generate_fewshot_dataset(self, *data_sources, num_shots: int = -1, repeat: bool = False):
        """Dassl's few-shot sampler on the global ``random`` state (see ``sample_fewshot``)."""
        if num_shots < 1:
            return data_sources[0] if len(data_sources) == 1 else data_sources
        print(f"Creating a {num_shots}-shot dataset")
        output = [sample_fewshot(src, num_shots, random, repeat) for src in data_sources]  # type: ignore[arg-type]
        return output[0] if len(output) == 1 else output

    @staticmethod
    def subsample_classes(*args, subsample: str = "all"):
        """CoCoOp's base/new split: first ceil(n/2) sorted labels are base, relabelled from 0."""
        if subsample not in ("all", "base", "new"):
            raise ValueError(
                f'DATASET.SUBSAMPLE_CLASSES must be "all", "base" or "new", got "{subsample}"'
            )
        if subsample == "all":
            return args
        labels = sorted({item.label for item in args[0]})
        m = math.ceil(len(labels) / 2)
        print(f"SUBSAMPLE {subsample.upper()} CLASSES!")
        selected = labels[:m] if subsample == "base" else labels[m:]
        relabeler = {y: y_new for y_new, y in enumerate(selected)}
        output = []
        for dataset in args:
            output.append([
                Datum(impath=item.impath, label=relabeler[item.label], domain=item.domain,
                      classname=item.classname)
                for item in dataset if item.label in relabeler
            ])
        return output


def sample_fewshot(data_source: Sequence[Datum], num_shots: int, rng: random.Random,
                   repeat: bool = False) -> List[Datum]:
    """Dassl's algorithm: per label in order of first appearance, ``rng.sample(items, N)``;
    a class with fewer than N items keeps all of them (or ``rng.choices`` with ``repeat``).

    With ``rng = random.Random(seed)`` this picks what a Dassl run seeded with ``seed`` picks.
    """
    picked: List[Datum] = []
    for items in DatasetBase.split_dataset_by_label(data_source).values():
        if len(items) >= num_shots:
            picked.extend(rng.sample(items, num_shots))
        elif repeat:
            picked.extend(rng.choices(items, k=num_shots))
        else:
            picked.extend(items)
    return picked


# --------------------------------------------------------------------------------------------
# Few-shot split cache (JSON instead of CoOp's pickles)
# --------------------------------------------------------------------------------------------

def _encode(items: Sequence[Datum], root: str) -> list:
    return [[osp.relpath(d.impath, root), d.label, d.classname] for d in items]


def _decode(rows: list, root: str, path: str) -> List[Datum]:
    out = []
    for row in rows:
        if not (isinstance(row, list) and len(row) == 3):
            raise ValueError(f"malformed row {row!r} in {path}")
        rel, label, classname = row
        out.append(Datum(impath=osp.join(root, rel), label=int(label), classname=str(classname)))
    return out


def _key(d) -> tuple:
    return (d.impath, int(d.label), d.classname)


def load_or_create_fewshot(train: List[Datum], val: List[Datum],
                           num_shots: int, seed: int, cache_dir: str, image_root: str,
                           disjoint_val: bool = False) -> Tuple[List[Datum], List[Datum]]:
    """Select ``num_shots`` train and ``min(num_shots, 4)`` val images per class, CoOp-style.

    The picks equal CoOp's for a run seeded with ``seed`` (Python's ``random`` seeded with it,
    train sampled first, then val). The result is cached at
    ``cache_dir/shot_{N}-seed_{S}.json`` with image paths relative to ``image_root``; the file
    is written atomically, so concurrent runs leave one valid file. A cache whose entries are
    not part of the current split is ignored and rewritten. A file that cannot be written (a
    read-only folder, a full disk) raises ``SplitWriteError`` naming it.
    """
    if num_shots < 1:
        if num_shots == 0:  # CoOp's meaning: not a few-shot run
            print(f"DATASET.NUM_SHOTS is 0: all {len(train)} training images used")
        return train, val
    path = osp.join(cache_dir, f"shot_{num_shots}-seed_{seed}.json")
    if osp.exists(path):
        try:
            with open(path, "r", encoding="utf-8") as f:
                data = json.load(f)
            cached_train = _decode(data["train"], image_root, path)
            cached_val = _decode(data["val"], image_root, path)
            train_keys, val_keys = {_key(d) for d in train}, {_key(d) for d in val}
            fresh = {_key(d) for d in cached_train} <= train_keys and {_key(d) for d in cached_val} <= val_keys
            if disjoint_val:
                fresh = fresh and not ({_key(d) for d in cached_train} & {_key(d) for d in cached_val})
            if fresh:
                print(f"Loading preprocessed few-shot data from {path}")
                report_fewshot(train, cached_train, cached_val, num_shots)
                return cached_train, cached_val
            print(f"Few-shot split {path} does not match the current split; recreating it")
        except (OSError, ValueError, KeyError, TypeError) as err:
            print(f"Few-shot split {path} is unreadable ({err}); recreating it")
    rng = random.Random(seed)
    print(f"Creating a {num_shots}-shot dataset")
    fs_train = sample_fewshot(train, num_shots, rng)
    if disjoint_val:
        picked = {_key(d) for d in fs_train}
        val = [d for d in val if _key(d) not in picked]
    fs_val = sample_fewshot(val, min(num_shots, 4), rng)
    payload = {"train": _encode(fs_train, image_root), "val": _encode(fs_val, image_root)}
    try:
        os.makedirs(cache_dir, exist_ok=True)
        atomic_write_text(path, json.dumps(payload))
    except OSError as err:  # atomic: no partial file is left behind
        raise SplitWriteError(path, write_fault(err)) from None
    print(f"Saving preprocessed few-shot data to {path}")
    report_fewshot(train, fs_train, fs_val, num_shots)
    return fs_train, fs_val


def _names_by_label(items: Sequence[Datum]) -> Dict[int, str]:
    names: Dict[int, str] = {}
    for d in items:
        names.setdefault(d.label, d.classname or str(d.label))
    return names


def _listed(names: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def count_per_class(items: Sequence[Datum], expected: Optional[int] = None) -> str:
    """A compact count of items per class: ``"16 x 98 classes; 5: cat, owl; 7: dog"``.

    The count shared by most classes (or ``expected`` when some class has it) is summarised;
    the classes with other counts are named, grouped by count.
    """
    names = _names_by_label(items)
    counts = Counter(d.label for d in items)
    groups: Dict[int, List[str]] = defaultdict(list)
    for label in names:
        groups[counts[label]].append(names[label])
    if not groups:
        return "no images"
    main = expected if expected in groups else max(groups, key=lambda c: (len(groups[c]), c))
    parts = [f"{main} x {len(groups[main])} {'class' if len(groups[main]) == 1 else 'classes'}"]
    parts += [f"{c}: {_listed(groups[c])}" for c in sorted(groups) if c != main]
    return "; ".join(parts)


def report_fewshot(train: Sequence[Datum], fs_train: Sequence[Datum], fs_val: Sequence[Datum],
                   num_shots: int) -> None:
    """Print the shots actually used per class (a line in every few-shot run's log), after a
    warning naming the classes that have fewer than ``num_shots`` training images."""
    available = Counter(d.label for d in train)
    names = _names_by_label(train)
    short = [label for label in names if available[label] < num_shots]
    if short:
        print(f"Warning: DATASET.NUM_SHOTS is {num_shots} but {len(short)} of {len(names)} classes "
              f"{'has' if len(short) == 1 else 'have'} fewer training images, so all of theirs are used: "
              + _listed([f"{names[y]} ({available[y]})" for y in short]))
    print(f"Shots per class: {count_per_class(fs_train, num_shots)}")
    print(f"Few-shot val images per class: {count_per_class(fs_val, min(num_shots, 4))}")


def empty_split_message(cfg: Any, split: str, context: str = "") -> str:
    """The error text for an empty split: which dataset and split, and how many images per class
    it needs."""
    shots = int(cfg.DATASET.NUM_SHOTS)
    need = {
        "train": "at least 1 training image per class"
                 + (f" (DATASET.NUM_SHOTS={shots} picks up to {shots})" if shots > 0 else ""),
        "val": "at least 1 validation image per class"
               + (f" (the few-shot val split takes up to min(NUM_SHOTS, 4) = {min(shots, 4)})" if shots > 0 else ""),
        "test": "at least 1 test image per class",
    }.get(split, "at least 1 image per class")
    return (f"Dataset {cfg.DATASET.NAME}: the {split} split has no images"
            + (f" ({context})" if context else "")
            + f"; it needs {need}. Check DATASET.ROOT and the dataset's folder or split file "
              "(docs/datasets.md describes each layout)")


subsample_classes = DatasetBase.subsample_classes
