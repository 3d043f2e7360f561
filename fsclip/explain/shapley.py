"""``fsclip-explain shapley``: Shapley values of image parts for the true class (SAFE Fig. 1).

The players are the image's parts (:mod:`fsclip.explain.parts`, the background one of them); a
coalition S keeps its parts' pixels and replaces the others by a baseline image b::

    x_S = x * M_S + b * (1 - M_S)          M_S: the union of the masks of the parts in S
    v(S) = softmax(logits(x_S))_y          y: the true class (its probability, as in SAFE)
    phi_i = sum_{S not containing i} |S|! (P - |S| - 1)! / P! * (v(S + i) - v(S))

so that sum_i phi_i = v(all) - v(none) (efficiency). Baselines (``--baseline``): ``mean`` (the
image's own mean colour), ``blur`` (the image under a Gaussian blur of sigma = side / 16) or
``zero`` (0 in the model's normalised input: CLIP's mean pixel).

Exact: all 2^P coalitions in batches, up to :data:`MAX_EXACT` parts. ``--samples M``: Monte-Carlo
over M random permutations (parts added one by one to the baseline; phi_i is the mean of i's
marginal contributions, the error bar its standard error std / sqrt(M)), for any number of
parts. Written here rather than with captum's ``ShapleyValueSampling`` because that gives no
error bar and evaluates each permutation's steps separately; the tests check the exact values
against captum's ``ShapleyValues``.

Writes ``shapley.png`` (a row per image: its parts painted, then bars per part, one per model;
zero-shot CLIP is always one of them), ``shapley.npz`` (values, error bars, part maps) and
``shapley.json`` (the values by part name, v(all), v(none), and their means over the images).
"""

from __future__ import annotations

import argparse
import math
import os.path as osp
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from fsclip.errors import ConfigError

MAX_EXACT = 8  # 2^8 = 256 coalitions per image and model
BASELINES = ("mean", "blur", "zero")
ValueFn = Callable[[Any], Any]  # bool coalitions [B, P] -> values [B]


