"""Shared pieces of the benchmark datasets: the error, the readers and two base classes.

Every dataset in this folder reads CoOp's on-disk layout (see docs/datasets.md) and then goes
through ``BenchmarkDataset.finish``: CoOp-identical few-shot selection cached as JSON
(``fsclip.engine.data.base.load_or_create_fewshot``) and CoCoOp's base/new class split.

Set-up problems (missing root, folder, split file, listed image, empty class, malformed split
file) raise one ``DatasetError`` naming the dataset, the path and the docs/datasets.md section.
"""

from __future__ import annotations

import json
import os
import os.path as osp
from collections import OrderedDict
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from fsclip.backend import DatasetBase, Datum
from fsclip.engine.data.base import SplitWriteError, load_or_create_fewshot, subsample_classes
from fsclip.errors import DataError

DOCS = "docs/datasets.md"

Row = Tuple[str, int, str]  # (image path, label, class name)


class DatasetError(DataError):
    """A dataset is missing or malformed on disk (a FileNotFoundError; train.py prints it as
    one ``ERROR:`` line).

    ``dataset`` is the registered class name, ``path`` the offending file or folder and
    ``section`` the docs/datasets.md anchor that explains the expected layout.
    """

    def __init__(self, dataset: str, path: str, problem: str, section: str) -> None:
        self.dataset = dataset
        self.path = path
        self.problem = problem
        self.section = section
        super().__init__(
            f"{dataset}: {problem}: {path} (see {DOCS}#{section} for the expected layout "
            "and where to download the files)"
        )


# --------------------------------------------------------------------------------------------
# Small readers
# --------------------------------------------------------------------------------------------

def clean_classname(name: str, renames: Mapping[str, str] = {}) -> str:
    """CoOp's class-name clean-up: dataset-specific renames, then underscores to spaces.

    CoOp's trainers replace "_" by " " before building prompts; doing it here as well gives
    every trainer the readable names (the replacement is idempotent).
    """
    return renames.get(name, name).replace("_", " ")


def list_files(folder: str) -> List[str]:
    """Paths of the non-hidden regular files of ``folder`` in ``os.listdir`` order (Dassl's
    ``listdir_nohidden``, which CoOp's ImageNet readers use; the order matters for few-shot
    picks). One directory read, no stat per file where the file system reports types."""
    return [e.path for e in os.scandir(folder) if not e.name.startswith(".") and e.is_file()]


def list_dirs(folder: str) -> List[str]:
    """Sorted non-hidden sub-folders of ``folder``."""
    return sorted(e.name for e in os.scandir(folder) if not e.name.startswith(".") and e.is_dir())


def read_imagenet_classnames(path: str) -> "OrderedDict[str, str]":
    """``classnames.txt``: one ``<wnid> <class name>`` line per class -> {wnid: name}."""
    classnames: "OrderedDict[str, str]" = OrderedDict()
    with open(path, "r", encoding="utf-8") as f:
        for line in f:
            parts = line.strip().split(" ")
            if parts[0]:
                classnames[parts[0]] = " ".join(parts[1:])
    return classnames


def check_images_exist(paths: Iterable[str], dataset: str, section: str, listed_in: str) -> None:
    """Raise DatasetError for the first listed image that is not on disk.

    Cost: one directory listing per distinct folder (not one stat per image), e.g. 100 listings
    for the 8,242 images of Caltech101's split file.
    """
    contents: Dict[str, Optional[set]] = {}
    missing: List[str] = []
    for path in paths:
        folder, name = osp.split(path)
        if folder not in contents:
            try:
                contents[folder] = set(os.listdir(folder))
            except (FileNotFoundError, NotADirectoryError):
                contents[folder] = None
        names = contents[folder]
        if names is None or name not in names:
            missing.append(path)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DatasetError(
            dataset, missing[0], f"image listed in {listed_in} not found{more}", section
        )


# --------------------------------------------------------------------------------------------
# Base classes (not registered)
# --------------------------------------------------------------------------------------------

