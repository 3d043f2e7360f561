"""Benchmark: a SAFE sweep (5 shot levels x 3 seeds) with and without the feature cache.

Both ways run in this process on the same RN50-size CLIP (random weights, 224 px) and the same
synthetic dataset (the ``Custom`` dataset over generated JPEGs), with the same SAFE settings:

* reference: what an end-to-end trainer does. Every training step sends its batch of augmented
  images through the frozen trunk G; every validation check encodes the val images; the final
  test encodes the test images. Nothing is kept between runs.
* cached: the SAFE trainer of this toolkit. G runs once per image (and per stored training
  view) for the whole sweep; runs read the cached maps.

Both ways share one loaded CLIP (each run gets a fresh copy of it), so the figures compare
encoding and training, not reading the weights file 30 times.

It prints the number of images sent through G and the wall time of each way, and their ratios.
Usage: python benchmarks/safe_sweep_cache.py [--classes 5] [--iters 40] [--test-per-class 20] ...
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import os.path as osp
import random
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO)

import fsclip.adapt.trainer as frozen_trainer  # noqa: E402
import fsclip.datasets  # noqa: E402,F401
import fsclip.trainers  # noqa: E402,F401
from fsclip.adapt.heads import make_pooling_head, trunk_forward  # noqa: E402
from fsclip.backend import build_trainer  # noqa: E402
from fsclip.cli import extend_cfg  # noqa: E402
from fsclip.clip.compat import import_clip  # noqa: E402
from fsclip.engine.config import get_cfg_default  # noqa: E402
from fsclip.engine.optim import adamw  # noqa: E402

SHOTS = (1, 2, 4, 8, 16)
SEEDS = (1, 2, 3)


def make_images(root: str, classes: int, per_split: dict, size: int = 224) -> None:
    rng = random.Random(0)
    for split, n in per_split.items():
        for c in range(classes):
            folder = osp.join(root, split, f"class_{c}")
            os.makedirs(folder, exist_ok=True)
            for i in range(n):
                arr = np.random.default_rng(rng.randrange(2**31)).integers(0, 255, (size, size, 3), dtype=np.uint8)
                img = Image.fromarray(arr)
                d = ImageDraw.Draw(img)
                x, y = rng.randrange(size // 2), rng.randrange(size // 2)
                d.ellipse([x, y, x + size // 3, y + size // 3], fill=(40 * c % 255, 90, 200 - 30 * c % 200))
                img.save(osp.join(folder, f"{i:04d}.jpg"), quality=90)


def rn50_random_weights(path: str) -> None:
    """A CLIP with RN50's architecture (visual and text) and random weights, as a state dict."""
    clip = import_clip()
    torch.manual_seed(0)
    model = clip.model.CLIP(embed_dim=1024, image_resolution=224, vision_layers=(3, 4, 6, 3), vision_width=64, vision_patch_size=None,
                            context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8,
                            transformer_layers=12)
    torch.save(model.half().state_dict(), path)


def make_cfg(args, work: str, shots: int, seed: int, out: str):
    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.merge_from_file(osp.join(REPO, "configs", "trainers", "SAFE", "rn50.yaml"))
    cfg.DATASET.NAME = "Custom"
    cfg.DATASET.ROOT = work
    cfg.DATASET.CUSTOM_DIR = osp.join(work, "images")
    cfg.DATASET.NUM_SHOTS = shots
    cfg.SEED = seed
    cfg.OUTPUT_DIR = out
    cfg.TRAINER.NAME = "SAFE"
    cfg.MODEL.BACKBONE.NAME = osp.join(work, "rn50_random.pt")
    cfg.DATALOADER.NUM_WORKERS = args.workers
    cfg.DATALOADER.TEST.BATCH_SIZE = 32
    cfg.DATALOADER.TRAIN_X.BATCH_SIZE = 8
    cfg.TRAINER.FEATURES.CACHE_DIR = osp.join(work, "cache")
    cfg.TRAINER.FEATURES.TRAIN_VIEWS = args.views
    cfg.TRAINER.FEATURES.PROMPTS = "single"
    cfg.TRAINER.SAFE.ITERS = args.iters
    cfg.TRAINER.SAFE.EVAL_EVERY = args.eval_every
    cfg.TRAINER.SAFE.LRS = [1e-4]
    cfg.TRAINER.SAFE.WDS = [0.0]
    cfg.VERBOSE = False
    return cfg


