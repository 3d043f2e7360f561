"""Benchmark: one VLP-CLIP-CAVPT training step, this toolkit's way against the reference way.

Both ways run in this process on the same CLIP of ViT-B/32 size (random weights, 224 px, text
transformer 512 wide x 12 layers), the same batch, the same learnable parts (deep visual prompts
of length 10, CoOp's 16 context tokens, CAVPT in the last block with K_T = 10), the same loss
(cross-entropy + the CAVPT loss) and backward pass:

* reference (fanrena/DPT's step): the frozen image encoder runs on the batch for zero-shot
  CLIP's top-K classes, and the K class prompts, 77 tokens each, go through the whole text
  encoder forward and backward;
* ours (trainers/dpt.py, fsclip/prompting/cavpt.py): the frozen features of the batch's views are read from the cache
  (fixed views, computed once), and the prompts go through the prefix-shared encoder at short
  context (SOT + context once, the K class suffixes attend to it).

The prompted image encoder (forward and backward) is the same in both. It prints each part's
time (median of --steps steps after a warm-up step) and the ratio of the step times. On a shared
machine, ``--threads 1 --cpu-time`` measures this process's CPU time instead of wall time.
Usage: python benchmarks/dpt_step.py [--classes 100] [--batch 32] [--steps 3] [--threads N] [--cpu-time]
"""

from __future__ import annotations

import argparse
import os.path as osp
import statistics
import sys
import time
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO)

from fsclip.clip.compat import import_clip  # noqa: E402
from fsclip.clip.text import encode_text_embeddings, tokenize  # noqa: E402
from fsclip.prompting.prompt_learner import TextPromptLearner  # noqa: E402
from fsclip.prompting.visual import VisualPrompts  # noqa: E402
from fsclip.prompting.cavpt import CAVPT, cavpt_loss, prompted_image_features  # noqa: E402

WORDS = ["red", "spotted", "mountain", "sports car", "tabby cat", "golden retriever", "oak", "fighter jet",
         "espresso", "paper lantern", "sea urchin", "ice cream sandwich"]


def vit_b32() -> torch.nn.Module:
    clip = import_clip()
    model = clip.model.CLIP(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768,
                            vision_patch_size=32, context_length=77, vocab_size=49408, transformer_width=512,
                            transformer_heads=8, transformer_layers=12)
    return model.float().eval().requires_grad_(False)


def reference_text(model, learner: TextPromptLearner) -> Callable[[], torch.Tensor]:
    """CoOp's text step: [SOT, ctx, name, ., EOT, padding] at 77 tokens through the whole encoder."""
    tokens = tokenize([f"{learner.init_text} {name}." for name in learner.classnames])  # [K, 77]
    with torch.no_grad():
        fixed = model.token_embedding(tokens)
    m = learner.n_ctx

    def encode() -> torch.Tensor:
        ctx = learner.ctx.unsqueeze(0).expand(len(tokens), -1, -1)
        return encode_text_embeddings(model, torch.cat([fixed[:, :1], ctx, fixed[:, 1 + m:]], dim=1), tokens)
    return encode


def step(way: str, model, parts: Dict, images: torch.Tensor, labels: torch.Tensor, cached: torch.Tensor,
         times: Dict[str, List[float]], clock: Callable[[], float]) -> None:
    def tick(name: str, start: float) -> float:
        now = clock()
        times.setdefault(f"{way} {name}", []).append(now - start)
        return now

    t = t0 = clock()
    if way == "reference":  # frozen zero-shot pass on the batch
        with torch.no_grad():
            frozen = F.normalize(model.visual(images), dim=-1)
    else:  # the cached features of the batch's views
        frozen = cached[torch.arange(len(images))]
    selected = (frozen @ parts["W"].t()).topk(10, dim=1).indices  # [B, K_T]
    t = tick("frozen image features", t)
    text = parts["ref_text"]() if way == "reference" else parts["learner"].text_features(model)  # [K, D]
    t = tick("text encoder forward", t)
    feats, layer_logits = prompted_image_features(model.visual, images, parts["vpt"], parts["cavpt"],
                                                  parts["W"][selected])
    t = tick("prompted image encoder forward", t)
    logits = 100.0 * F.normalize(feats, dim=-1) @ F.normalize(text, dim=-1).t()
    loss = F.cross_entropy(logits, labels) + cavpt_loss(layer_logits, selected, labels)
    for p in parts["params"]:
        p.grad = None
    loss.backward()
    t = tick("backward (text + image)", t)
    tick("step", t0)


def main() -> None:
    p = argparse.ArgumentParser(description="VLP-CLIP-CAVPT step: ours vs the reference way")
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--cpu-time", action="store_true", help="time.process_time instead of wall time")
    args = p.parse_args()
    clock = time.process_time if args.cpu_time else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = vit_b32()
    classnames = [f"{WORDS[i % len(WORDS)]} {i}" for i in range(args.classes)]
    learner = TextPromptLearner(model, classnames, n_ctx=16)
    vpt = VisualPrompts(model.visual, length=10, deep=True)
    cavpt = torch.nn.ModuleList([CAVPT(512, 768, args.classes)])
    with torch.no_grad():
        W = F.normalize(torch.randn(args.classes, 512), dim=-1)  # hand-crafted features, computed once
    parts = {"learner": learner, "vpt": vpt, "cavpt": cavpt, "W": W, "ref_text": reference_text(model, learner),
             "params": [learner.ctx, vpt.prompts, *cavpt.parameters()]}
    images = torch.randn(args.batch, 3, 224, 224)
    labels = torch.randint(args.classes, (args.batch,))
    with torch.no_grad():
        cached = F.normalize(model.visual(images), dim=-1)  # what the feature cache holds
        ref, ours = parts["ref_text"](), learner.text_features(model)
    assert torch.allclose(ref, ours, atol=1e-4, rtol=1e-3), "the two text encoders disagree"
    print(f"ViT-B/32 size, random weights; batch {args.batch}, {args.classes} classes, prompts of "
          f"{learner.tokens.shape[1]} tokens (reference: 77); torch threads {torch.get_num_threads()}; "
          f"{'CPU' if args.cpu_time else 'wall'} time")
    times: Dict[str, List[float]] = {}
    for i in range(args.steps + 1):
        for way in ("reference", "ours"):
            step(way, model, parts, images, labels, cached, times if i else {}, clock)
    med = {k: statistics.median(v) for k, v in times.items()}
    for name in ("frozen image features", "text encoder forward", "prompted image encoder forward",
                 "backward (text + image)", "step"):
        print(f"{name:32s} reference {med['reference ' + name]:8.3f} s   ours {med['ours ' + name]:8.3f} s")
    print(f"ratio (reference / ours), step time: {med['reference step'] / med['ours step']:.2f}x")


if __name__ == "__main__":
    main()
