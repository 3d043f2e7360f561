"""Benchmark: one CLIP-SVD training step against one CLIP-LoRA step and zero-shot inference.

A CLIP of ViT-B/16 size (fsclip.clip.real_sizes, random weights, 224 px). CLIP-SVD: the singular
values of q, k, v, o, c_fc and c_proj in every block of both encoders (92,160 numbers; the SVD is
timed once, uncached). CLIP-LoRA: r 2 on q, k, v of every block of both encoders (184,320).
One step: the batch through the adapted image encoder, the K class prompts (one template, short
context) through the adapted text encoder, cross-entropy on 100 * cos, backward, AdamW.
Zero-shot: the frozen image encoder on the batch against text features computed once.

Each method runs in its own process, so that the memory column is its own: the peak of CUDA
memory allocated during the timed steps, or on a CPU the process's peak RSS (model, factors,
activations). Prints a table of the median time of --steps steps after a warm-up. Usage:
  python benchmarks/clip_svd_step.py [--classes 100] [--batch 32] [--steps 3] [--threads N]
                                     [--device cpu|cuda] [--prec fp32|fp16|amp]
"""

from __future__ import annotations

import argparse
import os.path as osp
import subprocess
import sys
import time
from typing import Dict, List

import torch
import torch.nn.functional as F

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path[:0] = [REPO, osp.dirname(osp.abspath(__file__))]

from clip_lora_step import contrastive_step, timed  # noqa: E402
from fsclip.clip.precision import autocast, grad_scaler  # noqa: E402
from fsclip.clip.real_sizes import build_real_size_clip  # noqa: E402
from fsclip.clip.text import tokenize_short  # noqa: E402
from fsclip.lowrank import apply_lora, apply_svd  # noqa: E402

METHODS = ("zero-shot", "CLIP-LoRA", "CLIP-SVD")


def measure(method: str, args: argparse.Namespace) -> Dict[str, float]:
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_real_size_clip("ViT-B/16").to(device)
    if args.prec == "fp16":
        from fsclip.clip.compat import import_clip
        import_clip().model.convert_weights(model)
    model.requires_grad_(False)
    svd_s = float("nan")
    if method == "CLIP-LoRA":
        sites = apply_lora(model, ["text", "vision"], "all", ["q", "k", "v"], r=2, alpha=1.0, dropout=0.25)
        params = [p for m in sites.values() for p in m.lora.parameters()]
        opt = torch.optim.AdamW(params, lr=2e-4, weight_decay=1e-2)
    elif method == "CLIP-SVD":
        t = time.perf_counter()
        sites = apply_svd(model, cache_dir="")
        if device.type == "cuda":
            torch.cuda.synchronize()
        svd_s = time.perf_counter() - t
        params = [sv.s for sv in sites.values()]
        opt = torch.optim.AdamW(params, lr=5e-4, weight_decay=1e-2)
    else:
        params = []
    model.train()  # LoRA's dropout on; CLIP has no other train-mode layer
    scaler = grad_scaler(args.prec, device)
    tokens = tokenize_short([f"a photo of a class {i}." for i in range(args.classes)]).to(device)
    images = torch.randn(args.batch, 3, 224, 224, device=device, dtype=model.dtype)
    labels = torch.randint(0, args.classes, (args.batch,), device=device)

    train_step = None if method == "zero-shot" else contrastive_step(model, images, tokens, labels, opt, scaler,
                                                                     args.prec, device)

    if method == "zero-shot":
        model.eval()
        with torch.no_grad(), autocast(args.prec, device):
            text = F.normalize(model.encode_text(tokens).float(), dim=-1)

        @torch.no_grad()
        def step() -> None:
            with autocast(args.prec, device):
                _ = 100.0 * F.normalize(model.encode_image(images).float(), dim=-1) @ text.t()
    else:
        step = train_step
    seconds, peak = timed(step, args.steps, device)
    if device.type == "cpu":
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"ms": seconds * 1000, "peak": peak, "params": sum(p.numel() for p in params), "svd_s": svd_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--prec", default="fp32", choices=["fp32", "fp16", "amp"])
    ap.add_argument("--only", choices=METHODS, help=argparse.SUPPRESS)  # one method, in a child process
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.only:
        r = measure(args.only, args)
        print(f"RESULT {r['ms']} {r['peak']} {r['params']} {r['svd_s']}")
        return
    rows: Dict[str, List[float]] = {}
    for method in METHODS:
        argv = [a for a in sys.argv[1:]] + ["--only", method]
        out = subprocess.run([sys.executable, osp.abspath(__file__), *argv], capture_output=True, text=True,
                             check=True).stdout
        line = [x for x in out.splitlines() if x.startswith("RESULT ")][-1]
        rows[method] = [float(v) for v in line.split()[1:]]
    threads = args.threads or torch.get_num_threads()
    print(f"CLIP ViT-B/16 size, {args.classes} classes, batch {args.batch}, {args.prec} on {args.device} "
          f"({threads} threads), median of {args.steps} steps")
    mem = "peak CUDA MiB" if args.device.startswith("cuda") else "peak RSS MiB"
    print(f"| method | trainable | time per step (ms) | x zero-shot | {mem} |")
    print("|---|---:|---:|---:|---:|")
    zs = rows["zero-shot"][0]
    for method, (ms, peak, params, _) in rows.items():
        what = "inference" if method == "zero-shot" else "training step"
        print(f"| {method} ({what}) | {int(params):,} | {ms:.1f} | {ms / zs:.2f} | {peak:.0f} |")
    print(f"CLIP-SVD's SVD of the 144 weight matrices (once; cached on disk afterwards): {rows['CLIP-SVD'][3]:.1f} s")


if __name__ == "__main__":
    main()