class BenchmarkDataset(DatasetBase):
    """A dataset read from ``DATASET.ROOT/<dataset_dir>``, CoOp-style.

    Class attributes: ``dataset_dir`` (folder under DATASET.ROOT), ``template`` (CoOp's single
    prompt template), ``templates`` (the hand-engineered ensemble: Tip-Adapter's, used by SAFE)
    and ``label_subset`` (labels a test-only dataset covers in a larger label space, or None).
    """

    dataset_dir = ""
    template = "a photo of a {}."
    templates: Optional[List[str]] = None
    label_subset: Optional[List[int]] = None

    @classmethod
    def extend_cfg(cls, cfg) -> None:
        """Add DATASET.FEWSHOT_DIR (idempotent)."""
        if "FEWSHOT_DIR" not in cfg.DATASET:
            # Folder of the few-shot split files (shot_N-seed_S.json). "": <dataset folder>/
            # split_fewshot, where CoOp keeps them; else <FEWSHOT_DIR>/<dataset folder name>/
            # (for datasets on read-only storage)
            cfg.DATASET.FEWSHOT_DIR = ""

    @classmethod
    def section(cls) -> str:
        """The docs/datasets.md anchor for this dataset (its heading is the class name)."""
        return cls.__name__.lower()

    def error(self, path: str, problem: str) -> DatasetError:
        return DatasetError(type(self).__name__, path, problem, self.section())

    def locate(self, cfg, folder: Optional[str] = None) -> str:
        """Check DATASET.ROOT and ``<root>/<folder>`` (default: the class's ``dataset_dir``;
        an absolute ``folder`` needs no root); set and return ``self.dataset_dir``."""
        folder = osp.expanduser(type(self).dataset_dir if folder is None else folder)
        root = cfg.DATASET.ROOT
        if osp.isabs(folder):
            root = osp.dirname(folder)
        elif not root:
            raise self.error(
                "DATASET.ROOT", "DATASET.ROOT is empty; pass --root DIR (the folder that holds "
                f"{folder}/)"
            )
        root = osp.abspath(osp.expanduser(root))
        if not osp.isdir(root):
            raise self.error(root, "DATASET.ROOT (--root) is not a folder")
        self.dataset_dir = osp.join(root, folder)
        self.require_dir(self.dataset_dir, "dataset folder not found")
        fewshot_root = cfg.DATASET.get("FEWSHOT_DIR", "")
        if fewshot_root:
            fewshot_root = osp.abspath(osp.expanduser(fewshot_root))
            self.split_fewshot_dir = osp.join(fewshot_root, osp.basename(osp.normpath(self.dataset_dir)))
        else:
            self.split_fewshot_dir = osp.join(self.dataset_dir, "split_fewshot")
        return self.dataset_dir

    def require_dir(self, path: str, problem: str = "folder not found") -> str:
        if not osp.isdir(path):
            raise self.error(path, problem)
        return path

    def require_file(self, path: str, problem: str = "file not found") -> str:
        if not osp.isfile(path):
            raise self.error(path, problem)
        return path

    def check_labels(self, train: Sequence[Datum], *others: Sequence[Datum],
                     source: str) -> None:
        """Every label in 0..K-1 (K over all splits) has a training image and one name."""
        names: Dict[int, str] = {}
        for split in (train,) + others:
            for item in split:
                if item.label < 0:
                    raise self.error(source, f"negative label {item.label} for {item.impath}")
                if names.setdefault(item.label, item.classname) != item.classname:
                    raise self.error(source, f"label {item.label} has two class names, "
                                             f"{names[item.label]!r} and {item.classname!r}")
        if not train:
            raise self.error(source, "the training split is empty")
        present = {item.label for item in train}
        empty = [y for y in range(max(names) + 1) if y not in present]
        if empty:
            y = empty[0]
            raise self.error(source, f"class {y} ({names.get(y, 'unnamed')!r}) has no training "
                                     f"images ({len(empty)} such classes)")

    @staticmethod
    def unwritable(reason: str) -> str:
        return (f"cannot write the few-shot cache ({reason}); make the folder writable (or free "
                "space), or set DATASET.FEWSHOT_DIR to a writable folder for the split files (e.g. "
                "DATASET.FEWSHOT_DIR ~/fsclip-splits: the data folder can then stay read-only)")

    def finish(self, cfg, train: List[Datum], val: List[Datum], test: List[Datum],
               image_root: str, disjoint_val: bool = False) -> Tuple[List[Datum], List[Datum], List[Datum]]:
        """Few-shot selection (DATASET.NUM_SHOTS, SEED) then CoCoOp's SUBSAMPLE_CLASSES."""
        try:
            train, val = load_or_create_fewshot(
                train, val, cfg.DATASET.NUM_SHOTS, cfg.SEED, self.split_fewshot_dir, image_root,
                disjoint_val=disjoint_val,
            )
        except SplitWriteError as err:
            raise self.error(self.split_fewshot_dir, self.unwritable(
                f"{osp.basename(err.path)}: {err.reason}")) from None
        except (PermissionError, NotADirectoryError, FileExistsError) as err:
            raise self.error(self.split_fewshot_dir, self.unwritable(str(err))) from None
        train, val, test = subsample_classes(
            train, val, test, subsample=cfg.DATASET.SUBSAMPLE_CLASSES
        )
        for split, items in (("train", train), ("test", test)):
            if not items:
                raise self.error(self.dataset_dir, f"the {split} split has no images; it needs at "
                                 f"least 1 {split} image per class")
        return list(train), list(val), list(test)


