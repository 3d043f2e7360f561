"""``Custom``: bring your own images, one folder per class, no code to write.

``DATASET.ROOT/<DATASET.CUSTOM_DIR>`` (or an absolute DATASET.CUSTOM_DIR) holds either

- ``<class>/<image>`` folders, split per class into train/val/test by DATASET.CUSTOM_SPLIT
  (train and val fractions, default CoOp's 0.5 and 0.2); or
- ``train/<class>/<image>`` plus optional ``val/`` and ``test/`` with the same class folders
  (a missing ``val/`` uses ``test/`` and the other way round, as CoOp does for ImageNet).

The split is deterministic without any random state: the images of a class are ordered by the
SHA-1 of their file name and cut at the fractions, so the same folder always gives the same
split on any machine, and adding an image moves no other image between splits. Labels follow
the sorted class-folder names; class names are the folder names with "_" shown as " ".
Images are the files with a common image extension; a ``split_fewshot`` folder (the few-shot
cache) is not a class.
"""

from __future__ import annotations

import hashlib
import os.path as osp
from typing import Dict, List, Tuple

from fsclip.backend import DATASET_REGISTRY, Datum

from .common import BenchmarkDataset, clean_classname, list_dirs, list_files

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
SPLIT_NAMES = ("train", "val", "test")
CACHE_FOLDER = "split_fewshot"


def split_sizes(n: int, p_train: float, p_val: float) -> Tuple[int, int]:
    """Train and val image counts of a class of ``n`` images (the rest is test)."""
    n_train = max(1, round(n * p_train))
    return n_train, min(n - n_train, round(n * p_val))


def min_images_per_class(p_train: float, p_val: float, limit: int = 1000) -> int:
    """The fewest images a class needs to get a test image (and a val image when
    ``p_val > 0``) under these fractions; 0 when no class size gets one."""
    for n in range(1, limit + 1):
        n_train, n_val = split_sizes(n, p_train, p_val)
        if n - n_train - n_val > 0 and (p_val == 0 or n_val > 0):
            return n
    return 0


