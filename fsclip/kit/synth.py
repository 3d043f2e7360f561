"""A synthetic image-classification benchmark rendered by code (PIL + NumPy) from a seed.

Every image shows one main object with nameable attributes (shape, colour, fill texture, size)
and, depending on the rendering *domain*, distractor objects, textured backgrounds, a colour
cast, noise and blur. The rendering domains:

- ``pretrain``: the micro-CLIPs' pretraining distribution (at most one small distractor, milder
  noise and lighting, some outline drawings);
- ``photo`` (SynthShapes): busy backgrounds, at most one distractor of the same vocabulary, a
  lighting cast and a *palette shift*: every image's hue is rotated by about -40 degrees, so
  the colour words learnt in pretraining fit only approximately and zero-shot classification
  makes systematic errors that a few labelled shots can correct;
- ``photo_texture`` (SynthTextures): the same without the palette shift but with a *pattern
  shift*: fill patterns are about 30% finer than in pretraining;
- ``sketch`` (SynthShapesSketch): coloured outline drawings on paper.

Why the classes are defined by colour and fill texture: the micro-CLIPs learn colour and
texture from their pretraining budget but hardly learn silhouette shape (a linear probe on
MicroViT's pretraining-scene features: about 75% for 12 colours and 70% for 5 textures, 16% for
10 shapes). Each class therefore has a colour (SynthShapes) or a colour and a texture
(SynthTextures) of its own; its shape word is a consistent but redundant cue.

Downstream datasets (see :data:`DATASETS`) are written in the CoOp layout::

    <root>/<dataset_dir>/images/<class_folder>/<split>_<index>.png
    <root>/<dataset_dir>/split_zhou_<Name>.json   {"train"|"val"|"test": [[relpath, label, classname], ...]}
    <root>/<dataset_dir>/.complete                 marker, written last (JSON: version, seed, name)

Generation is deterministic: image ``i`` of split ``s`` of dataset ``d`` is drawn from a NumPy
generator seeded with ``(seed, d, s, i)`` and saved as PNG with fixed settings, so two runs
with the same seed give byte-identical files. A dataset is generated into a temporary folder
next to its final place and renamed into place, so an interrupted generation leaves nothing
that looks complete, and two processes generating at once both end with one valid copy.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import os.path as osp
import shutil
import sys
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# Bump when rendering changes: cached datasets of another version are regenerated.
GENERATOR_VERSION = 3
DEFAULT_SEED = 0
CANVAS = 128  # image side in pixels (= the micro-CLIPs' input resolution)
_SS = 2  # supersampling factor for anti-aliased shapes
MARKER = ".complete"

SHAPES: Tuple[str, ...] = (
    "circle", "square", "triangle", "star", "hexagon",
    "cross", "diamond", "heart", "pentagon", "arrow",
)
COLOURS: Dict[str, Tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (240, 215, 35),
    "green": (40, 160, 50),
    "blue": (35, 75, 215),
    "purple": (135, 50, 185),
    "pink": (245, 135, 190),
    "brown": (125, 75, 35),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
    "gray": (128, 128, 128),
    "cyan": (40, 205, 215),
}
TEXTURES: Tuple[str, ...] = ("plain", "striped", "dotted", "checkered", "wavy")


# --------------------------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------------------------

def _regular(n: int, start: float = -math.pi / 2) -> np.ndarray:
    t = start + np.arange(n) * 2 * math.pi / n
    return np.stack([np.cos(t), np.sin(t)], 1)


@lru_cache(maxsize=None)
def _unit_polygon(shape: str) -> np.ndarray:
    """Outline of ``shape`` as an (N, 2) array in unit coordinates (about radius 1)."""
    if shape == "circle":
        return _regular(48)
    if shape == "square":
        return _regular(4, -math.pi / 4) * 1.1
    if shape == "triangle":
        pts = _regular(3) * 1.15
        return pts + np.array([0.0, 0.15])
    if shape == "pentagon":
        return _regular(5)
    if shape == "hexagon":
        return _regular(6, 0.0)
    if shape == "star":
        outer, inner = _regular(5) * 1.1, _regular(5, -math.pi / 2 + math.pi / 5) * 0.45
        return np.stack([outer, inner], 1).reshape(-1, 2)
    if shape == "diamond":
        return np.array([[0, -1.15], [0.62, 0], [0, 1.15], [-0.62, 0]], dtype=float)
    if shape == "cross":
        a, b = 1.0, 0.34
        return np.array([[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b], [b, a], [-b, a],
                         [-b, b], [-a, b], [-a, -b], [-b, -b]], dtype=float)
    if shape == "heart":
        t = np.linspace(0, 2 * math.pi, 64, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        pts = np.stack([x, y], 1) / 16.0
        return pts - np.array([0.0, 0.15])
    if shape == "arrow":
        return np.array([[-1, -0.28], [0.15, -0.28], [0.15, -0.7], [1, 0], [0.15, 0.7],
                         [0.15, 0.28], [-1, 0.28]], dtype=float)
    raise KeyError(f"unknown shape {shape!r}; known: {SHAPES}")


_MAX_ROT = {"circle": 180, "star": 180, "arrow": 180, "hexagon": 30, "pentagon": 36}


def _place(shape: str, cx: float, cy: float, r: float, rot_deg: float,
           jitter: float = 0.0, rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """Polygon of ``shape`` in canvas pixel coordinates, (N, 2)."""
    pts = _unit_polygon(shape).copy()
    if jitter and rng is not None:
        noise = rng.normal(0, jitter, pts.shape)
        if len(pts) > 12:  # smooth hand-drawn wobble instead of per-vertex scribble
            k = 7
            padded = np.concatenate([noise[-k:], noise, noise[:k]])
            kernel = np.ones(k) / k
            noise = np.stack([np.convolve(padded[:, j], kernel, "same")[k:-k] for j in range(2)], 1)
            noise *= 2.0
        pts = pts + noise
    th = math.radians(rot_deg)
    rotm = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    return pts @ rotm.T * r + np.array([cx, cy])


def _mask(points: np.ndarray, outline_width: int = 0) -> Tuple[np.ndarray, Tuple[int, int, int, int]]:
    """Anti-aliased float32 mask in [0, 1] of a filled polygon (or its outline), cropped to its
    bounding box; returns (mask, (x0, y0, x1, y1)) in canvas pixels."""
    pad = outline_width + 2
    x0 = max(int(math.floor(points[:, 0].min())) - pad, 0)
    y0 = max(int(math.floor(points[:, 1].min())) - pad, 0)
    x1 = min(int(math.ceil(points[:, 0].max())) + pad, CANVAS)
    y1 = min(int(math.ceil(points[:, 1].max())) + pad, CANVAS)
    w, h = max(x1 - x0, 1), max(y1 - y0, 1)
    img = Image.new("L", (w * _SS, h * _SS), 0)
    draw = ImageDraw.Draw(img)
    pts = [(float(x - x0) * _SS, float(y - y0) * _SS) for x, y in points]
    if outline_width > 0:
        draw.line(pts + [pts[0], pts[1]], fill=255, width=outline_width * _SS, joint="curve")
    else:
        draw.polygon(pts, fill=255)
    img = img.resize((w, h), Image.BOX)
    return np.asarray(img, dtype=np.float32) * np.float32(1 / 255.0), (x0, y0, x0 + w, y0 + h)


# --------------------------------------------------------------------------------------------
# Colours, textures, backgrounds
# --------------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _grid() -> Tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:CANVAS, 0:CANVAS].astype(np.float32)
    return x, y


def _colour(rng: np.random.Generator, name: str, spread: float = 14.0) -> np.ndarray:
    base = np.array(COLOURS[name], dtype=np.float32)
    return np.clip(base + rng.normal(0, spread, 3), 0, 255).astype(np.float32)


def _pattern(rng: np.random.Generator, texture: str,
             box: Tuple[int, int, int, int], scale: float = 1.0) -> Optional[np.ndarray]:
    """Boolean map of the secondary colour of a texture over ``box`` (None for plain)."""
    if texture == "plain":
        return None
    x0, y0, x1, y1 = box
    gx, gy = _grid()
    x, y = gx[y0:y1, x0:x1], gy[y0:y1, x0:x1]
    th = rng.uniform(0, math.pi)
    u = x * math.cos(th) + y * math.sin(th)
    v = -x * math.sin(th) + y * math.cos(th)
    if texture == "striped":
        period = rng.uniform(12, 16) * scale
        return np.sin(2 * math.pi * u / period + rng.uniform(0, 6.3)) > 0
    if texture == "wavy":
        period = rng.uniform(12, 16) * scale
        return np.sin(2 * math.pi * u / period + 2.2 * np.sin(2 * math.pi * v / 14.0)) > 0
    if texture == "checkered":
        period = rng.uniform(10, 14) * scale
        return ((np.floor(u / period) + np.floor(v / period)) % 2) == 0
    if texture == "dotted":
        period = rng.uniform(12, 16) * scale
        rad = period * rng.uniform(0.28, 0.34)
        du = (u % period) - period / 2
        dv = (v % period) - period / 2
        return du * du + dv * dv < rad * rad
    raise KeyError(f"unknown texture {texture!r}; known: {TEXTURES}")


def _secondary(rng: np.random.Generator, primary: np.ndarray) -> np.ndarray:
    lum = float(primary @ np.array([0.299, 0.587, 0.114]))
    if lum > 150 or (lum > 60 and rng.random() < 0.5):
        return primary * rng.uniform(0.15, 0.35)  # dark pattern
    return primary + (255 - primary) * rng.uniform(0.7, 0.9)  # light pattern


def _random_rgb(rng: np.random.Generator, lo: float = 0, hi: float = 255) -> np.ndarray:
    return rng.uniform(lo, hi, 3).astype(np.float32)


def _upsampled_noise(rng: np.random.Generator, cells: int) -> np.ndarray:
    small = rng.uniform(0, 255, (cells, cells)).astype(np.uint8)
    img = Image.fromarray(small, "L").resize((CANVAS, CANVAS), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32) / 255.0


def _background(rng: np.random.Generator, kind: str) -> np.ndarray:
    x, y = _grid()
    if kind == "plain":
        c = _random_rgb(rng, 40, 235)
        return np.broadcast_to(c, (CANVAS, CANVAS, 3)).copy()
    if kind == "gradient":
        a, b = _random_rgb(rng, 30, 240), _random_rgb(rng, 30, 240)
        th = rng.uniform(0, 2 * math.pi)
        t = (x * math.cos(th) + y * math.sin(th)) / CANVAS
        t = (t - t.min()) / (t.max() - t.min() + 1e-6)
        return a + (b - a) * t[..., None]
    if kind == "noise":
        a, b = _random_rgb(rng, 20, 240), _random_rgb(rng, 20, 240)
        t = _upsampled_noise(rng, int(rng.integers(4, 12)))
        return a + (b - a) * t[..., None]
    if kind == "grid":
        a, b = _random_rgb(rng, 60, 240), _random_rgb(rng, 0, 200)
        period = rng.uniform(10, 24)
        lines = ((x % period) < 1.5) | ((y % period) < 1.5)
        return np.where(lines[..., None], b, a)
    if kind == "blobs":
        img = np.broadcast_to(_random_rgb(rng, 40, 230), (CANVAS, CANVAS, 3)).copy()
        for _ in range(int(rng.integers(3, 7))):
            cx, cy = rng.uniform(0, CANVAS, 2)
            rx, ry = rng.uniform(12, 45, 2)
            m = (((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2) < 1
            img[m] = img[m] * 0.3 + _random_rgb(rng, 20, 240) * 0.7
        return img
    if kind == "paper":
        base = np.array([rng.uniform(225, 252)] * 3, dtype=np.float32)
        base += rng.normal(0, 4, 3)
        img = base + (_upsampled_noise(rng, 16)[..., None] - 0.5) * 14
        if rng.random() < 0.5:  # ruled paper
            period = rng.uniform(12, 20)
            lines = (y % period) < 1.0
            img = np.where(lines[..., None], img * np.array([0.85, 0.9, 1.0]), img)
        return img
    raise KeyError(kind)


# --------------------------------------------------------------------------------------------
# Scenes
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    texture: str
    size: float  # radius as a fraction of the canvas side
    outline: bool = False


@dataclass(frozen=True)
class Style:
    """Rendering parameters of a domain."""

    backgrounds: Tuple[str, ...]
    n_distractors: Tuple[int, int]  # inclusive range
    distractor_size: Tuple[float, float]
    main_size: Tuple[float, float]
    offset: float  # max centre offset of the main object, fraction of the canvas
    outline_prob: float
    noise: Tuple[float, float]  # gaussian pixel noise std range
    blur_prob: float
    cast: float  # std of the per-channel lighting gain
    jitter: float = 0.0  # hand-drawn vertex jitter (outline drawings)
    hue: Tuple[float, float] = (0.0, 0.0)  # palette shift: hue rotation (mean, std) in degrees
    texture_scale: float = 1.0  # multiplies the period of fill patterns


STYLES: Dict[str, Style] = {
    # the micro-CLIPs were pretrained with this style: changing it changes what the
    # committed pretraining command produces
    "pretrain": Style(backgrounds=("plain", "gradient", "noise", "grid", "blobs"),
                      n_distractors=(0, 1), distractor_size=(0.08, 0.15), main_size=(0.22, 0.42),
                      offset=0.15, outline_prob=0.15, noise=(0.0, 10.0), blur_prob=0.2,
                      cast=0.06, jitter=0.03),
    "photo": Style(backgrounds=("plain", "gradient", "noise", "grid", "blobs"),
                   n_distractors=(0, 1), distractor_size=(0.09, 0.19), main_size=(0.28, 0.42),
                   offset=0.15, outline_prob=0.0, noise=(0.0, 6.0), blur_prob=0.15, cast=0.08,
                   hue=(-40.0, 10.0)),
    # SynthTextures: as "photo", with a pattern shift (finer fills) instead of the palette shift
    "photo_texture": Style(backgrounds=("plain", "gradient", "noise", "grid", "blobs"),
                           n_distractors=(0, 1), distractor_size=(0.09, 0.19),
                           main_size=(0.28, 0.42), offset=0.15, outline_prob=0.0,
                           noise=(0.0, 6.0), blur_prob=0.15, cast=0.08, texture_scale=0.7),
    "sketch": Style(backgrounds=("paper",), n_distractors=(0, 1), distractor_size=(0.09, 0.18),
                    main_size=(0.28, 0.42), offset=0.18, outline_prob=1.0, noise=(1.0, 5.0),
                    blur_prob=0.3, cast=0.0, jitter=0.03),
}


def _rotate_hue(img: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate the hue of an RGB float image (0-255) by ``degrees`` (YIQ rotation)."""
    th = math.radians(degrees)
    to_yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                      dtype=np.float32)
    rot = np.array([[1, 0, 0], [0, math.cos(th), -math.sin(th)], [0, math.sin(th), math.cos(th)]],
                   dtype=np.float32)
    m = np.linalg.inv(to_yiq).astype(np.float32) @ rot @ to_yiq
    return img @ m.T.astype(np.float32)