def reference_run(trainer) -> float:
    """SAFE without a cache: the trunk runs on every batch, every val check and the test set."""
    s = trainer.cfg.TRAINER.SAFE
    torch.manual_seed(max(trainer.cfg.SEED, 0))
    head = make_pooling_head(trainer.visual).to(trainer.device)
    opt = adamw(head.parameters(), lr=float(s.LRS[0]), weight_decay=float(s.WDS[0]))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=int(s.ITERS))

    @torch.no_grad()
    def accuracy(loader) -> float:
        head.eval()
        correct = total = 0
        for batch in loader:
            dense = trunk_forward(trainer.visual, batch["img"].to(trainer.device)).float()
            logits = trainer.clip_logits(s.BETA * trainer.head_o(dense) + head(dense))
            correct += (logits.argmax(1).cpu() == batch["label"]).sum().item()
            total += batch["label"].numel()
        return 100.0 * correct / total

    best = accuracy(trainer.val_loader)
    best_state = {k: v.clone() for k, v in head.state_dict().items()}
    step = 0
    while step < int(s.ITERS):
        for batch in trainer.train_loader_x:
            step += 1
            head.train()
            dense = trunk_forward(trainer.visual, batch["img"].to(trainer.device)).float()
            loss = F.cross_entropy(trainer.clip_logits(head(dense)), batch["label"].to(trainer.device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if step % int(s.EVAL_EVERY) == 0 or step == int(s.ITERS):
                acc = accuracy(trainer.val_loader)
                if acc > best:
                    best, best_state = acc, {k: v.clone() for k, v in head.state_dict().items()}
            if step == int(s.ITERS):
                break
    head.load_state_dict(best_state)
    return accuracy(trainer.test_loader)


class Counter:
    """Counts images through G with a hook on the last ResNet stage."""

    def __init__(self, visual) -> None:
        self.images = 0
        visual.layer4.register_forward_hook(lambda m, i, o: self.add(o.shape[0]))

    def add(self, n: int) -> None:
        self.images += n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--classes", type=int, default=5)
    p.add_argument("--train-per-class", type=int, default=16)
    p.add_argument("--val-per-class", type=int, default=4)
    p.add_argument("--test-per-class", type=int, default=20)
    p.add_argument("--iters", type=int, default=40)
    p.add_argument("--eval-every", type=int, default=20)
    p.add_argument("--views", type=int, default=2)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    work = tempfile.mkdtemp(prefix="fsclip-bench-")
    per_split = {"train": args.train_per_class, "val": args.val_per_class, "test": args.test_per_class}
    make_images(osp.join(work, "images"), args.classes, per_split)
    rn50_random_weights(osp.join(work, "rn50_random.pt"))
    n_images = args.classes * sum(per_split.values())
    print(f"dataset: {args.classes} classes, {n_images} images (224 px); RN50-size CLIP, random weights; "
          f"device {args.device}, torch threads {torch.get_num_threads()}")
    print(f"SAFE: {args.iters} steps, batch 8, val every {args.eval_every}; cached training views: {args.views}")
    devnull = open(os.devnull, "w")

    def quiet():  # the trainers' log lines and progress bars
        stack = contextlib.ExitStack()
        stack.enter_context(contextlib.redirect_stdout(devnull))
        stack.enter_context(contextlib.redirect_stderr(devnull))
        return stack

    def quiet_build(cfg):
        with quiet():
            t = build_trainer(cfg)
        if args.device != "cpu":
            t.device = torch.device(args.device)
        return t

    load_once = frozen_trainer.load_clip_from_cfg
    loaded: dict = {}

    def shared_clip(cfg, precision: str = "auto", device=None):
        key = (cfg.MODEL.BACKBONE.NAME, precision)
        if key not in loaded:
            loaded[key] = load_once(cfg, precision=precision, device="cpu")
        return copy.deepcopy(loaded[key]).to(device or "cpu")

    frozen_trainer.load_clip_from_cfg = shared_clip  # both ways: weights read from disk once
    results = {}
    for way in ("reference", "cached"):
        forwards = 0
        accs = []
        start = time.time()
        for shots in SHOTS:
            for seed in SEEDS:
                cfg = make_cfg(args, work, shots, seed, osp.join(work, "out", way, f"{shots}_{seed}"))
                trainer = quiet_build(cfg)
                counter = Counter(trainer.visual)
                if way == "reference":
                    accs.append(reference_run(trainer))
                else:
                    with quiet():
                        trainer.fit()  # training and choices on train/val; then one test
                        accs.append(trainer.test())
                forwards += counter.images
        results[way] = (time.time() - start, forwards, float(np.mean(accs)))
        print(f"{way:>9}: {results[way][0]:8.1f} s   {forwards:6d} images through G   "
              f"(mean test acc {results[way][2]:.1f}% of chance-level random weights)")
    (t_ref, f_ref, _), (t_cache, f_cache, _) = results["reference"], results["cached"]
    print(f"ratio (reference / cached): time {t_ref / t_cache:.1f}x, images through G {f_ref / f_cache:.1f}x")


if __name__ == "__main__":
    main()
