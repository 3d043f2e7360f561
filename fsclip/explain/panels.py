"""The figures and files of ``fsclip-explain``: matplotlib (Agg, no display), written atomically.

* :func:`save_overlay_panel`: the papers' layout, a row per image: column 0 the image, then one
  heat-map overlay per :class:`Column` (method names as column titles, file and class names as
  row labels, a colour bar, optional markers such as correspondence points);
* :func:`save_bars`: a row per image: the image with its parts painted, then grouped bars (one
  group per part, one bar per method, optional error bars), as SAFE's Fig. 1;
* :func:`write_npz`, :func:`write_json`: the raw maps and the summary beside the figures.

Every file goes through a temporary file and ``os.replace`` (``fsclip.engine.fileio``): an
error (or a full disk) leaves the previous file, never half of a new one.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from fsclip.engine.fileio import atomic_write_bytes, atomic_write_text

Marker = Tuple[float, float]  # (x, y) in image pixels


@dataclass
class Column:
    """One overlay column: ``maps`` ``[N, h, w]`` or N maps of their own sizes (each upsampled
    bilinearly onto its image; None: the
    image alone), ``images`` ``[N, H, W, 3]`` to draw under them (None: the panel's images),
    ``markers`` per row (points drawn as red dots), ``subtitles`` per row (under the image)."""

    title: str
    maps: Optional[np.ndarray] = None
    images: Optional[np.ndarray] = None
    markers: Optional[Sequence[Sequence[Marker]]] = None
    subtitles: Optional[Sequence[str]] = None


ColumnLike = Union[Column, Tuple[str, np.ndarray]]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def upsample(maps: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of ``maps`` ``[N, h, w]`` to ``size`` (H, W) (corners not aligned, as
    torch's ``interpolate``)."""
    import torch
    import torch.nn.functional as F

    t = torch.as_tensor(np.asarray(maps, dtype=np.float32))[:, None]  # [N, 1, h, w]
    return F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)[:, 0].numpy()


def _normalised(m: np.ndarray) -> np.ndarray:
    lo, hi = float(np.min(m)), float(np.max(m))
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def save_figure(fig: Any, path: str, dpi: int = 100) -> str:
    """Render ``fig`` as PNG and write it atomically to ``path``; close the figure."""
    plt = _pyplot()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def save_overlay_panel(path: str, images: np.ndarray, columns: Sequence[ColumnLike],
                       row_labels: Optional[Sequence[str]] = None, title: str = "",
                       scale: str = "per_map", colorbar_label: str = "", cmap: str = "jet",
                       alpha: float = 0.5, image_title: str = "image", cell: float = 2.2,
                       image_markers: Optional[Sequence[Sequence[Marker]]] = None) -> str:
    """Write the grid panel to ``path`` (see the module docstring); returns ``path``.

    ``images``: ``[N, H, W, 3]`` floats in [0, 1]; ``columns``: :class:`Column` or ``(title, maps)``.
    ``scale``: ``"per_map"`` min-max scales each map to [0, 1] (Grad-CAM style; the colour bar reads
    0..1), ``"shared"`` keeps the values on one range over all maps (attention weights, cosine
    similarity; the colour bar shows it). ``image_markers``: points on column 0, per row.
    """
    plt = _pyplot()
    images = np.asarray(images, dtype=np.float32)
    cols = [c if isinstance(c, Column) else Column(title=c[0], maps=c[1]) for c in columns]
    n, size = images.shape[0], images.shape[1:3]
    ups: List[Optional[np.ndarray]] = []
    for c in cols:
        if c.maps is None:
            ups.append(None)
            continue
        m = np.stack([upsample(np.asarray(x, dtype=np.float32)[None], size)[0] for x in c.maps])
        ups.append(np.stack([_normalised(x) for x in m]) if scale == "per_map" else m)
    values = [u for u in ups if u is not None]
    if scale == "per_map":
        vmin, vmax = 0.0, 1.0
    else:
        vmin = float(min(u.min() for u in values)) if values else 0.0
        vmax = float(max(u.max() for u in values)) if values else 1.0
        vmax = vmax if vmax > vmin else vmin + 1e-6
    ncol = 1 + len(cols)
    fig, axes = plt.subplots(n, ncol, figsize=(cell * ncol + 0.9, cell * n + (0.5 if title else 0.2)),
                             squeeze=False, layout="constrained")
    mappable = None
    for i in range(n):
        axes[i, 0].imshow(np.clip(images[i], 0, 1))
        for x, y in (image_markers[i] if image_markers is not None else ()):
            axes[i, 0].plot([x], [y], "o", ms=7, mfc="red", mec="white", mew=1.5)
        for j, (c, up) in enumerate(zip(cols, ups), start=1):
            ax = axes[i, j]
            base = images if c.images is None else np.asarray(c.images, dtype=np.float32)
            ax.imshow(np.clip(base[i], 0, 1))
            if up is not None:
                mappable = ax.imshow(up[i], cmap=cmap, alpha=alpha, vmin=vmin, vmax=vmax)
            for x, y in (c.markers[i] if c.markers is not None else ()):
                ax.plot([x], [y], "o", ms=7, mfc="red", mec="white", mew=1.5)
            if c.subtitles is not None and c.subtitles[i]:
                ax.set_xlabel(c.subtitles[i], fontsize=8)
        if row_labels is not None:
            axes[i, 0].set_ylabel(row_labels[i], fontsize=8)
    for j, name in enumerate([image_title] + [c.title for c in cols]):
        axes[0, j].set_title(name, fontsize=10)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=11)
    if mappable is not None:
        bar = fig.colorbar(mappable, ax=axes.ravel().tolist(), fraction=0.025, pad=0.02)
        bar.set_label(colorbar_label or ("normalised per map" if scale == "per_map" else "value"), fontsize=8)
    return save_figure(fig, path)


