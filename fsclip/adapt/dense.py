"""Spatial visual features in CLIP's joint (text) width, from the cached trunk output G(x).

Methods that let text features attend over image regions (VT-CLIP, CALIP, CALIP-FS) need V_s:
one D-dim feature per map position (ResNet) or patch (ViT), in the space of CLIP's text
features. Three ways to get there (``TRAINER.<METHOD>.VISUAL``):

``project``   CLIP's own output projection of every position, without attention mixing.
              ResNet: the attention pool's value and output projections (MaskCLIP;
              ``fsclip.clip.features.attnpool_dense``); ViT: the last block, then ``ln_post``
              and ``proj`` on every token (``vit_project_tokens``).
``attnpool``  every position through CLIP's whole pooling layer, as its own query. ResNet:
              ``attnpool_all_tokens`` (what CALIP's public code uses); ViT: the same as
              ``project``, since there the last block already mixes the tokens.
``learned``   a trainable copy of ``project``'s projection, initialised to it (ResNet: one
              C -> D linear layer equal to the composed value/output projections; ViT:
              ``ln_post`` and ``proj``), so training starts where ``project`` is.

The work is split in two: ``spatial_stem`` is the frozen part (everything up to the trainable
projection; all of it in the first two modes), and ``SpatialProjection`` the part that may
train (the identity except in ``learned``). The stem is a fixed function of the cached trunk
output, so ``SpatialBank`` computes it once per run for every cached view and keeps it (within
``TRAINER.DENSE.MAX_GB``; beyond that it computes each batch's views when asked).
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from yacs.config import CfgNode as CN

from fsclip.clip.features import (
    attnpool_all_tokens, attnpool_dense, is_vit, vit_project_tokens, vit_run_blocks,
)
from fsclip.errors import ConfigError

from .epochs import fit_epochs, steps_per_epoch
from .search import RunResult, grid_search
from .trainer import STORE_DTYPES

MODES = ("project", "attnpool", "learned")


def add_dense_cfg(cfg) -> None:
    """The shared ``TRAINER.DENSE`` node (added once, whichever trainer comes first)."""
    if "DENSE" in cfg.TRAINER:
        return
    cfg.TRAINER.DENSE = CN()
    # Memory (GiB, on the training device) for the spatial features of every cached view of a
    # run, computed once; above it they are computed per batch from the cached trunk output
    cfg.TRAINER.DENSE.MAX_GB = 4.0


def check_mode(mode: str, key: str, trainable: bool = True) -> str:
    """``mode`` if it is one of MODES (``learned`` only where the method trains), else ConfigError."""
    allowed = MODES if trainable else tuple(m for m in MODES if m != "learned")
    if mode not in allowed:
        raise ConfigError(f"{key} is {mode!r}; use one of {', '.join(allowed)}")
    return mode


def spatial_stem(visual: Any, dense: Tensor, mode: str) -> Tensor:
    """The frozen part of V_s for G's output ``dense``: ``[B, HW, W]`` float32 (CLIP's weights are
    frozen, so gradients flow only back to ``dense``, when it requires them).

    W is CLIP's embedding width D, except in ``learned`` mode, where the stem stops before the
    projection: ResNet map vectors plus the pool's positional embedding (``[B, HW, C]``), or
    the ViT's last-block tokens (``[B, HW, width]``).
    """
    if is_vit(visual):
        depth = len(visual.transformer.resblocks)
        tokens = vit_run_blocks(visual, dense.to(visual.conv1.weight.dtype), depth - 1)[:, 1:]  # [B, HW, width]
        out = tokens if mode == "learned" else vit_project_tokens(visual, tokens)
    elif mode == "project":
        out = attnpool_dense(visual, dense)[:, 1:]  # [B, HW, D]
    elif mode == "attnpool":
        out = attnpool_all_tokens(visual, dense)[:, 1:]  # [B, HW, D]
    else:
        pool = visual.attnpool
        x = dense.to(pool.positional_embedding.dtype).flatten(2).transpose(1, 2)  # [B, HW, C]
        out = x + pool.positional_embedding[1:].to(x.dtype)
    return out.float()


class SpatialProjection(nn.Module):
    """The trainable part of V_s: ``[B, HW, W] -> [B, HW, D]`` (the identity unless ``learned``)."""

    def __init__(self, visual: Any, mode: str) -> None:
        super().__init__()
        self.norm: nn.Module = nn.Identity()
        self.linear: Optional[nn.Linear] = None
        if mode != "learned":
            return
        if is_vit(visual):
            self.norm = copy.deepcopy(visual.ln_post).float()
            proj = visual.proj.detach().float()  # [width, D]
            self.linear = nn.Linear(proj.shape[0], proj.shape[1], bias=False)
            with torch.no_grad():
                self.linear.weight.copy_(proj.t())
        else:  # MaskCLIP's c_proj(v_proj(t)) as one linear layer: (Wc Wv) t + (Wc bv + bc)
            pool = visual.attnpool
            wv, bv = pool.v_proj.weight.detach().float(), pool.v_proj.bias.detach().float()
            wc, bc = pool.c_proj.weight.detach().float(), pool.c_proj.bias.detach().float()
            self.linear = nn.Linear(wv.shape[1], wc.shape[0])
            with torch.no_grad():
                self.linear.weight.copy_(wc @ wv)
                self.linear.bias.copy_(wc @ bv + bc)

    def forward(self, stem: Tensor) -> Tensor:
        if self.linear is None:
            return stem
        return self.linear(self.norm(stem))


class SpatialBank:
    """``fn`` (a frozen stem) of every view of cached trunk features ``[N, V, ...]``, computed once.

    ``get(idx, views)`` returns ``[b, L, W]`` float32 on ``device`` for images ``idx`` and one
    view each. The stems are stored on ``device`` in ``dtype`` when they fit ``max_bytes``;
    otherwise each call computes its batch from the trunk features (same values, more time).
    """

    def __init__(self, fn: Callable[[Tensor], Tensor], trunk: Tensor, device: torch.device, max_bytes: float,
                 dtype: torch.dtype = torch.float16, batch_size: int = 256, label: str = "") -> None:
        self.fn = fn
        self.trunk = trunk
        self.device = device
        n, v = trunk.shape[:2]
        first = fn(trunk[:1, 0].to(device))  # [1, L, W]
        nbytes = n * v * first[0].numel() * torch.empty((), dtype=dtype).element_size()
        self.stored: Optional[Tensor] = None
        if nbytes > max_bytes:
            print(f"Note: spatial features of the {label} views ({nbytes / 2**30:.2f} GiB) exceed "
                  f"TRAINER.DENSE.MAX_GB ({max_bytes / 2**30:.2f} GiB); computing them per batch")
            return
        flat = trunk.flatten(0, 1)  # [N * V, ...]
        out = torch.empty((n * v, *first.shape[1:]), dtype=dtype, device=device)
        for i in range(0, n * v, batch_size):
            out[i:i + batch_size] = fn(flat[i:i + batch_size].to(device)).to(dtype)
        self.stored = out.reshape(n, v, *first.shape[1:])
        print(f"Spatial features of the {label} views, computed once: {tuple(self.stored.shape)} "
              f"({nbytes / 2**20:.1f} MiB)")

    def __len__(self) -> int:
        return self.trunk.shape[0]

    def get(self, idx: Tensor, views: Tensor) -> Tensor:
        if self.stored is not None:
            return self.stored[idx.to(self.device), views.to(self.device)].float()
        return self.fn(self.trunk[idx.cpu(), views.cpu()].to(self.device))


LogitsFn = Callable[[nn.Module, Tensor, Tensor], Tensor]  # (module, V_c [B, D], stem [B, L, W]) -> [B, K]


class DenseSplit:
    """A split as dense methods read it: spatial stems of every cached view (``SpatialBank``),
    CLIP's pooled features V_c (``FrozenFeatureTrainer.global_features``) and labels."""

    def __init__(self, trainer: Any, split: str, stem: Callable[[Tensor], Tensor]) -> None:
        cfg = trainer.cfg
        self.bank = SpatialBank(stem, trainer.features(split), trainer.device,
                                float(cfg.TRAINER.DENSE.MAX_GB) * 2**30, STORE_DTYPES[cfg.TRAINER.FEATURES.DTYPE],
                                label=split)
        self.image = trainer.global_features(split)  # [N, V, D] (train) or [N, D], on the device
        self.labels = trainer.labels(split)
        self.device = trainer.device

    def __len__(self) -> int:
        return len(self.bank)

    @property
    def num_views(self) -> int:
        return self.image.shape[1] if self.image.dim() == 3 else 1

    def batch(self, idx: Tensor, views: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """(V_c ``[b, D]``, stem ``[b, L, W]``, labels ``[b]``) of images ``idx``, one view each."""
        i = idx.to(self.device)
        image = self.image[i, views.to(self.device)] if self.image.dim() == 3 else self.image[i]
        return image, self.bank.get(idx, views), self.labels[i]

    @torch.no_grad()
    def accuracy(self, module: nn.Module, logits_fn: LogitsFn, batch_size: int) -> float:
        """Top-1 accuracy (%) of ``logits_fn`` on view 0 of every image."""
        hits = 0
        for start in range(0, len(self), batch_size):
            idx = torch.arange(start, min(start + batch_size, len(self)))
            image, stem, labels = self.batch(idx, torch.zeros_like(idx))
            hits += int((logits_fn(module, image, stem).argmax(1) == labels).sum())
        return 100.0 * hits / len(self)


def fit_on_dense(make_module: Callable[[], nn.Module], logits_fn: LogitsFn, train: DenseSplit, val: DenseSplit,
                 cfg: Any, node: Any, what: str) -> Tuple[RunResult, int]:
    """Train a fresh ``make_module()`` per setting of the grid ``node.LRS`` x ``node.WDS`` (an
    empty list means ``OPTIM.LR`` / ``OPTIM.WEIGHT_DECAY``) with cross-entropy on random cached
    views of ``train`` and CoOp's protocol (``fsclip.adapt.epochs.fit_epochs``: cfg.OPTIM, batch
    ``DATALOADER.TRAIN_X.BATCH_SIZE``, validation every ``node.EVAL_EVERY`` epochs, stop after
    ``node.PATIENCE`` validations without a gain if > 0). Returns the run best on ``val`` (its
    weights in ``state``) and its epoch."""
    seed = max(int(cfg.SEED), 0)
    batch = int(cfg.DATALOADER.TRAIN_X.BATCH_SIZE)
    eval_batch = max(1, int(cfg.DATALOADER.TEST.BATCH_SIZE))

    def run(params: Dict[str, Any]) -> RunResult:
        torch.manual_seed(seed)
        module = make_module()

        def batch_loss(idx: Tensor, views: Tensor) -> Tensor:
            image, stem, labels = train.batch(idx, views)
            return F.cross_entropy(logits_fn(module, image, stem), labels)

        return fit_epochs(module, batch_loss, len(train), train.num_views,
                          lambda: val.accuracy(module, logits_fn, eval_batch), cfg.OPTIM, params["lr"],
                          params["weight_decay"], batch, seed, int(node.EVAL_EVERY), int(node.PATIENCE), params)

    grid = {"lr": [float(x) for x in node.LRS] or [float(cfg.OPTIM.LR)],
            "weight_decay": [float(x) for x in node.WDS] or [float(cfg.OPTIM.WEIGHT_DECAY)]}
    per_epoch = steps_per_epoch(len(train), batch)
    print(f"{what}: {cfg.OPTIM.MAX_EPOCH} epochs x {per_epoch} batch(es) of {min(batch, len(train))} views per "
          f"setting, {len(grid['lr']) * len(grid['weight_decay'])} setting(s), validation every {node.EVAL_EVERY}")
    best = grid_search(grid, run)
    return best, best.step // per_epoch