def random_object(rng: np.random.Generator, shapes: Sequence[str] = SHAPES,
                  colours: Sequence[str] = tuple(COLOURS), textures: Sequence[str] = TEXTURES,
                  size_range: Tuple[float, float] = (0.1, 0.2)) -> Obj:
    return Obj(shape=str(rng.choice(list(shapes))), colour=str(rng.choice(list(colours))),
               texture=str(rng.choice(list(textures))), size=float(rng.uniform(*size_range)))


def _draw(img: np.ndarray, rng: np.random.Generator, obj: Obj, cx: float, cy: float,
          style: Style, record: Optional[list] = None) -> None:
    """Draw ``obj`` into ``img``; ``record`` (a list) gets ``(mask, box, pattern)`` of a filled
    object (its coverage, bounding box and secondary-colour map or None) without drawing any
    random number more, so the pixels are the same with or without it."""
    rot = rng.uniform(-1, 1) * _MAX_ROT.get(obj.shape, 18)
    r = obj.size * CANVAS
    primary = _colour(rng, obj.colour)
    if obj.outline:
        width = int(rng.integers(2, 5))
        pts = _place(obj.shape, cx, cy, r, rot, style.jitter, rng)
        m, box = _mask(pts, outline_width=width)
        fill = primary
        _composite(img, m, box, fill)
        if style.jitter and rng.random() < 0.5:  # a second, sloppier stroke
            pts2 = _place(obj.shape, cx + rng.normal(0, 1), cy + rng.normal(0, 1), r, rot,
                          style.jitter * 1.5, rng)
            m2, box2 = _mask(pts2, outline_width=max(1, width - 1))
            _composite(img, m2 * np.float32(0.7), box2, fill)
        return
    pts = _place(obj.shape, cx, cy, r, rot)
    m, box = _mask(pts)
    pat = _pattern(rng, obj.texture, box, style.texture_scale)
    if record is not None:
        record.append((m, box, pat))
    if pat is None:
        _composite(img, m, box, primary)
    else:
        fill = np.where(pat[..., None], _secondary(rng, primary).astype(np.float32), primary)
        _composite(img, m, box, fill)