def add_parser(subparsers: Any, parents: Sequence[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = subparsers.add_parser("shapley", parents=list(parents), help=__doc__.splitlines()[0].split(": ", 1)[1],
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", nargs="+", default=[], metavar="FILE",
                   help="PartImageNet-style COCO JSON (all images) or one label PNG per image; "
                        "default for the kit's SynthShapes/SynthTextures: their part annotations")
    p.add_argument("--part-names", nargs="+", default=None, metavar="NAME",
                   help="names of a label PNG's non-zero values, in increasing order")
    p.add_argument("--baseline", default="mean", choices=BASELINES, help="what replaces a part left out")
    p.add_argument("--samples", type=int, default=0, metavar="M",
                   help=f"Monte-Carlo permutations (default: exact enumeration, up to {MAX_EXACT} parts)")
    p.add_argument("--batch", type=int, default=64, help="coalitions per forward pass")
    p.set_defaults(func=run)
    return p


# ---------------------------------------------------------------------------------- the maths
def all_coalitions(num_parts: int) -> Any:
    """``[2^P, P]`` bool: row s holds the parts of bitmask s (bit i = part i)."""
    import torch

    s = torch.arange(2 ** num_parts)[:, None]
    return (s >> torch.arange(num_parts)[None]) & 1 == 1


def _evaluate(value: ValueFn, coalitions: Any, batch: int) -> Any:
    import torch

    with torch.no_grad():
        return torch.cat([value(coalitions[i:i + batch]).double() for i in range(0, coalitions.shape[0], batch)])


def exact_shapley(value: ValueFn, num_parts: int, batch: int = 64) -> Tuple[Any, Any]:
    """Exact Shapley values ``[P]`` (float64) of the game ``value`` over ``num_parts`` players, and
    the values of all coalitions ``[2^P]`` (index = bitmask)."""
    import torch

    if num_parts > MAX_EXACT:
        raise ConfigError(f"exact Shapley values enumerate 2^{num_parts} coalitions; at most {MAX_EXACT} parts: "
                          f"pass --samples M for Monte-Carlo permutation sampling")
    coalitions = all_coalitions(num_parts)
    v = _evaluate(value, coalitions, batch)  # [2^P]
    size = coalitions.sum(1)  # [2^P]
    phi = torch.zeros(num_parts, dtype=torch.float64)
    for i in range(num_parts):
        without = ~coalitions[:, i]  # the coalitions S not holding i; S + i is S | (1 << i)
        s = size[without]
        weight = torch.tensor([math.factorial(k) * math.factorial(num_parts - k - 1) / math.factorial(num_parts)
                               for k in s.tolist()], dtype=torch.float64)
        idx = torch.nonzero(without)[:, 0]
        phi[i] = (weight * (v[idx | (1 << i)] - v[idx])).sum()
    return phi, v


def sampled_shapley(value: ValueFn, num_parts: int, samples: int, seed: int = 0,
                    batch: int = 64) -> Tuple[Any, Any]:
    """Monte-Carlo Shapley values ``[P]`` over ``samples`` random permutations and their standard
    errors ``[P]`` (std of the marginal contributions / sqrt(samples)); coalitions met twice are
    evaluated once."""
    import torch

    if samples < 2:
        raise ConfigError(f"--samples must be at least 2 (for an error bar), got {samples}")
    g = torch.Generator().manual_seed(int(seed))
    perms = torch.stack([torch.randperm(num_parts, generator=g) for _ in range(samples)])  # [M, P]
    bits = torch.zeros(samples, num_parts + 1, dtype=torch.long)  # prefix bitmasks, [M, P+1]
    for k in range(num_parts):
        bits[:, k + 1] = bits[:, k] | (1 << perms[:, k])
    unique, inverse = torch.unique(bits, return_inverse=True)
    coalitions = (unique[:, None] >> torch.arange(num_parts)[None]) & 1 == 1
    v = _evaluate(value, coalitions, batch)[inverse]  # [M, P+1]
    marginal = torch.zeros(samples, num_parts, dtype=torch.float64)
    marginal.scatter_(1, perms, v[:, 1:] - v[:, :-1])  # marginal[m, perm[m, k]] = v(k+1) - v(k)
    return marginal.mean(0), marginal.std(0, unbiased=True) / math.sqrt(samples)


# ------------------------------------------------------------------------------- the images
def baseline_image(kind: str, x: Any) -> Any:
    """The baseline ``[3, H, W]`` for the normalised image ``x`` ``[3, H, W]``."""
    import torch

    if kind == "zero":
        return torch.zeros_like(x)
    if kind == "mean":
        return x.mean(dim=(1, 2), keepdim=True).expand_as(x).clone()
    if kind == "blur":
        from torchvision.transforms.functional import gaussian_blur

        sigma = max(x.shape[1:]) / 16.0
        k = min(2 * int(math.ceil(3 * sigma)) + 1, 2 * (min(x.shape[1:]) // 2) - 1)
        return gaussian_blur(x[None], [k, k], [sigma, sigma])[0]
    raise ConfigError(f"--baseline must be one of {', '.join(BASELINES)}, got {kind!r}")


def image_game(logits_fn: Callable[[Any], Any], x: Any, baseline: Any, masks: Any, target: int) -> ValueFn:
    """v(S) = softmax(logits(x * M_S + b * (1 - M_S)))[target] for boolean ``masks`` ``[P, H, W]``."""
    import torch

    masks = masks.to(x.device, torch.float32)

    def value(coalitions: Any) -> Any:
        keep = (coalitions.to(x.device, torch.float32) @ masks.flatten(1)).view(-1, 1, *masks.shape[1:])
        keep = keep.clamp(max=1.0)  # [B, 1, H, W]
        composite = x[None] * keep + baseline[None] * (1 - keep)  # [B, 3, H, W]
        return logits_fn(composite).float().softmax(-1)[:, target].cpu()
    return value


def _kit_parts(subject: Any, args: Any, paths: List[str]) -> Optional[str]:
    """The kit's part annotation file for these images (None: not a kit dataset with parts)."""
    from fsclip.kit.parts import PART_DATASETS, ensure_part_annotations

    name = subject.cfg.DATASET.NAME
    if name not in PART_DATASETS:
        return None
    split = args.split
    if args.images:
        splits = {osp.basename(p).split("_")[0] for p in paths}
        split = splits.pop() if len(splits) == 1 and splits <= {"train", "val", "test"} else split
    from fsclip.datasets.synthetic import default_root

    return ensure_part_annotations(subject.cfg.DATASET.ROOT or default_root(), name, split)


def run(args: Any) -> int:
    import torch

    from fsclip.explain.parts import read_parts
    from fsclip.explain.source import load_images, load_subjects

    if args.samples and args.samples < 2:
        raise ConfigError(f"--samples must be at least 2 (for an error bar), got {args.samples}")
    subjects = load_subjects(args, zero_shot=True)
    first = load_images(args, subjects[0])
    if first.labels is None:
        raise ConfigError("shapley explains the probability of each image's true class: pass --classes NAME ... "
                          "with --images (or take the images of --dataset)")
    sources = list(args.parts) or [_kit_parts(subjects[0], args, first.paths) or ""]
    if not sources[0]:
        raise ConfigError(f"shapley needs the images' parts: pass --parts FILE (PartImageNet's COCO-style JSON or one "
                          f"label PNG per image); {subjects[0].cfg.DATASET.NAME} has no built-in part annotations")
    sizes = [(img.height, img.width) for img in first.pil]
    parts = read_parts(sources, first.paths, sizes, args.part_names)
    num = max(len(p.names) for p in parts)
    if num > MAX_EXACT and not args.samples:
        worst = int(np.argmax([len(p.names) for p in parts]))
        raise ConfigError(f"image {first.paths[worst]} has {num} parts (with the background) and exact enumeration "
                          f"allows at most {MAX_EXACT}: pass --samples M (e.g. 200) for Monte-Carlo sampling")
    results: Dict[str, Any] = {}
    aligned_first = None
    for s in subjects:
        images = first if s is subjects[0] else load_images(args, s)
        aligned = [p.aligned(images.align) for p in parts]
        aligned_first = aligned_first or aligned
        rows = []
        for i in range(len(images)):
            masks = torch.as_tensor(aligned[i].masks())
            x = images.tensor[i]
            game = image_game(s.logits, x, baseline_image(args.baseline, x), masks, images.labels[i])
            P = masks.shape[0]
            if args.samples:
                phi, err = sampled_shapley(game, P, args.samples, seed=args.seed + i, batch=args.batch)
                full = torch.ones(2, P, dtype=torch.bool)
                full[1] = False
                ends = _evaluate(game, full, 2)
                v_all, v_none = float(ends[0]), float(ends[1])
            else:
                phi, v = exact_shapley(game, P, batch=args.batch)
                err, v_all, v_none = None, float(v[-1]), float(v[0])
            rows.append({"names": aligned[i].names, "phi": phi.numpy(), "stderr": None if err is None else err.numpy(),
                         "v_all": v_all, "v_none": v_none})
        results[s.label] = rows
    return write_outputs(args, subjects, first, aligned_first, results)


def _means(rows: List[Dict[str, Any]]) -> Dict[str, float]:
    """Mean value of each part name over the images that have it (the background's and
    ``object``, the sum of every part but background and distractors, included)."""
    acc: Dict[str, List[float]] = {}
    for r in rows:
        obj = 0.0
        for name, value in zip(r["names"], r["phi"]):
            acc.setdefault(name, []).append(float(value))
            if name not in ("background", "Distractor"):
                obj += float(value)
        acc.setdefault("object", []).append(obj)
    return {k: float(np.mean(v)) for k, v in acc.items()}


def write_outputs(args: Any, subjects: List[Any], images: Any, parts: List[Any], results: Dict[str, Any]) -> int:
    from fsclip.explain import panels

    labels = [s.label for s in subjects]
    n, pmax = len(images), max(len(p.names) for p in parts)
    values = np.full((len(labels), n, pmax), np.nan)
    errors = np.full_like(values, np.nan)
    for a, label in enumerate(labels):
        for i, r in enumerate(results[label]):
            values[a, i, :len(r["phi"])] = r["phi"]
            if r["stderr"] is not None:
                errors[a, i, :len(r["stderr"])] = r["stderr"]
    method = f"Monte-Carlo, {args.samples} permutations" if args.samples else "exact"
    series = [(label, [r["phi"] for r in results[label]], [r["stderr"] for r in results[label]])
              for label in labels]
    title = f"Shapley values of the parts for the true class probability ({method}, baseline {args.baseline})"
    png = panels.save_bars(osp.join(args.out, "shapley.png"), images.display, [p.names for p in parts], series,
                           row_labels=images.names(), part_maps=[p.label_map for p in parts], title=title,
                           ylabel="Shapley value")
    panels.write_npz(osp.join(args.out, "shapley.npz"), values=values, stderr=errors, models=np.array(labels),
                     part_maps=np.stack([p.label_map for p in parts]), images=images.display)
    summary = {"technique": "shapley", "method": method, "baseline": args.baseline, "models": labels,
               "runs": {s.label: s.run_dir for s in subjects if s.run_dir},
               "images": [{"path": path, "class": images.classnames[images.labels[i]], "parts": parts[i].names,
                           "values": {label: {"phi": dict(zip(results[label][i]["names"], results[label][i]["phi"])),
                                              "stderr": None if results[label][i]["stderr"] is None else
                                              dict(zip(results[label][i]["names"], results[label][i]["stderr"])),
                                              "v_all": results[label][i]["v_all"], "v_none": results[label][i]["v_none"]}
                                      for label in labels}}
                          for i, path in enumerate(images.paths)],
               "mean": {label: _means(results[label]) for label in labels}}
    panels.write_json(osp.join(args.out, "shapley.json"), summary)
    for label in labels:
        m = summary["mean"][label]
        print(f"{label}: mean Shapley value over {n} images: background {m.get('background', 0):+.4f}, "
              f"object {m.get('object', 0):+.4f}")
    print(f"Wrote {png} (+ shapley.npz, shapley.json)")
    return 0
