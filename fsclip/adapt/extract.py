"""Run the frozen trunk G over a split, once per image and view, with deterministic views."""

from __future__ import annotations

import hashlib
import os.path as osp
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from fsclip.engine.data.images import read_image


def view_seed(impath: str, view: int, seed: int, root: str = "") -> int:
    """A seed for view ``view`` of an image: stable across processes and machines (the path is
    taken relative to ``root`` when given)."""
    rel = osp.relpath(impath, root) if root else impath
    digest = hashlib.sha256(f"{rel}|{view}|{seed}".encode()).hexdigest()
    return int(digest[:15], 16)


def make_view(img: Any, transform: Callable, impath: str, view: int, seed: int, root: str = "") -> Tensor:
    """View ``view`` of an image: ``transform(img)`` under the view's fixed seed (the global RNG is
    left as it was). Depends only on the image path (relative to ``root``), ``view`` and ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(view_seed(impath, view, seed, root))
        return transform(img)


class ViewDataset(Dataset):
    """Item i -> ``[V, 3, H, W]``: V views of image i; view v is ``transform`` under a fixed seed
    (the test transform with V = 1 is just the deterministic test view)."""

    def __init__(self, impaths: Sequence[str], transform: Callable, views: int = 1, seed: int = 0,
                 root: str = "") -> None:
        self.impaths = list(impaths)
        self.transform = transform
        self.views = views
        self.seed = seed
        self.root = root

    def __len__(self) -> int:
        return len(self.impaths)

    def __getitem__(self, i: int) -> Tensor:
        img = read_image(self.impaths[i])
        return torch.stack([make_view(img, self.transform, self.impaths[i], v, self.seed, self.root)
                            for v in range(self.views)])


@torch.no_grad()
def extract_views(trunk: Callable[[Tensor], Tensor], impaths: Sequence[str], transform: Callable, views: int,
                  seed: int, batch_size: int, num_workers: int, device: torch.device,
                  store_dtype: torch.dtype = torch.float16, root: str = "", desc: str = "") -> Tensor:
    """``trunk`` over every image and view: ``[N, V, *trunk_shape]`` in ``store_dtype`` on the CPU."""
    ds = ViewDataset(impaths, transform, views, seed, root)
    per_batch = max(1, batch_size // max(views, 1))
    loader = DataLoader(ds, batch_size=per_batch, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    out: Optional[Tensor] = None
    start = 0
    for batch in tqdm(loader, desc=desc or "Extracting features", unit="batch"):
        b, v = batch.shape[:2]
        dense = trunk(batch.flatten(0, 1).to(device))  # [b*V, ...]
        dense = dense.reshape(b, v, *dense.shape[1:]).to("cpu", store_dtype)
        if out is None:
            out = torch.empty((len(ds), v, *dense.shape[2:]), dtype=store_dtype)
        out[start:start + b] = dense
        start += b
    assert out is not None
    return out


def describe_transform(transform: Any) -> str:
    """A stable text signature of a torchvision transform pipeline (part of cache keys)."""
    return repr(transform).replace("\n", " ")


def labels_of(items: Sequence[Any]) -> Tensor:
    return torch.tensor([int(d.label) for d in items], dtype=torch.long)


def impaths_of(items: Sequence[Any]) -> List[str]:
    return [d.impath for d in items]


def view_batches(n: int, views: int, batch_size: int, seed: int) -> Callable[[], Tuple[List[int], Tensor]]:
    """A few-shot loader over cached views: each call gives ``(images, views)`` for one batch,
    ``batch_size`` image indices from a reshuffled order (epoch after epoch) and one random view
    of each. The same ``seed`` gives the same sequence (every setting of a grid sees the same
    batches)."""
    gen = torch.Generator().manual_seed(seed)
    order: List[int] = []

    def next_batch() -> Tuple[List[int], Tensor]:
        nonlocal order
        if len(order) < batch_size:
            order = order + torch.randperm(n, generator=gen).tolist()
        idx, order = order[:batch_size], order[batch_size:]
        return idx, torch.randint(views, (len(idx),), generator=gen)

    return next_batch
