"""Zero-shot and few-shot linear-probe accuracy of a micro-CLIP on the synthetic benchmark.

    python -m fsclip.kit.evaluate --weights MicroRN --root /tmp/synth

Zero-shot: argmax of normalize(encode_image) @ normalize(text classifier).T with the dataset's
single template (and, as a second number, its template ensemble). Linear probe: logistic
regression (full-batch LBFGS) on frozen normalised image features of ``shots`` training images
per class picked with Dassl's few-shot algorithm for a seed; for the shifted (test-only)
variant the probe is trained on its source dataset's shots.
"""

from __future__ import annotations

import argparse
import os.path as osp
import random
from typing import Optional, Sequence

import torch

from fsclip.engine.data.base import Datum, sample_fewshot
from fsclip.kit import synth
from fsclip.kit.clipfns import (anchored_probe, encode_images, input_resolution, linear_probe, load_items,
                                load_micro_clip, probe_predict, read_split, text_classifier)


def _fewshot(items, shots: int, seed: int):
    """The engine's few-shot picks (Dassl's algorithm) of ``(path, label, classname)`` items."""
    data = [Datum(path, label, classname=name) for path, label, name in items]
    return [(d.impath, d.label, d.classname) for d in sample_fewshot(data, shots, random.Random(seed))]


@torch.no_grad()
def _features(model, items, cache: dict, key, images: dict):
    """Encoded features of ``items`` (cached under ``key`` in ``cache``, which is per model);
    decoded images are cached in ``images``, which several models may share."""
    if key not in cache:
        res = input_resolution(model)
        ikey = (res, tuple(p for p, _, _ in items))
        if ikey not in images:
            images[ikey] = load_items(items, res)
        x, y = images[ikey]
        cache[key] = (encode_images(model, x), y)
    return cache[key]


def evaluate(model, root: str, name: str, shots: int = 4, seeds: Sequence[int] = (1, 2, 3),
             test_limit: Optional[int] = None, cache: Optional[dict] = None,
             images: Optional[dict] = None, zs_init_probe: bool = True) -> dict:
    """Accuracies (in %) of ``model`` on dataset ``name`` generated under ``root``.

    ``cache`` (per model) keeps features, ``images`` (shareable across models) decoded images.
    """
    cache = {} if cache is None else cache
    images = {} if images is None else images
    spec = synth.DATASETS[name]
    folder = synth.ensure_dataset(root, name, verbose=False)
    split = read_split(folder, name)
    test = split["test"] if test_limit is None else split["test"][::max(1, len(split["test"]) // test_limit)]
    classnames = list(spec.classes)
    f_test, y_test = _features(model, test, cache, (name, "test", len(test)), images)
    res = {"dataset": name, "classes": len(classnames), "test": len(test),
           "chance": 100.0 / len(classnames)}
    zs_w = text_classifier(model, classnames, [synth.TEMPLATE])
    for key, w in (("zeroshot", zs_w), ("zeroshot_ens", text_classifier(model, classnames, synth.TEMPLATES))):
        res[key] = 100.0 * ((f_test @ w.t()).argmax(1) == y_test).float().mean().item()
    src = synth.SOURCE.get(name, name)
    src_split = read_split(synth.ensure_dataset(root, src, verbose=False), src)
    accs, anchored = [], []
    for seed in seeds:
        train = _fewshot(src_split["train"], shots, seed)
        f_tr, y_tr = _features(model, train, cache, (src, "train", shots, seed), images)
        w = linear_probe(f_tr, y_tr, len(classnames))
        accs.append(100.0 * (probe_predict(w, f_test).argmax(1) == y_test).float().mean().item())
        if zs_init_probe:
            wa = anchored_probe(f_tr, y_tr, zs_w)
            anchored.append(100.0 * ((f_test @ wa.t()).argmax(1) == y_test).float().mean().item())
    res[f"probe_{shots}shot"] = sum(accs) / len(accs)
    if zs_init_probe:
        res[f"zsinit_probe_{shots}shot"] = sum(anchored) / len(anchored)
    return res


def evaluate_all(weights: str, root: str, shots: int = 4, images: Optional[dict] = None,
                 **kw) -> list:
    model = load_micro_clip(weights)
    cache: dict = {}
    images = {} if images is None else images
    return [dict(evaluate(model, root, name, shots, cache=cache, images=images, **kw),
                 model=osp.splitext(osp.basename(weights))[0]) for name in synth.DATASETS]


def format_results(rows: list) -> str:
    lines = ["model      dataset             classes  chance  zero-shot  zs-ensemble  "
             "linear probe  zs-init probe"]
    for r in rows:
        probe = [v for k, v in r.items() if k.startswith("probe_")][0]
        zsp = ([v for k, v in r.items() if k.startswith("zsinit_probe_")] or [float("nan")])[0]
        lines.append(f"{r.get('model', ''):<10} {r['dataset']:<19} {r['classes']:>7} "
                     f"{r['chance']:>6.1f}% {r['zeroshot']:>9.1f}% {r['zeroshot_ens']:>11.1f}% "
                     f"{probe:>12.1f}% {zsp:>13.1f}%")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description="Evaluate a micro-CLIP on the synthetic benchmark")
    p.add_argument("--weights", nargs="+", default=["MicroRN", "MicroViT"],
                   help="MicroRN, MicroViT or paths to state dicts")
    p.add_argument("--root", required=True, help="DATASET.ROOT (generated there if missing)")
    p.add_argument("--shots", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows: list = []
    images: dict = {}
    for w in args.weights:
        rows += evaluate_all(w, args.root, args.shots, images=images)
    print(format_results(rows))


if __name__ == "__main__":
    main()