def _composite(img: np.ndarray, m: np.ndarray, box: Tuple[int, int, int, int], fill) -> None:
    x0, y0, x1, y1 = box
    region = img[y0:y1, x0:x1]
    m = m[: region.shape[0], : region.shape[1], None]
    if not isinstance(fill, np.ndarray) or fill.ndim == 1:
        region += (np.asarray(fill, dtype=np.float32) - region) * m
    else:
        region += (fill[: region.shape[0], : region.shape[1]] - region) * m


def render(rng: np.random.Generator, main: Obj, domain: str,
           distractors: Optional[List[Obj]] = None) -> Tuple[Image.Image, dict]:
    """Render one scene. Returns the PIL RGB image and a dict of what was drawn: ``background``,
    ``distractors`` and ``drawn``, the ``(mask, box, pattern)`` of each filled object in drawing
    order (distractors first, the main object last; outline drawings record nothing)."""
    drawn: list = []
    style = STYLES[domain]
    bg_kind = str(rng.choice(list(style.backgrounds)))
    img = _background(rng, bg_kind).astype(np.float32)
    if distractors is None:
        n = int(rng.integers(style.n_distractors[0], style.n_distractors[1] + 1))
        distractors = [random_object(rng, size_range=style.distractor_size) for _ in range(n)]
    outline_all = domain == "sketch"
    for d in distractors:
        d = Obj(d.shape, d.colour, d.texture, d.size, outline=outline_all or main.outline)
        cx, cy = rng.uniform(d.size * CANVAS, CANVAS - d.size * CANVAS, 2)
        _draw(img, rng, d, cx, cy, style, drawn)
    off = style.offset * CANVAS
    cx, cy = CANVAS / 2 + rng.uniform(-off, off, 2)
    _draw(img, rng, main, cx, cy, style, drawn)
    if style.hue != (0.0, 0.0):
        img = _rotate_hue(img, rng.normal(*style.hue))
    if style.cast > 0:
        gain = 1 + rng.normal(0, style.cast, 3)
        img = img * (gain * rng.uniform(0.8, 1.15)).astype(np.float32) + np.float32(rng.uniform(-15, 15))
    sigma = rng.uniform(*style.noise)
    if sigma > 0:
        img = img + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(sigma)
    pil = Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), "RGB")
    if style.blur_prob > 0 and rng.random() < style.blur_prob:
        pil = pil.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 1.2))))
    return pil, {"background": bg_kind, "distractors": distractors, "drawn": drawn}