@DATASET_REGISTRY.register()
class Custom(BenchmarkDataset):
    """A folder of class folders (see the module docstring and docs/datasets.md#custom)."""

    dataset_dir = ""
    template = "a photo of a {}."
    templates = [template]

    @classmethod
    def extend_cfg(cls, cfg) -> None:
        """Add DATASET.CUSTOM_DIR and DATASET.CUSTOM_SPLIT (idempotent)."""
        super().extend_cfg(cfg)
        if "CUSTOM_DIR" not in cfg.DATASET:
            # Folder of the custom dataset, under DATASET.ROOT or absolute
            cfg.DATASET.CUSTOM_DIR = ""
        if "CUSTOM_SPLIT" not in cfg.DATASET:
            # Train and val fractions per class when the folder has no train/val/test split
            cfg.DATASET.CUSTOM_SPLIT = (0.5, 0.2)

    def __init__(self, cfg) -> None:
        folder = cfg.DATASET.get("CUSTOM_DIR", "")
        if not folder:
            raise self.error("DATASET.CUSTOM_DIR", "DATASET.CUSTOM_DIR is empty; set it to the "
                             "folder (under DATASET.ROOT, or absolute) that holds the class folders")
        dataset_dir = self.locate(cfg, folder)
        self.image_dir = dataset_dir
        top = [d for d in list_dirs(dataset_dir) if d != CACHE_FOLDER]
        if "train" in top and set(top) <= set(SPLIT_NAMES):
            train, val, test = self.read_split_folders(set(top))
        else:
            fractions = cfg.DATASET.get("CUSTOM_SPLIT", (0.5, 0.2))
            train, val, test = self.split_class_folders(top, fractions)
        self.require_two_classes(train)
        train, val, test = self.finish(cfg, train, val, test, self.image_dir)
        self.require_two_classes(train, subsample=cfg.DATASET.SUBSAMPLE_CLASSES)
        super().__init__(train_x=train, val=val, test=test)

    def require_two_classes(self, train: List[Datum], subsample: str = "all") -> None:
        """Refuse a dataset of fewer than 2 classes: every prediction would be right."""
        names = sorted({d.classname for d in train})
        if len(names) >= 2:
            return
        found = f"1 class ({names[0]!r})" if names else "no class"
        cause = (f"DATASET.SUBSAMPLE_CLASSES {subsample} leaves {found}" if subsample != "all"
                 else f"found {found}")
        raise self.error(self.dataset_dir, f"a classification dataset needs at least 2 classes, "
                         f"{cause} (with one class every prediction is right and accuracy is a "
                         f"meaningless 100%). Add a folder per class")

    def images_of(self, folder: str) -> List[str]:
        """Sorted image file names of a class folder; an empty class is an error."""
        names = sorted(osp.basename(f) for f in list_files(folder)
                       if f.lower().endswith(IMAGE_EXTENSIONS))
        if not names:
            raise self.error(folder, "class folder holds no image (extensions: "
                             f"{', '.join(IMAGE_EXTENSIONS)})")
        return names

    def datums(self, folder: str, names: List[str], label: int, classname: str) -> List[Datum]:
        return [Datum(impath=osp.join(folder, n), label=label, classname=classname)
                for n in names]

    def split_class_folders(self, classes: List[str], fractions) -> Tuple[List[Datum], ...]:
        if not classes:
            raise self.error(self.dataset_dir, "no class folder found")
        p_train, p_val = (float(x) for x in fractions)
        if not (0 < p_train and 0 <= p_val and p_train + p_val <= 1):
            raise self.error("DATASET.CUSTOM_SPLIT", f"fractions {tuple(fractions)} must be "
                             "(train > 0, val >= 0) with train + val <= 1")
        train: List[Datum] = []
        val: List[Datum] = []
        test: List[Datum] = []
        small: List[str] = []  # classes left without a val or test image
        for label, cls_folder in enumerate(classes):
            folder = osp.join(self.dataset_dir, cls_folder)
            names = self.images_of(folder)
            ranked = sorted(names, key=lambda n: hashlib.sha1(n.encode("utf-8")).hexdigest())
            n_train, n_val = split_sizes(len(ranked), p_train, p_val)
            parts = (ranked[:n_train], ranked[n_train:n_train + n_val], ranked[n_train + n_val:])
            name = clean_classname(cls_folder)
            if not parts[2] or (p_val > 0 and not parts[1]):
                small.append(f"{cls_folder} ({len(ranked)})")
            for out, part in zip((train, val, test), parts):
                out.extend(self.datums(folder, sorted(part), label, name))
        if small:
            need = min_images_per_class(p_train, p_val)
            rule = (f"with DATASET.CUSTOM_SPLIT {tuple(fractions)} a class needs at least {need} "
                    f"images to get a train{', a val' if p_val > 0 else ''} and a test image"
                    if need else f"DATASET.CUSTOM_SPLIT {tuple(fractions)} leaves no test images "
                    "(train + val must stay below 1)")
            if not test or (p_val > 0 and not val):
                empty = "test" if not test else "val"
                raise self.error(self.dataset_dir, f"too few images per class for a train/val/test "
                                 f"split: the {empty} split comes out empty ({rule}; image counts: "
                                 f"{', '.join(small[:10])}{' ...' if len(small) > 10 else ''}). Add "
                                 "images, or give the split as train/ and val/ or test/ folders")
            print(f"Warning: {len(small)} of {len(classes)} classes of {self.dataset_dir} are too small "
                  f"to appear in every split ({rule}): {', '.join(small[:20])}"
                  f"{' ...' if len(small) > 20 else ''}")
        return train, val, test

    def read_split_folders(self, present: set) -> Tuple[List[Datum], ...]:
        train_dir = osp.join(self.dataset_dir, "train")
        classes = list_dirs(train_dir)
        if not classes:
            raise self.error(train_dir, "no class folder found")
        labels: Dict[str, int] = {c: i for i, c in enumerate(classes)}
        out: Dict[str, List[Datum]] = {}
        for split in SPLIT_NAMES:
            if split not in present:
                continue
            split_dir = osp.join(self.dataset_dir, split)
            items: List[Datum] = []
            for cls_folder in list_dirs(split_dir):
                folder = osp.join(split_dir, cls_folder)
                if cls_folder not in labels:
                    raise self.error(folder, "class folder has no counterpart in train/")
                items.extend(self.datums(folder, self.images_of(folder), labels[cls_folder],
                                         clean_classname(cls_folder)))
            out[split] = items
        if "val" not in out and "test" not in out:
            raise self.error(self.dataset_dir, "train/ needs a val/ or a test/ folder beside it")
        val = out.get("val", out.get("test"))
        test = out.get("test", val)
        return out["train"], val, test
