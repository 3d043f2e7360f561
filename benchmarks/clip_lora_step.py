"""Benchmark: one CLIP-LoRA training step against zero-shot inference of the same batch.

A CLIP of ViT-B/16 size (fsclip.clip.real_sizes, random weights, 224 px), LoRA r 2 on q, k, v of
every block of both encoders (the paper's defaults). One step: the batch through the adapted image
encoder, the K class prompts (one template, short context) through the adapted text encoder,
cross-entropy on 100 * cos, backward, AdamW. Zero-shot: the frozen image encoder on the batch
against text features computed once. It prints the median time of --steps steps (after a warm-up)
and the peak memory of each (CUDA) or the process's peak RSS (CPU). Usage:
  python benchmarks/clip_lora_step.py [--classes 100] [--batch 32] [--steps 3] [--threads N]
                                      [--device cpu|cuda] [--prec fp32|fp16|amp]
"""

from __future__ import annotations

import argparse
import os.path as osp
import statistics
import sys
import time
from typing import Callable, List

import torch
import torch.nn.functional as F

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO)

from fsclip.clip.precision import autocast, grad_scaler  # noqa: E402
from fsclip.clip.real_sizes import build_real_size_clip  # noqa: E402
from fsclip.clip.text import tokenize_short  # noqa: E402
from fsclip.lowrank import apply_lora  # noqa: E402


def timed(fn: Callable[[], None], steps: int, device: torch.device) -> tuple:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
    fn()  # warm-up
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times: List[float] = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if device.type == "cuda" else float("nan")
    return statistics.median(times), peak


def contrastive_step(model, images, tokens, labels, opt, scaler, prec: str, device) -> Callable[[], None]:
    """One training step of an adapted CLIP (CLIP-LoRA, CLIP-SVD): the batch and the K class
    prompts through both encoders, cross-entropy on 100 * cos, backward, the optimizer's step
    (through the GradScaler under amp on CUDA)."""
    def step() -> None:
        with autocast(prec, device):
            f = F.normalize(model.encode_image(images).float(), dim=-1)
            t = F.normalize(model.encode_text(tokens).float(), dim=-1)
            loss = F.cross_entropy(100.0 * f @ t.t(), labels)
        opt.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--prec", default="fp32", choices=["fp32", "fp16", "amp"])
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_real_size_clip("ViT-B/16").to(device)
    if args.prec == "fp16":
        from fsclip.clip.compat import import_clip
        import_clip().model.convert_weights(model)
    sites = apply_lora(model, ["text", "vision"], "all", ["q", "k", "v"], r=2, alpha=1.0, dropout=0.25)
    params = [p for m in sites.values() for p in m.lora.parameters()]
    opt = torch.optim.AdamW(params, lr=2e-4, weight_decay=1e-2)
    scaler = grad_scaler(args.prec, device)
    tokens = tokenize_short([f"a photo of a class {i}." for i in range(args.classes)]).to(device)
    images = torch.randn(args.batch, 3, 224, 224, device=device, dtype=model.dtype)
    labels = torch.randint(0, args.classes, (args.batch,), device=device)

    def lora_mode(train: bool) -> None:
        for m in sites.values():
            m.lora.train(train)

    step_once = contrastive_step(model, images, tokens, labels, opt, scaler, args.prec, device)

    def train_step() -> None:
        lora_mode(True)
        step_once()

    lora_mode(False)
    with torch.no_grad(), autocast(args.prec, device):
        text = F.normalize(model.encode_text(tokens).float(), dim=-1)

    @torch.no_grad()
    def zero_shot() -> None:
        lora_mode(False)
        with autocast(args.prec, device):
            _ = 100.0 * F.normalize(model.encode_image(images).float(), dim=-1) @ text.t()

    n = sum(p.numel() for p in params)
    print(f"CLIP ViT-B/16 size, {args.classes} classes, batch {args.batch}, {args.prec} on {device}"
          f" ({torch.get_num_threads()} threads); LoRA params {n:,}")
    zs_t, zs_m = timed(zero_shot, args.steps, device)
    tr_t, tr_m = timed(train_step, args.steps, device)
    print(f"zero-shot inference of the batch : {zs_t * 1000:9.1f} ms   peak {zs_m:8.0f} MiB")
    print(f"CLIP-LoRA training step          : {tr_t * 1000:9.1f} ms   peak {tr_m:8.0f} MiB")
    print(f"ratio step / zero-shot           : {tr_t / zs_t:9.2f}x")
    if device.type == "cpu":
        import resource
        print(f"process peak RSS (both)          : {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:9.0f} MiB")


if __name__ == "__main__":
    main()
