"""``fsclip-explain correspondence``: dense correspondence across two images (SAFE Figs. 3 and 6).

A source point p on image A picks the feature f_A(p) of the cell it falls in, at each stage of
the image encoder; the heat map over image B is the cosine similarity

    s(q) = <f_A(p), f_B(q)> / (|f_A(p)| |f_B(q)|)       for every cell q of B's feature map,

and the predicted target point is the centre of the cell argmax_q s(q) (Fig. 3). Stages
(``--stages``), one row each as in Fig. 6:

* ResNet: ``layer1`` .. ``layer4`` (the residual stages' outputs) and ``attnpool``, the attention
  pool's values v_j = Linear_v(F_j + pos_j) (Eq. 2; the positional embedding is part of the
  pool's input);
* ViT: ``block<k>`` (1-based), the patch tokens after block k reshaped to the grid (default:
  four blocks evenly spaced up to the last).

The features are the subject's CLIP image encoder (for SAFE: the frozen trunk; its stages are
CLIP's). Images: ``--images A B``, or with ``--dataset`` the first image of the seeded draw and
another image of its class. ``--point X Y``: the source point in image A's model-input pixels
(default: the centre). Writes ``correspondence.png``, ``.npz`` (heat maps) and ``.json``.
"""

from __future__ import annotations

import argparse
import os.path as osp
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from fsclip.errors import ConfigError, DataError

RN_STAGES = ("layer1", "layer2", "layer3", "layer4", "attnpool")


