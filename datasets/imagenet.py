"""ImageNet (ILSVRC-2012) and its test-only shifts ImageNetV2, ImageNetSketch, ImageNetA and
ImageNetR, in CoOp's layouts.

All ImageNet-family datasets share one label space: the WordNet ids of ``classnames.txt``
sorted (the standard 0..999 ImageNet labels; the file CoOp distributes is already sorted), so
a model trained on ImageNet tests on ImageNetV2/-Sketch/-A/-R unchanged.
"""

from __future__ import annotations

import os.path as osp
from typing import Dict, List

from fsclip.backend import DATASET_REGISTRY, Datum

from .common import (BenchmarkDataset, clean_classname, list_dirs, list_files,
                     read_imagenet_classnames)

# Tip-Adapter's hand-picked ensemble for ImageNet (used by SAFE and the ImageNet shifts).
IMAGENET_TEMPLATES = [
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
]


class ImageNetFamily(BenchmarkDataset):
    """Reads ``classnames.txt`` and class folders (one per label) for the ImageNet family."""

    template = "a photo of a {}."
    templates = IMAGENET_TEMPLATES

    def read_label_space(self) -> List[str]:
        """Sorted WordNet ids of ``<dataset_dir>/classnames.txt``; sets ``self.all_classnames``
        (the clean class name of every label)."""
        path = self.require_file(osp.join(self.dataset_dir, "classnames.txt"),
                                 "classnames.txt not found")
        names = read_imagenet_classnames(path)
        if not names:
            raise self.error(path, "classnames.txt lists no class")
        wnids = sorted(names)
        self.all_classnames = [clean_classname(names[w]) for w in wnids]
        return wnids

    def read_class_folders(self, split_dir: str, folder_to_label: Dict[str, int],
                           require_all: bool) -> List[Datum]:
        """One Datum per file of ``split_dir/<folder>/`` (folders sorted, files in listing
        order as CoOp reads them). Unknown, empty and (with ``require_all``) missing class
        folders are errors."""
        self.require_dir(split_dir, "image folder not found")
        folders = list_dirs(split_dir)
        if not folders:
            raise self.error(split_dir, "no class folder found")
        unknown = [f for f in folders if f not in folder_to_label]
        if unknown:
            raise self.error(osp.join(split_dir, unknown[0]),
                             f"folder is not a class of classnames.txt ({len(unknown)} such "
                             "folders)")
        if require_all:
            present = set(folders)
            missing = [f for f in folder_to_label if f not in present]
            if missing:
                raise self.error(osp.join(split_dir, missing[0]),
                                 f"class folder not found ({len(missing)} of "
                                 f"{len(folder_to_label)} missing)")
        items: List[Datum] = []
        for folder in folders:
            path = osp.join(split_dir, folder)
            files = list_files(path)
            if not files:
                raise self.error(path, "class folder holds no image")
            label = folder_to_label[folder]
            name = self.all_classnames[label]
            items.extend(Datum(impath=f, label=label, classname=name) for f in files)
        return items


@DATASET_REGISTRY.register()
class ImageNet(ImageNetFamily):
    """ImageNet: train from ``images/train``, test from ``images/val``; the few-shot val split
    comes from train images not picked for training (with all shots, val is the test split)."""

    dataset_dir = "imagenet"

    def __init__(self, cfg) -> None:
        dataset_dir = self.locate(cfg)
        self.image_dir = osp.join(dataset_dir, "images")
        wnids = self.read_label_space()
        wnid_to_label = {w: i for i, w in enumerate(wnids)}
        train = self.read_class_folders(osp.join(self.image_dir, "train"), wnid_to_label, True)
        test = self.read_class_folders(osp.join(self.image_dir, "val"), wnid_to_label, False)
        if cfg.DATASET.NUM_SHOTS >= 1:
            # Few-shot: train picks are CoOp's; the val split (min(N, 4) per class) is drawn from
            # the remaining train images, so choices made on val never see the test images
            # (CoOp validates on the test split; the SAFE protocol needs a held-out val).
            train, val, test = self.finish(cfg, train, train, test, self.image_dir, disjoint_val=True)
        else:
            # All shots: ImageNet has no held-out val; CoOp's test-as-val is kept.
            train, _, test = self.finish(cfg, train, [], test, self.image_dir)
            val = test
        super().__init__(train_x=train, val=val, test=test)


class ImageNetShift(ImageNetFamily):
    """A test-only ImageNet variant labelled in ImageNet's label space.

    ``num_classes``, ``classnames`` and ``lab2cname`` are ImageNet's (all classes of
    classnames.txt), so a classifier built for ImageNet applies unchanged. ``label_subset``
    lists the labels the variant covers when it covers fewer (ImageNet-A and -R: 200);
    evaluate on that subset (mask the other logits) to match the published protocol.
    DATASET.NUM_SHOTS and SUBSAMPLE_CLASSES do not apply (as in CoOp).
    """

    image_subdir = ""
    require_all_classes = True

    def folder_names(self, wnids: List[str]) -> List[str]:
        """Folder name of each label (default: its WordNet id)."""
        return wnids

    def __init__(self, cfg) -> None:
        dataset_dir = self.locate(cfg)
        self.image_dir = osp.join(dataset_dir, self.image_subdir)
        wnids = self.read_label_space()
        folder_to_label = {f: i for i, f in enumerate(self.folder_names(wnids))}
        data = self.read_class_folders(self.image_dir, folder_to_label, self.require_all_classes)
        present = sorted({item.label for item in data})
        self.label_subset = present if len(present) < len(wnids) else None
        super().__init__(train_x=data, test=data)

    @property
    def num_classes(self) -> int:
        return len(self.all_classnames)

    @property
    def classnames(self) -> List[str]:
        return list(self.all_classnames)

    @property
    def lab2cname(self) -> Dict[int, str]:
        return dict(enumerate(self.all_classnames))


@DATASET_REGISTRY.register()
class ImageNetV2(ImageNetShift):
    """Matched-frequency ImageNetV2: ``imagenetv2-matched-frequency-format-val/<k>/``, where
    folder ``k`` is ImageNet label k."""

    dataset_dir = "imagenetv2"
    image_subdir = "imagenetv2-matched-frequency-format-val"

    def folder_names(self, wnids: List[str]) -> List[str]:
        return [str(label) for label in range(len(wnids))]


@DATASET_REGISTRY.register()
class ImageNetSketch(ImageNetShift):
    """ImageNet-Sketch: ``images/<wnid>/``, all ImageNet classes."""

    dataset_dir = "imagenet-sketch"
    image_subdir = "images"


@DATASET_REGISTRY.register()
class ImageNetA(ImageNetShift):
    """ImageNet-A (natural adversarial examples): ``imagenet-a/<wnid>/`` for 200 classes."""

    dataset_dir = "imagenet-adversarial"
    image_subdir = "imagenet-a"
    require_all_classes = False


@DATASET_REGISTRY.register()
class ImageNetR(ImageNetShift):
    """ImageNet-R (renditions): ``imagenet-r/<wnid>/`` for 200 classes."""

    dataset_dir = "imagenet-rendition"
    image_subdir = "imagenet-r"
    require_all_classes = False
