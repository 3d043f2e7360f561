"""FGVC-Aircraft 2013b (100 variants), read from the dataset's own txt files as in CoOp."""

from __future__ import annotations

import os.path as osp
from typing import Dict, List

from fsclip.backend import DATASET_REGISTRY, Datum

from .common import BenchmarkDataset, Row, check_images_exist, clean_classname


@DATASET_REGISTRY.register()
class FGVCAircraft(BenchmarkDataset):
    """``variants.txt`` gives the classes (label = line number), and
    ``images_variant_{train,val,test}.txt`` hold ``<image id> <variant>`` lines for
    ``images/<image id>.jpg``."""

    dataset_dir = "fgvc_aircraft"
    template = "a photo of a {}, a type of aircraft."
    templates = [template]

    def __init__(self, cfg) -> None:
        dataset_dir = self.locate(cfg)
        self.image_dir = self.require_dir(osp.join(dataset_dir, "images"), "image folder not found")
        variants_path = self.require_file(osp.join(dataset_dir, "variants.txt"))
        with open(variants_path, "r", encoding="utf-8") as f:
            variants = [line.strip() for line in f if line.strip()]
        cname2lab = {c: i for i, c in enumerate(variants)}
        splits = [self.read_rows(cname2lab, f"images_variant_{s}.txt")
                  for s in ("train", "val", "test")]
        check_images_exist((p for rows in splits for p, _, _ in rows), type(self).__name__,
                           self.section(), "images_variant_{train,val,test}.txt")
        train, val, test = ([Datum(impath=p, label=y, classname=c) for p, y, c in rows]
                            for rows in splits)
        self.check_labels(train, val, test, source=variants_path)
        train, val, test = self.finish(cfg, train, val, test, self.image_dir)
        super().__init__(train_x=train, val=val, test=test)

    def read_rows(self, cname2lab: Dict[str, int], filename: str) -> List[Row]:
        path = self.require_file(osp.join(self.dataset_dir, filename))
        rows = []
        with open(path, "r", encoding="utf-8") as f:
            for line in f:
                parts = line.strip().split(" ")
                if not parts[0]:
                    continue
                variant = " ".join(parts[1:])
                if variant not in cname2lab:
                    raise self.error(path, f"variant {variant!r} of image {parts[0]} is not in "
                                           "variants.txt")
                rows.append((osp.join(self.image_dir, parts[0] + ".jpg"), cname2lab[variant],
                             clean_classname(variant)))
        return rows