def add_parser(subparsers: Any, parents: Sequence[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = subparsers.add_parser("correspondence", parents=list(parents),
                              help="dense correspondence of a source point on image A over image B (SAFE Figs. 3, 6)",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--point", nargs=2, type=float, default=None, metavar=("X", "Y"),
                   help="source point on image A, in model-input pixels (default: the centre)")
    p.add_argument("--stages", nargs="+", default=None, metavar="STAGE",
                   help="ResNet: layer1..layer4, attnpool (default: all); ViT: block<k> (default: 4 evenly spaced)")
    p.set_defaults(func=run)
    return p


def default_stages(visual: Any) -> List[str]:
    from fsclip.clip.features import is_vit

    if not is_vit(visual):
        return list(RN_STAGES)
    depth = len(visual.transformer.resblocks)
    picks = sorted({max(1, round(depth * k / 4)) for k in range(1, 5)})
    return [f"block{k}" for k in picks]


def check_stages(visual: Any, stages: Sequence[str]) -> List[str]:
    from fsclip.clip.features import is_vit

    if is_vit(visual):
        depth = len(visual.transformer.resblocks)
        valid = [f"block{k}" for k in range(1, depth + 1)]
        kind = f"a ViT with {depth} blocks: block1..block{depth}"
    else:
        valid, kind = list(RN_STAGES), "a ResNet: " + ", ".join(RN_STAGES)
    bad = [s for s in stages if s not in valid]
    if bad:
        raise ConfigError(f"--stages {' '.join(bad)}: not a stage of this image encoder ({kind})")
    return list(stages)


def dense_features(visual: Any, images: Any, stages: Sequence[str]) -> Dict[str, Any]:
    """``{stage: [B, C, h, w]}`` float features of ``images`` ``[B, 3, H, W]`` at each stage."""
    import torch
    import torch.nn.functional as F

    from fsclip.clip.features import attnpool_tokens, is_vit, resnet_trunk, vit_embed

    out: Dict[str, Any] = {}
    with torch.no_grad():
        if is_vit(visual):
            want = {int(s[len("block"):]): s for s in stages}
            x = vit_embed(visual, images).permute(1, 0, 2)  # [L, B, width], sequence-first as CLIP's blocks
            for k, block in enumerate(visual.transformer.resblocks, start=1):
                x = block(x)
                if k in want:
                    t = x.permute(1, 0, 2)[:, 1:].float()  # [B, HW, width]
                    side = int(round(t.shape[1] ** 0.5))
                    out[want[k]] = t.transpose(1, 2).reshape(t.shape[0], -1, side, side)
                if k >= max(want):
                    break
            return out
        captured: Dict[str, Any] = {}
        hooks = [getattr(visual, name).register_forward_hook(
            lambda _m, _i, o, name=name: captured.__setitem__(name, o)) for name in RN_STAGES[:4]]
        try:
            layer4 = resnet_trunk(visual, images)  # [B, C, h, w]
        finally:
            for h in hooks:
                h.remove()
        for s in stages:
            if s == "attnpool":
                pool = visual.attnpool
                tokens = attnpool_tokens(layer4.to(pool.v_proj.weight.dtype))[:, 1:]  # [B, HW, C]
                tokens = tokens + pool.positional_embedding[1:].to(tokens.dtype)
                v = F.linear(tokens, pool.v_proj.weight, pool.v_proj.bias).float()  # [B, HW, C]
                out[s] = v.transpose(1, 2).reshape(v.shape[0], -1, *layer4.shape[2:])
            else:
                out[s] = captured[s].float()
    return out


def match(fa: Any, fb: Any, point: Tuple[float, float], size: Tuple[int, int]) -> Tuple[np.ndarray, Tuple[float, float]]:
    """Cosine similarity ``[h, w]`` of the source cell of ``point`` (x, y in pixels of an image of
    ``size`` (H, W)) in ``fa`` ``[C, h, w]`` with every cell of ``fb`` ``[C, h', w']``, and the
    predicted target point (the centre of the most similar cell, in pixels of B)."""
    import torch.nn.functional as F

    (H, W), (h, w) = size, fa.shape[1:]
    col = min(int(point[0] * w / W), w - 1)
    row = min(int(point[1] * h / H), h - 1)
    src = F.normalize(fa[:, row, col], dim=0)  # [C]
    sim = (src[:, None, None] * F.normalize(fb, dim=0)).sum(0)  # [h', w']
    hb, wb = sim.shape
    best = int(sim.flatten().argmax())
    r, c = divmod(best, wb)
    return sim.cpu().numpy(), ((c + 0.5) * W / wb, (r + 0.5) * H / hb)


def pick_pair(subject: Any, split: str, seed: int) -> List[Any]:
    """Two images of one class from ``split``: the first of a seeded draw and the next of its class."""
    from fsclip.explain.source import _split_items

    items = _split_items(subject, split)
    order = np.random.default_rng(seed).permutation(len(items))
    first = items[order[0]]
    for i in order[1:]:
        if items[i].label == first.label:
            return [first, items[i]]
    raise DataError(f"Split {split} (--split) has no second image of class {first.classname}; pass --images A B")


def run(args: Any) -> int:
    from fsclip.explain import panels
    from fsclip.explain.source import _class_labels, load_subjects, prepare, read_image

    if args.images and len(args.images) != 2:
        raise ConfigError(f"correspondence takes two images, A (with the source point) and B: --images A B "
                          f"(got {len(args.images)})")
    subjects = load_subjects(args)
    if args.images:
        paths = list(args.images)
        labels = _class_labels(args.classes, subjects[0].classnames, 2) if args.classes else None
    else:
        pair = pick_pair(subjects[0], args.split, args.seed)
        paths, labels = [d.impath for d in pair], [int(d.label) for d in pair]
    pil = [read_image(p) for p in paths]
    rows: Optional[List[str]] = None
    columns, record, display_a = [], {}, None
    point: Optional[Tuple[float, float]] = None
    for s in subjects:
        images = prepare(paths, pil, labels, s)
        H, W = images.display.shape[1:3]
        if point is None:
            point = tuple(args.point) if args.point else (W / 2.0, H / 2.0)
            if not (0 <= point[0] < W and 0 <= point[1] < H):
                raise ConfigError(f"--point {point[0]:g} {point[1]:g} is outside image A's {W}x{H} model input")
            display_a = images.display[0]
        stages = check_stages(s.visual, args.stages) if args.stages else default_stages(s.visual)
        if rows is None:
            rows = stages
        elif stages != rows:
            raise ConfigError(f"the models have different stages ({' '.join(rows)} / {' '.join(stages)}): pass "
                              f"--stages, or models of one architecture")
        feats = dense_features(s.visual, images.tensor, stages)
        sims, targets = [], []
        for stage in stages:
            f = feats[stage]
            sim, target = match(f[0], f[1], point, (H, W))
            sims.append(sim)
            targets.append(target)
        columns.append(panels.Column(f"{s.label}: image B", maps=sims, images=np.repeat(images.display[1:2],
                                     len(stages), 0), markers=[[t] for t in targets],
                                     subtitles=[f"cos {m.min():.2f}..{m.max():.2f}" for m in sims]))
        record[s.label] = {"stages": stages, "targets": targets, "sims": sims}
    assert rows is not None and point is not None
    names = [osp.basename(p) for p in paths]
    png = panels.save_overlay_panel(
        osp.join(args.out, "correspondence.png"), np.repeat(display_a[None], len(rows), 0), columns,
        row_labels=rows, image_title=f"image A ({names[0]})", image_markers=[[point]] * len(rows),
        title=f"Source point on {names[0]} -> predicted target point on {names[1]} (red)",
        colorbar_label="cosine similarity (min-max per map)")
    arrays = {f"{label}/{stage}": sim for label, r in record.items() for stage, sim in zip(r["stages"], r["sims"])}
    panels.write_npz(osp.join(args.out, "correspondence.npz"), source_point=np.array(point), **arrays)
    panels.write_json(osp.join(args.out, "correspondence.json"), {
        "technique": "correspondence", "image_a": paths[0], "image_b": paths[1], "source_point": list(point),
        "models": list(record), "runs": {s.label: s.run_dir for s in subjects if s.run_dir},
        "target_points": {label: dict(zip(r["stages"], [list(t) for t in r["targets"]])) for label, r in record.items()},
        "max_similarity": {label: dict(zip(r["stages"], [float(m.max()) for m in r["sims"]])) for label, r in record.items()}})
    print(f"Wrote {png} (+ correspondence.npz, correspondence.json)")
    return 0