# --------------------------------------------------------------------------------------------
# Downstream datasets
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SynthSpec:
    name: str  # registry / split-file name
    dataset_dir: str
    classes: Tuple[str, ...]  # "<colour> <shape>" or "<colour> <texture> <shape>"
    kind: str  # "colour_shape" or "colour_texture_shape": the attributes a classname fixes
    domain: str
    counts: Dict[str, int]  # images per class per split
    index: int  # used in the per-image seed


def _colour_shape_classes() -> Tuple[str, ...]:
    """Ten classes, each with its own colour and its own shape ("red circle", ...)."""
    colours = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "cyan",
               "black")
    return tuple(f"{c} {s}" for c, s in zip(colours, SHAPES))


def _colour_texture_classes() -> Tuple[str, ...]:
    """Twenty classes: 4 colours x 5 fill textures, each texture on a shape of its own
    ("red striped square", ...)."""
    shape_of = {"plain": "circle", "striped": "square", "dotted": "triangle",
                "checkered": "star", "wavy": "heart"}
    return tuple(f"{c} {t} {shape_of[t]}" for t in TEXTURES
                 for c in ("red", "green", "blue", "yellow"))


DATASETS: Dict[str, SynthSpec] = {
    "SynthShapes": SynthSpec("SynthShapes", "synth_shapes", _colour_shape_classes(),
                             "colour_shape", "photo", {"train": 20, "val": 5, "test": 30}, 1),
    "SynthTextures": SynthSpec("SynthTextures", "synth_textures", _colour_texture_classes(),
                               "colour_texture_shape", "photo_texture",
                               {"train": 20, "val": 5, "test": 15}, 2),
    "SynthShapesSketch": SynthSpec("SynthShapesSketch", "synth_shapes_sketch",
                                   _colour_shape_classes(), "colour_shape", "sketch",
                                   {"train": 0, "val": 0, "test": 30}, 3),
}
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}

