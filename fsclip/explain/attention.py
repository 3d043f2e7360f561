"""``fsclip-explain attention``: the attention maps of the methods that have them.

Read through each trainer's ``attention_maps`` hook (``fsclip.explain.hooks`` lists the maps of
each method), from the forward that gives its logits:

* VT-CLIP (its Fig. 1): each decoder block's text-to-region cross-attention over V_s, for the
  predicted and the true class, averaged over heads and per head;
* DPT (Figs. 1 and 4): the class token's last-block attention over the patches, zero-shot CLIP /
  CoOp, VPT-deep, VLP and VLP-CAVPT side by side (several ``--run``, ``--zero-shot``), and CAVPT's
  per-class attention over the patches for each of its top-K classes;
* SAFE: the attention pool query's weights, the original AttnPool_O beside the fine-tuned
  AttnPool_F (ViT: the class token's attention in the last block);
* zero-shot CLIP and the CoOp family: CLIP's own (the last block's class token, or the pool).

Writes ``attention.png`` (image | one overlay per model and map, averaged over heads), per model
and map ``attention_<model>_<map>.png`` (the mean, then each head up to ``--heads``; CAVPT: each
top-K class, up to 10),
``attention.npz`` (every map ``<model>/<map>`` ``[N, S, h, w]``, with the weight left on other
tokens ``<model>/<map>/rest``) and ``attention.json``. Maps are min-max scaled per map in the
figures (colour bar 0..1); the ``.npz`` keeps the softmax weights.
"""

from __future__ import annotations

import argparse
import os.path as osp
import re
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

TITLES = {"cls": "class-token attention", "attnpool": "attention pool", "attnpool_o": "AttnPool_O (original)",
          "attnpool_f": "AttnPool_F (fine-tuned)", "cavpt": "CAVPT"}
LAYER_MAP = re.compile(r"^layer(\d+)_(pred|true)$")  # VT-CLIP's cross-attention maps


def add_parser(subparsers: Any, parents: Sequence[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = subparsers.add_parser("attention", parents=list(parents),
                              help="attention maps of the methods that have them (VT-CLIP, DPT, SAFE, CLIP)",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--heads", type=int, default=8, help="heads drawn per map in the detail panels (default 8; "
                                                        "0: no per-head panels). CAVPT's panel shows its top-K classes")
    p.set_defaults(func=run)
    return p


def title(key: str) -> str:
    m = LAYER_MAP.match(key)
    if m:
        return f"layer {m.group(1)}, {'predicted' if m.group(2) == 'pred' else 'true'} class"
    return TITLES.get(key, key)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_") or "model"


def map_keys(out: Dict[str, Any]) -> List[str]:
    """The map entries of a hook's output (not ``logits`` nor ``<map>/...``), in hook order."""
    return [k for k in out if k != "logits" and "/" not in k]


def subtitles(key: str, out: Dict[str, Any], labels: Any, classnames: List[str]) -> List[str]:
    """Per image: the class a map is about (VT-CLIP) or the model's prediction."""
    pred = out["logits"].argmax(dim=1).tolist()
    m = LAYER_MAP.match(key)
    if m and m.group(2) == "true" and labels is not None:
        return [f"true: {classnames[c]}" for c in labels]
    return [f"pred: {classnames[c]}" for c in pred]


def detail_columns(key: str, maps: np.ndarray, out: Dict[str, Any], classnames: List[str], heads: int,
                   subs: List[str]) -> List[Any]:
    """The detail panel of one map: the mean over heads, then each head (CAVPT: each top-K class)."""
    from fsclip.explain.panels import Column

    if key == "cavpt":
        classes = out["cavpt/classes"].tolist()
        return [Column(f"top-{j + 1} class", maps=maps[:, j], subtitles=[classnames[c[j]] for c in classes])
                for j in range(min(heads, maps.shape[1]))]
    cols = [Column("mean over heads", maps=maps.mean(axis=1), subtitles=subs)]
    return cols + [Column(f"head {h + 1}", maps=maps[:, h]) for h in range(min(heads, maps.shape[1]))]


def run(args: Any) -> int:
    import torch

    from fsclip.explain import panels
    from fsclip.explain.hooks import require_hook
    from fsclip.explain.source import load_images, load_subjects

    subjects = load_subjects(args)
    hooks = [require_hook(s.trainer, "attention_maps", "attention maps", s.label) for s in subjects]
    columns: List[Any] = []
    details: List[Tuple[str, List[Any], str]] = []
    arrays: Dict[str, np.ndarray] = {}
    summary: Dict[str, Any] = {}
    display = rows = None
    for s, hook in zip(subjects, hooks):
        images = load_images(args, s)
        if display is None:
            display, rows = images.display, images.names()
        labels = torch.tensor(images.labels, device=s.device) if images.labels is not None else None
        with torch.no_grad():
            out = {k: v.detach().float().cpu() if v.is_floating_point() else v.detach().cpu()
                   for k, v in hook(images.tensor, labels).items()}
        keys = map_keys(out)
        for key in keys:
            maps = out[key].numpy()  # [N, S, h, w]
            subs = subtitles(key, out, images.labels, s.classnames)
            if key != "cavpt":
                name = s.label if len(keys) == 1 else f"{s.label}\n{title(key)}"
                columns.append(panels.Column(name, maps=maps.mean(axis=1), subtitles=subs))
            if args.heads > 0 or key == "cavpt":
                details.append((f"attention_{slug(s.label)}_{key}.png",
                                detail_columns(key, maps, out, s.classnames, 10 if key == "cavpt" else args.heads, subs),
                                f"{s.label}: {title(key)}"))
        arrays.update({f"{s.label}/{k}": v.numpy() for k, v in out.items()})
        summary[s.label] = {
            "run": s.run_dir, "trainer": s.cfg.TRAINER.NAME,
            "maps": {k: {"title": title(k), "shape": list(out[k].shape)} for k in keys},
            "predicted": [s.classnames[c] for c in out["logits"].argmax(dim=1).tolist()]}
    files = []
    if columns:
        files.append(panels.save_overlay_panel(
            osp.join(args.out, "attention.png"), display, columns, row_labels=rows,
            title="Attention maps (mean over heads)", colorbar_label="attention weight (min-max per map)"))
    for name, cols, heading in details:
        files.append(panels.save_overlay_panel(osp.join(args.out, name), display, cols, row_labels=rows,
                                               title=heading, colorbar_label="attention weight (min-max per map)"))
    panels.write_npz(osp.join(args.out, "attention.npz"), **arrays)
    panels.write_json(osp.join(args.out, "attention.json"), {
        "technique": "attention", "images": list(rows or []), "models": summary,
        "figures": [osp.basename(f) for f in files]})
    print(f"Wrote {', '.join(osp.basename(f) for f in files)} (+ attention.npz, attention.json) in {args.out}")
    return 0
