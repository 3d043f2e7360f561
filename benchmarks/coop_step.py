"""One CoOp training step (and one CoCoOp step), the reference way against fsclip's, on a CPU.

Models: CLIP RN50 (CoOp's backbone) and ViT-B/16 (CoCoOp's) at full size with random weights
(``fsclip.clip.tiny.build_tiny_clip`` with OpenAI's architecture settings), fp32. K classes (100),
names of 1-4 words; CoOp: batch 32, 16 context tokens; CoCoOp: 4 context tokens, batch 1 (its
paper setting; ``--cocoop-batch``).

Reference (CoOp's and CoCoOp's training loop): CLIP's image encoder on the batch of freshly
augmented images (no gradient; decoding and augmenting images is not counted), then the text
encoder forward and backward over the K prompts of 77 tokens (CoCoOp: K prompts per image), the
loss and an SGD step on the context.

fsclip: the batch's image features gathered from the cached views (``global_features``), the
prompts at short context with the shared prefix run once (once per image for CoCoOp), the same
loss and step. Both ways compute the same step on the same image features up to float rounding
(the script checks the context's gradient agrees); only where the image features come from
differs (a cached augmented view instead of a fresh one, see docs/methods/prompt_learning.md).

Printed: each component's time (median of ``--repeats`` after one warm-up), totals and ratios,
with the short-context-only variant (no prefix sharing) to show each saving. CoCoOp's peak
memory: each way runs one step in a fresh subprocess, which reports its resident-set growth
during the step (Linux: peak RSS reset through /proc/self/clear_refs before the step, VmHWM
after, minus VmRSS before).

    python benchmarks/coop_step.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

from fsclip.clip.text import encode_text_embeddings
from fsclip.clip.tiny import build_tiny_clip
from fsclip.prompting import TextPromptLearner

WORDS = ["red", "dotted", "circle", "golden", "retriever", "sports", "car", "wooden", "chair", "sea",
         "turtle", "electric", "guitar", "mountain", "bike", "snow", "leopard", "coffee", "mug", "stop", "sign"]


def class_names(k: int) -> List[str]:
    """K distinct names of 1-4 words (deterministic)."""
    g = torch.Generator().manual_seed(0)
    names: List[str] = []
    while len(names) < k:
        n = int(torch.randint(1, 5, (1,), generator=g))
        name = " ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (n,), generator=g))
        if name not in names:
            names.append(name)
    return names


def build(arch: str):
    if arch == "RN50":
        model = build_tiny_clip("RN", image_resolution=224, embed_dim=1024, vision_width=64,
                                vision_layers=(3, 4, 6, 3), text_width=512, text_layers=12, randomize_bn=False)
    else:  # ViT-B/16
        model = build_tiny_clip("ViT", image_resolution=224, embed_dim=512, vision_width=768, vision_layers=12,
                                patch_size=16, text_width=512, text_layers=12)
    return model.requires_grad_(False)


def full_context(model, learner: TextPromptLearner, ctx=None):
    """The reference prompts: CoOp's 77-token embeddings and tokens (padding embedded as CoOp does)."""
    prompts = learner(ctx)  # [..., K, L, width]
    tokens = learner.tokens
    pad = 77 - tokens.shape[1]
    with torch.no_grad():
        pad_emb = model.token_embedding(torch.zeros(1, pad, dtype=torch.long)).float()[0]  # [pad, width]
    pad_emb = pad_emb.expand(*prompts.shape[:-2], pad, prompts.shape[-1])
    return torch.cat([prompts, pad_emb], dim=-2), F.pad(tokens, (0, pad))


def timed(fn: Callable[[], Dict[str, float]], repeats: int) -> Dict[str, float]:
    fn()  # warm-up
    runs = [fn() for _ in range(repeats)]
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