class SplitFileDataset(BenchmarkDataset):
    """A dataset described by CoOp's ``split_zhou_<Name>.json``.

    The file holds ``{"train": rows, "val": rows, "test": rows}`` with rows
    ``[path relative to image_dir, label, class name]``. ``image_subdir`` is ``image_dir``
    relative to the dataset folder; ``renames`` maps raw names to CoOp's clean names.
    """

    image_subdir = ""
    renames: Mapping[str, str] = {}

    @classmethod
    def split_file(cls) -> str:
        return f"split_zhou_{cls.__name__}.json"

    def __init__(self, cfg) -> None:
        dataset_dir = self.locate(cfg)
        self.image_dir = osp.join(dataset_dir, self.image_subdir)
        self.split_path = osp.join(dataset_dir, self.split_file())
        self.require_file(self.split_path, "split file not found")
        self.require_dir(self.image_dir, "image folder not found")
        rows = self.read_split(self.split_path)
        check_images_exist(
            (path for split in rows.values() for path, _, _ in split),
            type(self).__name__, self.section(), osp.basename(self.split_path),
        )
        train, val, test = (
            [Datum(impath=p, label=y, classname=c) for p, y, c in rows[k]]
            for k in ("train", "val", "test")
        )
        self.check_labels(train, val, test, source=self.split_path)
        train, val, test = self.finish(cfg, train, val, test, self.image_dir)
        super().__init__(train_x=train, val=val, test=test)

    def read_split(self, path: str) -> Dict[str, List[Row]]:
        """Rows of the split file with absolute image paths and cleaned class names."""
        try:
            with open(path, "r", encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as err:
            raise self.error(path, f"split file is not readable JSON ({err})") from None
        if not isinstance(data, dict):
            raise self.error(path, "split file must hold an object with train/val/test lists")
        out: Dict[str, List[Row]] = {}
        for key in ("train", "val", "test"):
            rows = data.get(key)
            if not isinstance(rows, list):
                raise self.error(path, f'split file has no "{key}" list')
            converted = []
            for row in rows:
                if not (isinstance(row, (list, tuple)) and len(row) == 3
                        and isinstance(row[0], str) and isinstance(row[2], str)):
                    raise self.error(path, f'malformed "{key}" row {row!r}; expected '
                                           "[relative path, label, class name]")
                try:
                    label = int(row[1])
                except (TypeError, ValueError):
                    raise self.error(path, f'malformed label in "{key}" row {row!r}') from None
                converted.append(
                    (osp.join(self.image_dir, row[0]), label, clean_classname(row[2], self.renames))
                )
            out[key] = converted
        return out