# Prompt templates: one CoOp-style template and a small hand-engineered ensemble per dataset
# (the shifted variant uses its source dataset's, as ImageNet-Sketch uses ImageNet's).
TEMPLATE = "a photo of a {}."
TEMPLATES: Tuple[str, ...] = ("a photo of a {}.", "a picture of a {}.", "a {}.",
                              "a photo of a small {}.", "a photo of a large {}.")
SOURCE = {"SynthShapesSketch": "SynthShapes"}  # shifted variant -> dataset it shifts


def class_object(rng: np.random.Generator, spec: SynthSpec, label: int) -> Obj:
    """The main object of an image of class ``label``: the attributes its name fixes, the
    others (fill texture of a colour-shape class, size) drawn at random."""
    words = spec.classes[label].split()
    size = float(rng.uniform(*STYLES[spec.domain].main_size))
    outline = spec.domain == "sketch"
    if spec.kind == "colour_shape":
        colour, shape = words
        texture = str(rng.choice(["plain", "plain", "striped", "dotted", "checkered", "wavy"]))
        return Obj(shape, colour, texture, size, outline=outline)
    if spec.kind == "colour_texture_shape":
        colour, texture, shape = words
        return Obj(shape, colour, texture, size, outline=outline)
    raise KeyError(f"unknown class kind {spec.kind!r}")