class Step:
    """One training step of CoOp (``cocoop=False``) or CoCoOp, reference or fsclip way."""

    def __init__(self, arch: str, k: int, batch: int, cocoop: bool, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.model = build(arch)
        self.cocoop = cocoop
        self.learner = TextPromptLearner(self.model, class_names(k), n_ctx=16,
                                         ctx_init="a photo of a" if cocoop else "")
        d = self.model.text_projection.shape[1]
        width = self.learner.ctx.shape[-1]
        self.meta = torch.nn.Sequential(torch.nn.Linear(d, d // 16), torch.nn.ReLU(), torch.nn.Linear(d // 16, width))
        params = [self.learner.ctx] + (list(self.meta.parameters()) if cocoop else [])
        self.opt = torch.optim.SGD(params, lr=0.002, momentum=0.9)
        self.images = torch.randn(batch, 3, 224, 224)
        self.labels = torch.randint(k, (batch,))
        # what global_features holds: CLIP image features of N images x V cached views
        self.cached = torch.randn(max(batch, 64), 10, d)
        self.scale = self.model.logit_scale.exp().item()

    def logits(self, f, text):
        f = F.normalize(f.float(), dim=-1)
        if self.cocoop:
            return self.scale * torch.einsum("bd,bkd->bk", f, F.normalize(text.float(), dim=-1))
        return self.scale * f @ F.normalize(text.float(), dim=-1).t()

    def text(self, f, reference: bool):
        ctx = None
        if self.cocoop:
            ctx = self.learner.ctx + self.meta(F.normalize(f.float(), dim=-1)).unsqueeze(1)  # [B, M, width]
        if reference:
            prompts, tokens = full_context(self.model, self.learner, ctx)
            b = prompts.shape[0] if self.cocoop else 1
            out = encode_text_embeddings(self.model, prompts.reshape(-1, 77, prompts.shape[-1]), tokens.repeat(b, 1))
            return out.reshape(b, -1, out.shape[-1]) if self.cocoop else out
        return self.learner.text_features(self.model, ctx)

    def run(self, way: str) -> Dict[str, float]:
        """way: "reference", "short" (short context, no prefix sharing) or "fsclip"."""
        self.learner.share_prefix = way == "fsclip"
        t0 = time.perf_counter()
        if way == "reference":
            with torch.no_grad():
                f = self.model.encode_image(self.images).float()
        else:
            idx = torch.arange(self.images.shape[0])
            f = self.cached[idx, torch.randint(10, (len(idx),))]
        t1 = time.perf_counter()
        loss = F.cross_entropy(self.logits(f, self.text(f, way == "reference")), self.labels)
        t2 = time.perf_counter()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        t3 = time.perf_counter()
        return {"image": t1 - t0, "text_forward": t2 - t1, "backward_step": t3 - t2, "total": t3 - t0}


def print_table(title: str, results: Dict[str, Dict[str, float]]) -> None:
    print(f"\n{title}")
    ref = results["reference"]
    print(f"{'component':16s}" + "".join(f"{w:>14s}" for w in results) + f"{'ratio':>10s}")
    for comp in ("image", "text_forward", "backward_step", "total"):
        row = "".join(f"{results[w][comp]:13.3f}s" for w in results)
        ours = results["fsclip"][comp]
        print(f"{comp:16s}{row}{ref[comp] / max(ours, 1e-9):9.1f}x")


def compare_steps(arch: str, k: int, batch: int, cocoop: bool, repeats: int) -> Dict[str, Dict[str, float]]:
    step = Step(arch, k, batch, cocoop)
    results = {way: timed(lambda: step.run(way), repeats) for way in ("reference", "short", "fsclip")}
    grads = {way: gradient_on(step, way) for way in ("reference", "short", "fsclip")}
    for way in ("short", "fsclip"):
        err = (grads[way] - grads["reference"]).abs().max() / grads["reference"].abs().max()
        print(f"{'CoCoOp' if cocoop else 'CoOp'} {arch}: max |grad({way}) - grad(reference)| / max |grad| = {err:.1e}")
    return results


def gradient_on(step: Step, way: str) -> torch.Tensor:
    """The context gradient on fixed image features (the reference's text path, or ours)."""
    f = step.cached[torch.arange(step.images.shape[0]), 0]
    step.learner.share_prefix = way == "fsclip"
    loss = F.cross_entropy(step.logits(f, step.text(f, way == "reference")), step.labels)
    grad, = torch.autograd.grad(loss, step.learner.ctx)
    return grad


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(args) -> None:
    """One CoCoOp step one way; prints {"peak_mib": ...} (growth of the resident set during it)."""
    torch.set_num_threads(args.threads)
    step = Step(args.cocoop_arch, args.classes, args.cocoop_batch, cocoop=True)
    step.run(args.child)  # warm-up: allocator pools, lazy inits
    import gc
    gc.collect()
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the peak RSS (VmHWM) to the current RSS
    before = _status_kib("VmRSS")
    step.run(args.child)
    print(json.dumps({"peak_mib": (_status_kib("VmHWM") - before) / 1024}))


def cocoop_memory(args) -> Dict[str, float]:
    out = {}
    for way in ("reference", "fsclip"):
        cmd = [sys.executable, __file__, "--child", way, "--threads", str(args.threads), "--classes", str(args.classes),
               "--cocoop-batch", str(args.cocoop_batch), "--cocoop-arch", args.cocoop_arch]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[way] = json.loads(proc.stdout.strip().splitlines()[-1])["peak_mib"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--arch", default="RN50", choices=["RN50", "ViT-B/16"])
    p.add_argument("--cocoop-arch", default="ViT-B/16", choices=["RN50", "ViT-B/16"])
    p.add_argument("--cocoop-batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-cocoop", action="store_true")
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, {args.classes} classes, fp32 CPU, "
          f"median of {args.repeats} steps after a warm-up")
    names = class_names(args.classes)
    learner = TextPromptLearner(build_tiny_clip("RN", text_width=512, text_layers=1), names, n_ctx=16)
    print(f"CoOp prompts: {learner.tokens.shape[1]} tokens at short context (reference: 77), shared prefix "
          f"1 + 16 = 17, class suffixes {learner.tokens.shape[1] - 17} tokens")
    coop = compare_steps(args.arch, args.classes, args.batch, False, args.repeats)
    print_table(f"CoOp step, {args.arch}, batch {args.batch}, {args.classes} classes (seconds)", coop)
    total = coop["reference"]["total"] / coop["fsclip"]["total"]
    text = (coop["reference"]["text_forward"] + coop["reference"]["backward_step"]) / \
        (coop["fsclip"]["text_forward"] + coop["fsclip"]["backward_step"])
    print(f"CoOp ratio (reference / fsclip): step {total:.1f}x, text encoder forward+backward {text:.1f}x")
    if args.skip_cocoop:
        return
    cocoop = compare_steps(args.cocoop_arch, args.classes, args.cocoop_batch, True, args.repeats)
    print_table(f"CoCoOp step, {args.cocoop_arch}, batch {args.cocoop_batch}, {args.classes} classes (seconds)", cocoop)
    print(f"CoCoOp ratio (reference / fsclip): step {cocoop['reference']['total'] / cocoop['fsclip']['total']:.1f}x")
    mem = cocoop_memory(args)
    print(f"CoCoOp peak memory of one step (resident-set growth, fresh process each): reference "
          f"{mem['reference']:.0f} MiB, fsclip {mem['fsclip']:.0f} MiB ({mem['reference'] / max(mem['fsclip'], 1):.1f}x); "
          f"both grow linearly with batch x classes")


if __name__ == "__main__":
    main()
