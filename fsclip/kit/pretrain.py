"""Contrastive pretraining of the kit's micro-CLIPs on synthetic image-caption pairs.

Images come from :mod:`fsclip.kit.synth`'s ``pretrain`` domain (scenes with at most one small
distractor, some outline drawings), rendered once into a pool; captions name the shape and a
random subset of the main object's other attributes ("a photo of a small red striped circle.",
"a drawing of a blue star.", ...). The downstream class names ("red circle", "red striped
square") are thus expressible, while the downstream images differ from what was seen (a palette
shift, finer fill patterns, or sketches), so zero-shot accuracy is well above chance but far
from perfect.

The models are clip-anytorch ``CLIP`` modules with the architectures in :data:`ARCHS`; the
saved file is a plain fp16 state dict that ``clip.model.build_model`` loads::

    python -m fsclip.kit.pretrain --arch RN --seed 0 --out fsclip/kit/weights/MicroRN.pt
    python -m fsclip.kit.pretrain --arch ViT --seed 0 --out fsclip/kit/weights/MicroViT.pt

Training is deterministic for a seed on a given machine and thread count (CPU, fp32).
"""

from __future__ import annotations

import argparse
import math
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from fsclip.clip.compat import import_clip
from fsclip.kit import synth
from fsclip.kit.clipfns import CLIP_MEAN, CLIP_STD, tokenize

ARCHS: Dict[str, dict] = {
    # ModifiedResNet: 128 px input -> 4x4 map of 32*width channels before attention pooling
    "RN": dict(embed_dim=128, image_resolution=128, vision_layers=(1, 1, 1, 1), vision_width=16,
               vision_patch_size=None),
    # VisionTransformer: 128 px, 16 px patches -> 8x8 tokens + class token, 2 heads
    "ViT": dict(embed_dim=128, image_resolution=128, vision_layers=4, vision_width=128,
                vision_patch_size=16),
}
TEXT = dict(context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1,
            transformer_layers=2)
DEFAULTS = dict(steps=2000, batch_size=64, lr=2e-3, weight_decay=0.05, warmup=100, pool=8000,
                captions=2, lowres=0.85, hard=0.5)
# probability that a caption names the colour / the fill texture (the shape is always named)
P_COLOUR, P_TEXTURE = 0.85, 0.75
# per-architecture changes to DEFAULTS (what `--arch X` uses unless an option is given)
ARCH_DEFAULTS: Dict[str, dict] = {"RN": {}, "ViT": {"lr": 1e-3}}

PHOTO_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "a {}.", "an image of a {}.",
                   "there is a {}.")
DRAWING_TEMPLATES = ("a drawing of a {}.", "a sketch of a {}.", "an outline of a {}.")


def build_clip(arch: str, seed: int) -> torch.nn.Module:
    clip = import_clip()
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose from {sorted(ARCHS)}")
    torch.manual_seed(seed)
    a = ARCHS[arch]
    model = clip.model.CLIP(a["embed_dim"], a["image_resolution"], a["vision_layers"],
                            a["vision_width"], a["vision_patch_size"], TEXT["context_length"],
                            TEXT["vocab_size"], TEXT["transformer_width"],
                            TEXT["transformer_heads"], TEXT["transformer_layers"])
    return model.float()


def caption(rng: np.random.Generator, obj: synth.Obj) -> str:
    """A caption naming a random subset of the object's attributes (shape always)."""
    words = []
    if rng.random() < 0.2:
        words.append("small" if obj.size < 0.3 else "large")
    if rng.random() < P_COLOUR:
        words.append(obj.colour)
    if not obj.outline and rng.random() < P_TEXTURE:
        words.append(obj.texture)
    words.append(obj.shape)
    phrase = " ".join(words)
    if obj.outline and rng.random() < 0.7:
        template = DRAWING_TEMPLATES[int(rng.integers(len(DRAWING_TEMPLATES)))]
    else:
        template = PHOTO_TEMPLATES[int(rng.integers(len(PHOTO_TEMPLATES)))]
    return template.format(phrase)


def render_pool(seed: int, size: int) -> Tuple[torch.Tensor, List[synth.Obj]]:
    """``size`` pretraining scenes as a uint8 tensor (N, 3, H, W) and their main objects.

    Scene ``i`` depends only on ``(seed, i)`` (rendered in worker processes when possible).
    """
    out = synth.run_jobs(synth.render_pretrain_scene, [(seed, i) for i in range(size)])
    c = synth.CANVAS
    images = np.stack([np.frombuffer(b, dtype=np.uint8).reshape(c, c, 3) for b, _ in out])
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), [o for _, o in out]


