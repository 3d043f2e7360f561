"""Small helpers shared by the kit's pretraining, evaluation and tests (CPU, fp32)."""

from __future__ import annotations

import json
import os.path as osp
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fsclip.clip.compat import import_clip
from fsclip.clip.loader import load_clip
from fsclip.clip.text import text_classifier as core_text_classifier
from fsclip.engine.data.images import read_image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
WEIGHTS_DIR = osp.join(osp.dirname(osp.abspath(__file__)), "weights")


def weights_path(name: str) -> str:
    return osp.join(WEIGHTS_DIR, f"{name}.pt")


def load_micro_clip(name_or_path: str) -> torch.nn.Module:
    """Load a micro-CLIP (``MicroRN``, ``MicroViT`` or a file) through the toolkit's loader; fp32, eval."""
    return load_clip(name_or_path, device="cpu", precision="fp32")


def input_resolution(model: torch.nn.Module) -> int:
    return int(model.visual.input_resolution)


def to_tensor(images: Sequence[Image.Image], resolution: int) -> torch.Tensor:
    """CLIP's test preprocessing (resize shorter side bicubic, centre crop, normalise)."""
    out = []
    for img in images:
        img = img.convert("RGB")
        w, h = img.size
        if min(w, h) != resolution:
            s = resolution / min(w, h)
            img = img.resize((max(resolution, round(w * s)), max(resolution, round(h * s))),
                             Image.BICUBIC)
            w, h = img.size
        if (w, h) != (resolution, resolution):
            left, top = (w - resolution) // 2, (h - resolution) // 2
            img = img.crop((left, top, left + resolution, top + resolution))
        out.append(np.asarray(img, dtype=np.uint8))
    x = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


_TOKEN_CACHE: Dict[str, torch.Tensor] = {}


def tokenize(texts: Sequence[str]) -> torch.Tensor:
    """clip.tokenize, cached per string, cut to the longest sequence in the batch."""
    clip = import_clip()
    missing = [t for t in dict.fromkeys(texts) if t not in _TOKEN_CACHE]
    if missing:
        for t, row in zip(missing, clip.tokenize(missing)):
            _TOKEN_CACHE[t] = row
    tok = torch.stack([_TOKEN_CACHE[t] for t in texts])
    length = int(tok.argmax(dim=-1).max()) + 1
    return tok[:, :length]


@torch.no_grad()
def encode_images(model, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    feats = [model.encode_image(x[i:i + batch_size]).float() for i in range(0, len(x), batch_size)]
    return F.normalize(torch.cat(feats), dim=-1)


def text_classifier(model, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """Normalised mean of normalised prompt features per class, (C, D), float32."""
    return core_text_classifier(model, classnames, templates).float()


def read_split(dataset_dir: str, name: str) -> Dict[str, List[Tuple[str, int, str]]]:
    with open(osp.join(dataset_dir, f"split_zhou_{name}.json"), "r", encoding="utf-8") as f:
        data = json.load(f)
    return {k: [(osp.join(dataset_dir, "images", r), int(y), c) for r, y, c in v]
            for k, v in data.items()}


def load_items(items, resolution: int) -> Tuple[torch.Tensor, torch.Tensor]:
    images = [read_image(path) for path, _, _ in items]
    return to_tensor(images, resolution), torch.tensor([y for _, y, _ in items])


def linear_probe(train_f: torch.Tensor, train_y: torch.Tensor, num_classes: int,
                 steps: int = 100, wd: float = 1e-3, init: torch.Tensor = None) -> torch.Tensor:
    """Multinomial logistic regression on frozen normalised features, full-batch LBFGS.

    Returns weights (C, D+1) (last column: bias). ``init`` (C, D) starts from a text
    classifier when given.
    """
    d = train_f.shape[1]
    w = torch.zeros(num_classes, d + 1)
    if init is not None:
        w[:, :d] = init * 10
    w.requires_grad_(True)
    x = torch.cat([train_f * 10, torch.ones(len(train_f), 1)], 1)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.t(), train_y) + wd * (w[:, :d] ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


def anchored_probe(train_f: torch.Tensor, train_y: torch.Tensor, zs_weights: torch.Tensor,
                   logit_scale: float = 50.0, steps: int = 200, lr: float = 1e-3,
                   anchor: float = 1.0) -> torch.Tensor:
    """Linear probe started at the zero-shot classifier and pulled towards it (L2 on the
    difference): full-batch Adam on cross-entropy. Returns weights (C, D) for
    ``logit_scale * f @ W.T``."""
    w0 = zs_weights.detach().clone()
    w = w0.clone().requires_grad_(True)
    opt = torch.optim.Adam([w], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(logit_scale * train_f @ w.t(), train_y) \
            + anchor * ((w - w0) ** 2).sum()
        loss.backward()
        opt.step()
    return w.detach()


def probe_predict(w: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return torch.cat([f * 10, torch.ones(len(f), 1)], 1) @ w.t()
