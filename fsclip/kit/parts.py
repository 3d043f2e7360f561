"""Ground-truth part masks of the kit's SynthShapes / SynthTextures images, in PartImageNet's format.

The renderer knows where it drew everything (``synth.render`` records each filled object's
coverage and fill pattern without drawing one random number more, so the images are the same
pixels with or without the record). Each image is rendered again from its seed and its parts
written as a COCO-style annotation file, as PartImageNet ships them::

    <root>/<dataset_dir>/annotations/<split>/<split>.json
      images:      {id, file_name ("red_circle/test_0000.png", relative to images/), width, height}
      annotations: {id, image_id, category_id, segmentation (uncompressed RLE), bbox, area, iscrowd 0}
      categories:  {id, name, supercategory}, ids 0-based as in PartImageNet:
                   0 "Shape Fill", 1 "Shape Pattern" (the fill texture's second colour), 2 "Distractor"
      info:        {generator_version, seed, dataset, split}

The background is what no part covers (as in PartImageNet). A pixel belongs to an object when
the object covers at least half of it; the main object is drawn last and hides the distractors
under it. The file is written once per split, atomically, beside the dataset (its images, split
file and marker are left as they are) and written again when the generator version or seed
differs. ``pycocotools.COCO(path).annToMask(ann)`` reads it back, as it reads PartImageNet's.
"""

from __future__ import annotations

import json
import os.path as osp
from typing import Dict, List, Tuple

import numpy as np

from fsclip.kit import synth

CATEGORIES: Tuple[Dict[str, object], ...] = (
    {"id": 0, "name": "Shape Fill", "supercategory": "Shape"},
    {"id": 1, "name": "Shape Pattern", "supercategory": "Shape"},
    {"id": 2, "name": "Distractor", "supercategory": "Distractor"},
)
PART_DATASETS = ("SynthShapes", "SynthTextures")


def _canvas(mask: np.ndarray, box: Tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = box
    out = np.zeros((synth.CANVAS, synth.CANVAS), dtype=np.float32)
    out[y0:y1, x0:x1] = mask[: y1 - y0, : x1 - x0]
    return out


def part_map(spec: synth.SynthSpec, split: str, label: int, index: int, seed: int) -> np.ndarray:
    """``[CANVAS, CANVAS]`` int map of one image: 0 background, 1 + category id of each part."""
    rng = np.random.default_rng([seed, spec.index, synth._SPLIT_IDS[split], label, index])
    _, drawn = synth.render(rng, synth.class_object(rng, spec, label), spec.domain)
    records = drawn["drawn"]
    out = np.zeros((synth.CANVAS, synth.CANVAS), dtype=np.int64)
    if not records:
        return out  # an outline drawing: no filled parts
    *distractors, (m, box, pat) = records
    for dm, dbox, _ in distractors:
        out[_canvas(dm, dbox) >= 0.5] = 3
    main = _canvas(m, box) >= 0.5
    out[main] = 1
    if pat is not None:
        out[main & (_canvas(pat.astype(np.float32), box) > 0.5)] = 2
    return out


def rle(mask: np.ndarray) -> Dict[str, object]:
    """COCO's uncompressed RLE of a binary mask: column-major run lengths starting with zeros."""
    flat = np.asarray(mask, dtype=np.uint8).ravel(order="F")
    change = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    counts = np.diff(np.concatenate([[0], change])).tolist()
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def annotation_path(root: str, name: str, split: str) -> str:
    return osp.join(osp.abspath(osp.expanduser(root)), synth.DATASETS[name].dataset_dir, "annotations",
                    split, f"{split}.json")


def _info(name: str, split: str, seed: int) -> dict:
    return {"generator_version": synth.GENERATOR_VERSION, "seed": int(seed), "dataset": name, "split": split}


def build_annotations(name: str, split: str, seed: int = synth.DEFAULT_SEED) -> dict:
    """The annotation file's content for ``split`` of kit dataset ``name``."""
    spec = synth.DATASETS[name]
    images: List[dict] = []
    anns: List[dict] = []
    for label, classname in enumerate(spec.classes):
        for i in range(spec.counts[split]):
            image_id = len(images)
            images.append({"id": image_id, "file_name": f"{synth.folder_name(classname)}/{split}_{i:04d}.png",
                           "width": synth.CANVAS, "height": synth.CANVAS})
            parts = part_map(spec, split, label, i, seed)
            for cat in CATEGORIES:
                m = parts == int(cat["id"]) + 1
                if not m.any():
                    continue
                ys, xs = np.nonzero(m)
                anns.append({"id": len(anns), "image_id": image_id, "category_id": cat["id"],
                             "segmentation": rle(m), "area": int(m.sum()), "iscrowd": 0,
                             "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                                      int(ys.max() - ys.min() + 1)]})
    return {"info": _info(name, split, seed), "images": images, "annotations": anns,
            "categories": [dict(c) for c in CATEGORIES]}


def ensure_part_annotations(root: str, name: str, split: str, seed: int = synth.DEFAULT_SEED) -> str:
    """``annotations/<split>/<split>.json`` of kit dataset ``name`` under ``root`` (the dataset and
    the file generated first when missing or stale); its path."""
    if name not in PART_DATASETS:
        raise KeyError(f"no part annotations for {name!r}; kit datasets with parts: {PART_DATASETS}")
    from fsclip.engine.fileio import atomic_write_text

    synth.ensure_dataset(root, name, seed, verbose=False)
    path = annotation_path(root, name, split)
    try:
        with open(path, encoding="utf-8") as f:
            if json.load(f).get("info") == _info(name, split, seed):
                return path
    except (OSError, ValueError, AttributeError):
        pass
    atomic_write_text(path, json.dumps(build_annotations(name, split, seed)) + "\n")
    return path