def normalize_uint8(x: torch.Tensor) -> torch.Tensor:
    x = x.float().div_(255)
    return (x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)


def clip_loss(model, images: torch.Tensor, captions: Sequence[str],
              img: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Symmetric InfoNCE; identical captions in a batch count as positives of each other."""
    if img is None:
        img = F.normalize(model.encode_image(images), dim=-1)
    uniq = list(dict.fromkeys(captions))
    index = {c: i for i, c in enumerate(uniq)}
    txt_u = F.normalize(model.encode_text(tokenize(uniq)), dim=-1)
    ids = torch.tensor([index[c] for c in captions])
    txt = txt_u[ids]
    logits = model.logit_scale.exp().clamp(max=100) * img @ txt.t()
    same = (ids[:, None] == ids[None, :]).float()
    target = same / same.sum(1, keepdim=True)
    return 0.5 * (torch.sum(-target * F.log_softmax(logits, 1), 1).mean()
                  + torch.sum(-target * F.log_softmax(logits.t(), 1), 1).mean())


def encode_image_any(model, x: torch.Tensor) -> torch.Tensor:
    """``model.encode_image`` for inputs below the native resolution (progressive resizing).

    The positional embeddings (ResNet attention pool, ViT tokens) are average-pooled from the
    native grid to the smaller one, so the native parameters receive the gradients.
    """
    v = model.visual
    if x.shape[-1] == v.input_resolution:
        return model.encode_image(x)
    is_vit = hasattr(v, "class_embedding")
    if is_vit:
        n = x.shape[-1] // v.conv1.kernel_size[0]
        module, pe = v, v.positional_embedding
    else:
        n = x.shape[-1] // 32
        module, pe = v.attnpool, v.attnpool.positional_embedding
    g = int(round((pe.shape[0] - 1) ** 0.5))
    grid = pe[1:].reshape(g, g, -1).permute(2, 0, 1)[None]
    grid = F.adaptive_avg_pool2d(grid, n)[0].permute(1, 2, 0).reshape(n * n, -1)
    pe_small = torch.cat([pe[:1], grid])
    if is_vit:
        return torch.func.functional_call(v, {"positional_embedding": pe_small}, (x,),
                                          strict=False)
    x = x.type(v.conv1.weight.dtype)
    x = v.relu1(v.bn1(v.conv1(x)))
    x = v.relu2(v.bn2(v.conv2(x)))
    x = v.relu3(v.bn3(v.conv3(x)))
    x = v.avgpool(x)
    x = v.layer4(v.layer3(v.layer2(v.layer1(x))))
    return torch.func.functional_call(module, {"positional_embedding": pe_small}, (x,),
                                      strict=False)


def _param_groups(model, weight_decay: float):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.ndim < 2 or "embedding" in name or "logit_scale" in name or ".bn" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def _batch_indices(gen: torch.Generator, colour_ids: torch.Tensor, batch_size: int,
                   hard: float) -> torch.Tensor:
    n = len(colour_ids)
    if float(torch.rand(1, generator=gen)) < hard:
        pick = torch.randperm(int(colour_ids.max()) + 1, generator=gen)[:2]
        candidates = torch.nonzero((colour_ids == pick[0]) | (colour_ids == pick[1])).flatten()
        if len(candidates) >= batch_size:
            return candidates[torch.randperm(len(candidates), generator=gen)[:batch_size]]
    return torch.randperm(n, generator=gen)[:batch_size]


def pretrain(arch: str = "RN", seed: int = 0, steps: int = DEFAULTS["steps"],
             batch_size: int = DEFAULTS["batch_size"], lr: float = DEFAULTS["lr"],
             weight_decay: float = DEFAULTS["weight_decay"], warmup: int = DEFAULTS["warmup"],
             pool: int = DEFAULTS["pool"], captions_per_image: int = DEFAULTS["captions"],
             lowres: float = DEFAULTS["lowres"], hard: float = DEFAULTS["hard"],
             threads: Optional[int] = None, log_every: int = 25, verbose: bool = True):
    """Train a micro-CLIP; returns (fp32 model in eval mode, list of per-step losses).

    A pool of ``pool`` scenes is rendered once; each step draws a batch from it (with a random
    horizontal flip) and ``captions_per_image`` fresh captions per image (each caption set gives
    one InfoNCE term; the image features are shared). The first ``lowres`` fraction of the
    steps runs at half resolution (about 4x cheaper), the rest at the native resolution.
    A fraction ``hard`` of the batches holds scenes of only two main-object colours, so that
    colour alone cannot match images to captions (hard negatives for shape and texture).
    """
    if threads:
        torch.set_num_threads(threads)
    t0 = time.time()
    images, objs = render_pool(seed, pool)
    if verbose:
        print(f"rendered {pool} scenes in {time.time() - t0:.0f}s", flush=True)
    model = build_clip(arch, seed)
    model.train()
    opt = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.98),
                            eps=1e-6)
    rng = np.random.default_rng([seed, 7919])
    gen = torch.Generator().manual_seed(seed)
    colour_ids = torch.tensor([list(synth.COLOURS).index(o.colour) for o in objs])
    losses: List[float] = []
    start = time.time()
    for step in range(steps):
        if step < warmup:
            cur = lr * (step + 1) / warmup
        else:
            cur = 0.5 * lr * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
        for g in opt.param_groups:
            g["lr"] = cur
        idx = _batch_indices(gen, colour_ids, batch_size, hard)
        x = images[idx]
        flip = torch.rand(len(idx), generator=gen) < 0.5
        x[flip] = x[flip].flip(-1)
        xf = normalize_uint8(x)
        if step < int(lowres * steps):
            xf = F.avg_pool2d(xf, 2)
        img = F.normalize(encode_image_any(model, xf), dim=-1)
        loss = sum(clip_loss(model, None, [caption(rng, objs[i]) for i in idx.tolist()], img=img)
                   for _ in range(captions_per_image)) / captions_per_image
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(float(loss.detach()))
        if verbose and (step + 1) % log_every == 0:
            recent = np.mean(losses[-log_every:])
            print(f"step {step + 1}/{steps} loss {recent:.4f} lr {cur:.2e} "
                  f"scale {model.logit_scale.exp().item():.1f} time {time.time() - start:.0f}s",
                  flush=True)
    return model.eval(), losses


def state_dict_fp16(model) -> Dict[str, torch.Tensor]:
    """Plain state dict with floating tensors stored as fp16 (build_model-compatible)."""
    out = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        out[k] = v.half().clone() if v.is_floating_point() else v.clone()
    return out


def save(model_or_state, path: str) -> None:
    """Write the fp16 state dict atomically, with a fixed archive name inside the file, so the
    same weights always give the same bytes whatever the output path."""
    import io

    from fsclip.engine.utils import atomic_write_bytes

    state = model_or_state if isinstance(model_or_state, dict) else state_dict_fp16(model_or_state)
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())
    os.chmod(path, 0o644)


def main(argv: Optional[Sequence[str]] = None) -> List[float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=sorted(ARCHS), default="RN")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="where to write the fp16 state dict (.pt)")
    # None: the architecture's default (DEFAULTS updated by ARCH_DEFAULTS)
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--warmup", type=int)
    p.add_argument("--pool", type=int)
    p.add_argument("--captions", type=int)
    p.add_argument("--lowres", type=float, help="fraction of the steps run at half resolution")
    p.add_argument("--hard", type=float, help="fraction of two-colour (hard-negative) batches")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1 is fastest on a shared 2-core machine)")
    p.add_argument("--eval-root", default="",
                   help="if set, generate the synthetic benchmark here and print zero-shot and "
                        "4-shot linear-probe accuracy of the result")
    args = p.parse_args(argv)
    hp = dict(DEFAULTS, **ARCH_DEFAULTS[args.arch])
    for key in hp:
        if getattr(args, key, None) is not None:
            hp[key] = getattr(args, key)
    print(f"pretraining Micro{args.arch}: seed {args.seed}, threads {args.threads}, {hp}",
          flush=True)
    t0 = time.time()
    model, losses = pretrain(args.arch, args.seed, hp["steps"], hp["batch_size"], hp["lr"],
                             hp["weight_decay"], hp["warmup"], hp["pool"], hp["captions"],
                             hp["lowres"], hp["hard"], args.threads)
    save(model, args.out)
    print(f"saved {args.out} ({os.path.getsize(args.out) / 2**20:.2f} MiB) after "
          f"{time.time() - t0:.0f}s; first/last loss {losses[0]:.3f}/{np.mean(losses[-20:]):.3f}")
    if args.eval_root:
        from fsclip.kit.evaluate import evaluate_all, format_results

        print(format_results(evaluate_all(args.out, args.eval_root)))
    return losses


if __name__ == "__main__":
    main()
