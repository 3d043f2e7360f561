"""Benchmark: SAFE's (lr, weight decay) grid trained one setting after another and as one stacked
model, side by side in one process, through the SAFE trainer's own code (``fit_safe`` with
``TRAINER.SAFE.GRID_BATCHED`` False, then True, alternating).

The pooling heads have real sizes, with random weights: RN50's attention pool (2048 channels,
7 x 7 map, 32 heads, output 1024; 15M parameters) and ViT-B/16's last block + ln_post + proj
(width 768, 12 heads, 197 tokens, output 512; 7.5M parameters), on a tiny trunk. The trunk's
features G(x) are random maps of the right shape served in place of the feature cache (both
ways read the same ones), so the figures are the grid's training and validation alone. Both ways
use the paper's grid (4 learning rates x 3 weight decays), batch 8 and the same batches, and
choose the same setting (printed).

Each way runs the grid with ITERS steps and with 2 x ITERS steps: the first time is the grid at
ITERS steps; the difference, divided by ITERS, is the cost of one more step of all 12 settings
(validation included), without the costs paid once per grid (copies of the head, first touch
of the AdamW state: the batched way touches 12 settings' worth of fresh memory at once). The
paper's grid has 12,800 steps, so its time is the second figure's.

Usage: python benchmarks/safe_grid.py [--arch rn50 vit_b16] [--iters 20] [--eval-every 10]
       [--classes 10] [--shots 16] [--views 2] [--repeat 2] [--threads 0] [--max-stack 0]
       [--profile]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import os.path as osp
import statistics
import sys
import tempfile
import time

import torch
from PIL import Image

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO)

import fsclip.datasets  # noqa: E402,F401
import fsclip.trainers  # noqa: E402,F401
from fsclip.backend import build_trainer  # noqa: E402
from fsclip.cli import extend_cfg  # noqa: E402
from fsclip.clip.tiny import build_tiny_clip, save_tiny_clip  # noqa: E402
from fsclip.engine.config import get_cfg_default  # noqa: E402

ARCHS = {
    # a tiny trunk under a real-size pooling head
    "rn50": dict(arch="RN", vision_width=64, vision_layers=(1, 1, 1, 1), embed_dim=1024, cfg="rn50"),
    "vit_b16": dict(arch="ViT", vision_width=768, vision_layers=2, patch_size=16, embed_dim=512, cfg="vit_b16"),
}


def make_folder(root: str, classes: int, per_split: dict) -> None:
    """A Custom dataset layout of tiny images (never decoded: features are served directly)."""
    for split, n in per_split.items():
        for c in range(classes):
            folder = osp.join(root, split, f"class_{c}")
            os.makedirs(folder, exist_ok=True)
            for i in range(n):
                Image.new("RGB", (8, 8), (20 * c % 255, 10 * i % 255, 90)).save(osp.join(folder, f"{i}.png"))


def build(args, arch: str, work: str):
    spec = dict(ARCHS[arch])
    weights = osp.join(work, f"{arch}.pt")
    if not osp.exists(weights):
        save_tiny_clip(build_tiny_clip(spec.pop("arch"), image_resolution=224, text_width=512,
                                       **{k: v for k, v in spec.items() if k != "cfg"}), weights)
    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.merge_from_file(osp.join(REPO, "configs", "trainers", "SAFE", f"{ARCHS[arch]['cfg']}.yaml"))
    cfg.DATASET.NAME = "Custom"
    cfg.DATASET.ROOT = work
    cfg.DATASET.CUSTOM_DIR = osp.join(work, "images")
    cfg.DATASET.NUM_SHOTS = args.shots
    cfg.DATASET.FEWSHOT_DIR = osp.join(work, "splits")
    cfg.SEED = 1
    cfg.OUTPUT_DIR = osp.join(work, "out", arch)
    cfg.TRAINER.NAME = "SAFE"
    cfg.MODEL.BACKBONE.NAME = weights
    cfg.USE_CUDA = args.device != "cpu"
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.TRAINER.FEATURES.CACHE_DIR = "none"
    cfg.TRAINER.FEATURES.PROMPTS = "single"
    cfg.TRAINER.SAFE.ITERS = args.iters
    cfg.TRAINER.SAFE.EVAL_EVERY = args.eval_every
    cfg.TRAINER.SAFE.GRID_MAX_STACK = args.max_stack
    with contextlib.redirect_stdout(io.StringIO()):
        trainer = build_trainer(cfg)
    # G(x) of every image: random maps of the shape the cache would serve (fp16, on the CPU)
    visual = trainer.visual
    if arch.startswith("vit"):
        shape = (visual.positional_embedding.shape[0], visual.positional_embedding.shape[1])
    else:
        pool = visual.attnpool
        side = round((pool.positional_embedding.shape[0] - 1) ** 0.5)
        shape = (pool.positional_embedding.shape[1], side, side)
    gen = torch.Generator().manual_seed(0)
    feats = {}
    for split, views in (("train", args.views), ("val", 1)):
        n = len(trainer.split_items(split))
        feats[split] = torch.randn((n, views) + shape, generator=gen).half()
    trainer.features = lambda split: feats[split]
    return trainer, feats


def time_grid(trainer, batched: bool, iters: int):
    trainer.cfg.defrost()
    trainer.cfg.TRAINER.SAFE.GRID_BATCHED = batched
    trainer.cfg.TRAINER.SAFE.ITERS = iters
    trainer.cfg.freeze()
    start = time.perf_counter()
    cpu = time.process_time()
    with contextlib.redirect_stdout(io.StringIO()):
        best = trainer.fit_safe()
    return time.perf_counter() - start, time.process_time() - cpu, best


def profile(trainer, batched: bool, iters: int) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    trainer.cfg.defrost()
    trainer.cfg.TRAINER.SAFE.GRID_BATCHED = batched
    trainer.cfg.TRAINER.SAFE.ITERS = iters
    trainer.cfg.freeze()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof, contextlib.redirect_stdout(io.StringIO()):
        trainer.fit_safe()
    print(f"--- profile, {'batched' if batched else 'sequential'} (self CPU time)")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", nargs="+", default=["rn50", "vit_b16"], choices=list(ARCHS))
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--shots", type=int, default=16)
    p.add_argument("--views", type=int, default=2)
    p.add_argument("--repeat", type=int, default=2, help="alternating rounds of both ways")
    p.add_argument("--max-stack", type=int, default=0, help="TRAINER.SAFE.GRID_MAX_STACK (0: all 12)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--profile", action="store_true", help="also print the top operators of each way")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="fsclip-safe-grid-") as work:  # weights, images: removed at the end
        run(args, work)


def run(args, work: str) -> None:
    make_folder(osp.join(work, "images"), args.classes, {"train": args.shots, "val": 4, "test": 1})
    print(f"SAFE grid, 12 settings (4 lr x 3 weight decay) x {args.iters} steps, batch 8, val every "
          f"{args.eval_every} steps; {args.classes} classes, {args.shots} shots, {args.views} views, "
          f"val {4 * args.classes} images; device {args.device}, torch threads {torch.get_num_threads()}, "
          f"stack {args.max_stack or 12}")
    for arch in args.arch:
        trainer, _ = build(args, arch, work)
        n = sum(p.numel() for p in trainer.head_f.parameters())
        total = {False: [], True: []}
        per_step = {False: [], True: []}
        cpu_step = {False: [], True: []}
        chosen = {}
        time_grid(trainer, True, args.iters)  # warm-up (allocator, first-call costs), not counted
        for _ in range(args.repeat):
            for batched in (False, True):
                short, cpu_short, best = time_grid(trainer, batched, args.iters)
                long, cpu_long, _ = time_grid(trainer, batched, 2 * args.iters)
                total[batched].append(short)
                per_step[batched].append((long - short) / args.iters)
                cpu_step[batched].append((cpu_long - cpu_short) / args.iters)
                chosen[batched] = (best.params, best.step, round(best.val_acc, 2))
        print(f"{arch} ({n / 1e6:.1f}M parameters per copy):")
        med = {}
        for batched, name in ((False, "sequential"), (True, "batched")):
            med[batched] = [statistics.median(x[batched]) for x in (total, per_step, cpu_step)]
            print(f"  {name:>10}: grid of {args.iters} steps {med[batched][0]:6.1f} s "
                  f"(runs {', '.join(f'{t:.1f}' for t in total[batched])}); one more step "
                  f"{1000 * med[batched][1]:5.0f} ms (runs {', '.join(f'{1000 * t:.0f}' for t in per_step[batched])}; "
                  f"CPU time {1000 * med[batched][2]:.0f} ms)")
        print(f"  ratio (sequential / batched): grid of {args.iters} steps {med[False][0] / med[True][0]:.2f}x, "
              f"one more step {med[False][1] / med[True][1]:.2f}x (CPU time {med[False][2] / med[True][2]:.2f}x)")
        same = "same" if chosen[False] == chosen[True] else "DIFFERENT"
        print(f"  chosen ({same}): sequential {chosen[False]}, batched {chosen[True]}", flush=True)
        if args.profile:
            profile(trainer, False, args.iters)
            profile(trainer, True, args.iters)


if __name__ == "__main__":
    main()