def render_pretrain_scene(job: Tuple[int, int]) -> Tuple[bytes, Obj]:
    """Pretraining scene ``i`` for ``seed`` (job = (seed, i)): raw RGB bytes and its main object.

    Depends only on (seed, i); top-level so worker processes can run it.
    """
    seed, i = job
    style = STYLES["pretrain"]
    rng = np.random.default_rng([seed, 104729, i])
    obj = random_object(rng, size_range=style.main_size)
    if rng.random() < style.outline_prob:
        obj = Obj(obj.shape, obj.colour, obj.texture, obj.size, outline=True)
    img, _ = render(rng, obj, "pretrain")
    return img.tobytes(), obj


def run_jobs(fn, jobs: list, chunksize: int = 32) -> list:
    """``[fn(j) for j in jobs]``, in forked worker processes when several CPUs are available.

    Fork (not spawn) so that a user script calling this without an ``if __name__ ==
    "__main__"`` guard works: spawned workers would re-run that script. The workers only
    render with NumPy and PIL, never torch. Where fork is unavailable, the jobs run here.
    """
    workers = _num_workers()
    if workers > 1 and len(jobs) > 64 and sys.platform.startswith("linux"):
        import multiprocessing as mp
        import warnings
        from concurrent.futures import ProcessPoolExecutor

        with warnings.catch_warnings():
            # Python >= 3.12 warns about fork in a multi-threaded process (torch's pools);
            # the children run no torch code, so the usual deadlock cannot happen here
            warnings.simplefilter("ignore", DeprecationWarning)
            with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
                return list(pool.map(fn, jobs, chunksize=chunksize))
    return [fn(j) for j in jobs]


def folder_name(classname: str) -> str:
    return classname.replace(" ", "_")


def render_item(spec: SynthSpec, split: str, label: int, index: int, seed: int) -> Image.Image:
    rng = np.random.default_rng([seed, spec.index, _SPLIT_IDS[split], label, index])
    img, _ = render(rng, class_object(rng, spec, label), spec.domain)
    return img


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1, optimize=False)
    return buf.getvalue()


def _render_job(job: Tuple[str, str, str, int, int, int]) -> None:
    """Render one image and write it (top-level so worker processes can run it)."""
    name, folder, split, label, index, seed = job
    spec = DATASETS[name]
    rel = f"{folder_name(spec.classes[label])}/{split}_{index:04d}.png"
    with open(osp.join(folder, "images", rel), "wb") as f:
        f.write(png_bytes(render_item(spec, split, label, index, seed)))


def _num_workers() -> int:
    env = os.environ.get("FSCLIP_SYNTH_WORKERS", "")
    if env.strip():
        return max(1, int(env))
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(1, min(4, n))


