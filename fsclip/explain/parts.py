"""Image parts for ``fsclip-explain shapley``: from PartImageNet's annotation file or a label PNG.

A :class:`Parts` is a label map over one image (0 = the background, k = part k) and the part
names (``names[0] = "background"``): the background is one part more, as in SAFE's Fig. 1.

* **COCO-style JSON** (PartImageNet's ``annotations/<split>/<split>.json``; the kit writes the same
  format for SynthShapes, :mod:`fsclip.kit.parts`): the image entry whose ``file_name`` ends the
  image's path (its base name for PartImageNet's ``n01440764_10029.JPEG``, ``class/file.png`` for
  the kit); every annotation is decoded with pycocotools' ``annToMask`` (polygons or RLE), the
  instances of one category united into one part, parts ordered by category id and named by
  their category (``Quadruped Head``). An annotation that does not decode (PartImageNet has a few
  malformed ones) is left out with a note.
* **label PNG** (one per image, same size as it): value 0 the background, each other value a part,
  named ``part <value>`` or by ``--part-names`` (one per non-zero value, in increasing order).

A mask whose size differs from its image is refused (one DataError naming both sizes).
"""

from __future__ import annotations

import os.path as osp
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from fsclip.errors import DataError, MissingDependencyError

BACKGROUND = "background"


@dataclass
class Parts:
    """``label_map`` ``[H, W]`` int (0 background, k part k); ``names[k]`` the name of part k."""

    label_map: np.ndarray
    names: List[str]

    def masks(self) -> np.ndarray:
        """``[P, H, W]`` bool, one mask per part (the background first)."""
        return np.stack([self.label_map == k for k in range(len(self.names))])

    def aligned(self, align: Any) -> "Parts":
        """The parts on the model's input grid (``align``: ``Images.align``); parts the crop leaves
        with no pixel are dropped (their Shapley value would be 0 by definition)."""
        grid = align(self.label_map)
        keep = [k for k in range(len(self.names)) if k == 0 or (grid == k).any()]
        out = np.zeros_like(grid)
        for new, old in enumerate(keep):
            out[grid == old] = new
        return Parts(out, [self.names[k] for k in keep])


def _check_size(mask_hw: Tuple[int, int], image_size: Tuple[int, int], what: str, image: str) -> None:
    if tuple(mask_hw) != tuple(image_size):
        h, w = image_size
        raise DataError(f"{what} is {mask_hw[1]}x{mask_hw[0]} pixels but its image {image} is {w}x{h}: the mask "
                        f"must have the size of the original image (before any resize); pass the mask made for it")


def _coco(path: str) -> Any:
    try:
        from pycocotools.coco import COCO
    except ImportError:
        raise MissingDependencyError("reading part annotations needs pycocotools: pip install -e .[explain]") from None
    import contextlib
    import io

    if not osp.isfile(path):
        raise DataError(f"Part annotation file {path} (--parts) does not exist; pass PartImageNet's "
                        f"annotations/<split>/<split>.json or one label PNG per image")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its loading times
            return COCO(path)
    except (ValueError, KeyError, TypeError, AssertionError) as err:
        raise DataError(f"Part annotation file {path} (--parts) is not a COCO-style annotation file "
                        f"({type(err).__name__}: {err}); pass PartImageNet's annotation JSON") from None


def _find_image(coco: Any, image_path: str) -> Optional[Dict[str, Any]]:
    path = osp.normpath(osp.abspath(image_path)).replace(osp.sep, "/")
    best = None
    for info in coco.dataset.get("images", []):
        name = str(info.get("file_name", "")).replace("\\", "/").lstrip("./")
        if name and (path.endswith("/" + name) or path == name):
            if best is None or len(name) > len(best["file_name"]):
                best = info
    return best


def coco_parts(coco: Any, json_path: str, image_path: str, image_size: Tuple[int, int]) -> Parts:
    """The parts of ``image_path`` (original size ``image_size`` = (H, W)) in a loaded COCO file."""
    info = _find_image(coco, image_path)
    if info is None:
        raise DataError(f"Part annotation file {json_path} (--parts) has no entry for image {image_path} "
                        f"(no file_name ends its path); pass the annotation file of its split")
    _check_size((int(info["height"]), int(info["width"])), image_size,
                f"The part annotation of {info['file_name']} in {json_path}", image_path)
    cats = {c["id"]: c.get("name", f"part {c['id']}") for c in coco.dataset.get("categories", [])}
    united: Dict[int, np.ndarray] = {}
    for ann in coco.loadAnns(coco.getAnnIds(imgIds=[info["id"]])):
        try:
            m = coco.annToMask(ann).astype(bool)
        except Exception as err:  # malformed segmentations exist in PartImageNet's files
            print(f"Note: annotation {ann.get('id')} of {info['file_name']} in {json_path} does not decode "
                  f"({type(err).__name__}); it is left out")
            continue
        cid = int(ann["category_id"])
        united[cid] = united.get(cid, np.zeros(m.shape, bool)) | m
    label_map = np.zeros(image_size, dtype=np.int64)
    names = [BACKGROUND]
    for cid in sorted(united):
        label_map[united[cid]] = len(names)
        names.append(str(cats.get(cid, f"part {cid}")))
    return Parts(label_map, names)


def png_parts(png_path: str, image_path: str, image_size: Tuple[int, int],
              names: Optional[Sequence[str]] = None) -> Parts:
    """The parts of a label PNG (0 background, each other value a part) for ``image_path``."""
    from PIL import Image

    if not osp.isfile(png_path):
        raise DataError(f"Part mask {png_path} (--parts) does not exist; pass one label PNG per image")
    try:
        with Image.open(png_path) as img:
            values = np.asarray(img if img.mode in ("L", "P", "I", "I;16") else img.convert("L")).astype(np.int64)
    except OSError as err:
        raise DataError(f"Part mask {png_path} (--parts) cannot be read ({err}); pass a label PNG") from None
    if values.ndim != 2:
        raise DataError(f"Part mask {png_path} (--parts) is not a single-channel label PNG")
    _check_size(values.shape, image_size, f"Part mask {png_path}", image_path)
    present = [int(v) for v in np.unique(values) if v != 0]
    if names is not None and len(names) != len(present):
        raise DataError(f"--part-names gives {len(names)} names but {png_path} has {len(present)} parts "
                        f"(values {present}); give one name per non-zero value")
    label_map = np.zeros(values.shape, dtype=np.int64)
    for k, v in enumerate(present, start=1):
        label_map[values == v] = k
    return Parts(label_map, [BACKGROUND] + (list(names) if names is not None else [f"part {v}" for v in present]))


def read_parts(sources: Sequence[str], image_paths: Sequence[str], image_sizes: Sequence[Tuple[int, int]],
               names: Optional[Sequence[str]] = None) -> List[Parts]:
    """The parts of each image: ``sources`` is one COCO JSON for all images, or one label PNG per
    image (``image_sizes``: (H, W) of each original image)."""
    if len(sources) == 1 and sources[0].lower().endswith(".json"):
        coco = _coco(sources[0])
        return [coco_parts(coco, sources[0], p, s) for p, s in zip(image_paths, image_sizes)]
    if len(sources) != len(image_paths):
        raise DataError(f"--parts gives {len(sources)} masks for {len(image_paths)} images: give one COCO-style "
                        f"JSON file for all, or one label PNG per image")
    return [png_parts(m, p, s, names) for m, p, s in zip(sources, image_paths, image_sizes)]