PART_COLOURS = np.array([[0.55, 0.55, 0.55], [0.89, 0.10, 0.11], [0.22, 0.49, 0.72], [0.30, 0.69, 0.29],
                         [0.60, 0.31, 0.64], [1.00, 0.50, 0.00], [0.65, 0.34, 0.16], [0.97, 0.51, 0.75],
                         [0.90, 0.90, 0.20], [0.10, 0.75, 0.75]])


def part_colour(k: int) -> np.ndarray:
    """The colour of part ``k`` (0 = background: grey)."""
    return PART_COLOURS[k % len(PART_COLOURS)]


def paint_parts(image: np.ndarray, parts: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """``image`` ``[H, W, 3]`` with part ``k`` of the label map ``parts`` ``[H, W]`` tinted in
    :func:`part_colour` (k); the background (0) is left as it is."""
    out = np.asarray(image, dtype=np.float32).copy()
    for k in np.unique(parts):
        if k == 0:
            continue
        m = parts == k
        out[m] = (1 - alpha) * out[m] + alpha * part_colour(int(k))
    return np.clip(out, 0, 1)


def save_bars(path: str, images: np.ndarray, part_names: Sequence[Sequence[str]],
              series: Sequence[Tuple[str, Sequence[np.ndarray], Optional[Sequence[np.ndarray]]]],
              row_labels: Optional[Sequence[str]] = None, part_maps: Optional[Sequence[np.ndarray]] = None,
              title: str = "", ylabel: str = "value", cell: float = 2.6) -> str:
    """Write a row per image: the image (its parts painted when ``part_maps`` ``[H, W]`` label maps
    are given, label k = ``part_names[i][k]``), then grouped bars, one group per part and one bar
    per series ``(name, values per image [P_i], error bars per image [P_i] or None)``."""
    plt = _pyplot()
    n = len(part_names)
    width = max(4.0, 0.55 * max(len(p) for p in part_names) * max(1, len(series)))
    fig, axes = plt.subplots(n, 2, figsize=(cell + width, cell * n + (0.5 if title else 0.2)), squeeze=False,
                             gridspec_kw={"width_ratios": [cell, width]})
    colours = plt.get_cmap("tab10")
    for i in range(n):
        img = np.asarray(images[i], dtype=np.float32)
        axes[i, 0].imshow(paint_parts(img, part_maps[i]) if part_maps is not None else np.clip(img, 0, 1))
        axes[i, 0].set_xticks([])
        axes[i, 0].set_yticks([])
        if row_labels is not None:
            axes[i, 0].set_ylabel(row_labels[i], fontsize=8)
        ax = axes[i, 1]
        names = list(part_names[i])
        x = np.arange(len(names))
        w = 0.8 / max(1, len(series))
        for s, (label, values, errors) in enumerate(series):
            err = None if errors is None or errors[i] is None else np.asarray(errors[i])
            ax.bar(x - 0.4 + w * (s + 0.5), np.asarray(values[i]), w, yerr=err, capsize=3,
                   color=colours(s), label=label)
        ax.axhline(0.0, color="black", lw=0.8)
        ax.set_xticks(x)
        ax.set_xticklabels(names, fontsize=8, rotation=20 if max(len(t) for t in names) > 8 else 0)
        if part_maps is not None:
            for k, tick in enumerate(ax.get_xticklabels()):
                tick.set_color(part_colour(k) * 0.8 if k else "black")
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(axis="y", labelsize=8)
        ax.legend(fontsize=8, loc="best")
    axes[0, 0].set_title("image", fontsize=10)
    axes[0, 1].set_title(ylabel, fontsize=10)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)


def write_npz(path: str, **arrays: Any) -> str:
    """The arrays, compressed, atomically at ``path`` (plain arrays: they load back with
    ``np.load(path)``, no pickle)."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    atomic_write_bytes(path, buf.getvalue())
    return path


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def write_json(path: str, obj: Dict[str, Any]) -> str:
    """``obj`` (NumPy values converted) as indented JSON, atomically at ``path``."""
    atomic_write_text(path, json.dumps(_plain(obj), indent=1) + "\n")
    return path