def _write_dataset(spec: SynthSpec, folder: str, seed: int) -> None:
    split: Dict[str, list] = {"train": [], "val": [], "test": []}
    jobs = []
    for label, classname in enumerate(spec.classes):
        os.makedirs(osp.join(folder, "images", folder_name(classname)), exist_ok=True)
    for name in ("train", "val", "test"):
        for label, classname in enumerate(spec.classes):
            for i in range(spec.counts[name]):
                rel = f"{folder_name(classname)}/{name}_{i:04d}.png"
                split[name].append([rel, label, classname])
                jobs.append((spec.name, folder, name, label, i, seed))
    run_jobs(_render_job, jobs)
    with open(osp.join(folder, f"split_zhou_{spec.name}.json"), "w", encoding="utf-8") as f:
        json.dump(split, f, indent=1)
        f.write("\n")
    with open(osp.join(folder, MARKER), "w", encoding="utf-8") as f:
        json.dump(_marker(spec, seed), f, sort_keys=True)
        f.write("\n")


def _marker(spec: SynthSpec, seed: int) -> dict:
    return {"name": spec.name, "version": GENERATOR_VERSION, "seed": int(seed)}


def is_complete(root: str, name: str, seed: int = DEFAULT_SEED) -> bool:
    spec = DATASETS[name]
    path = osp.join(root, spec.dataset_dir, MARKER)
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f) == _marker(spec, seed)
    except (OSError, ValueError):
        return False


def ensure_dataset(root: str, name: str, seed: int = DEFAULT_SEED, verbose: bool = True) -> str:
    """Return ``<root>/<dataset_dir>``, generating the dataset there first if needed.

    A folder without a matching marker (interrupted generation, other seed or generator
    version) is replaced. Safe when several processes call this at once.
    """
    if name not in DATASETS:
        raise KeyError(f"unknown synthetic dataset {name!r}; known: {sorted(DATASETS)}")
    spec = DATASETS[name]
    root = osp.abspath(osp.expanduser(root))
    final = osp.join(root, spec.dataset_dir)
    if is_complete(root, name, seed):
        return final
    os.makedirs(root, exist_ok=True)
    if verbose:
        print(f"Generating synthetic dataset {name} (seed {seed}) under {final}")
    tmp = tempfile.mkdtemp(prefix=f".{spec.dataset_dir}.tmp-", dir=root)
    try:
        _write_dataset(spec, tmp, seed)
        os.chmod(tmp, 0o755)
        for _ in range(3):
            if is_complete(root, name, seed):  # another process finished first
                break
            if osp.exists(final):  # stale or incomplete copy: move it aside, then drop it
                stale = tempfile.mkdtemp(prefix=f".{spec.dataset_dir}.stale-", dir=root)
                try:
                    os.rename(final, osp.join(stale, "old"))
                except OSError:
                    pass
                shutil.rmtree(stale, ignore_errors=True)
            try:
                os.rename(tmp, final)
                break
            except OSError:
                continue  # someone created `final` in between: look again
        else:
            if not is_complete(root, name, seed):
                raise RuntimeError(f"could not move generated dataset into {final}")
    finally:
        if osp.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def ensure_all(root: str, seed: int = DEFAULT_SEED, verbose: bool = True) -> Dict[str, str]:
    return {name: ensure_dataset(root, name, seed, verbose) for name in DATASETS}


def tree_digest(folder: str) -> Dict[str, str]:
    """SHA-256 of every file under ``folder`` (relative path -> hex digest)."""
    out = {}
    for dirpath, _, files in os.walk(folder):
        for fn in files:
            path = osp.join(dirpath, fn)
            with open(path, "rb") as f:
                out[osp.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return dict(sorted(out.items()))


def main(argv: Optional[Sequence[str]] = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Generate the synthetic benchmark")
    parser.add_argument("--root", required=True, help="DATASET.ROOT to write into")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--preview", default="", help="also write a contact sheet PNG here")
    args = parser.parse_args(argv)
    paths = ensure_all(args.root, args.seed)
    for name, path in paths.items():
        print(f"{name}: {path}")
    if args.preview:
        tiles = []
        for name in DATASETS:
            spec = DATASETS[name]
            for label in range(min(10, len(spec.classes))):
                tiles.append(render_item(spec, "test", label, 0, args.seed))
        cols = 10
        rows = math.ceil(len(tiles) / cols)
        sheet = Image.new("RGB", (cols * CANVAS, rows * CANVAS))
        for k, t in enumerate(tiles):
            sheet.paste(t, ((k % cols) * CANVAS, (k // cols) * CANVAS))
        sheet.save(args.preview)


if __name__ == "__main__":
    main()
