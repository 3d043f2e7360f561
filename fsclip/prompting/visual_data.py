"""Training images as fixed augmented views, with the frozen encoder's features of each view.

Methods that train through CLIP's image encoder (visual prompts) must run it on pixels every
step, but some also need what the *frozen* encoder says about the same image: DPT's CAVPT picks
its top-K classes from zero-shot CLIP's scores of the training view, and the official VLP adds
a loss on zero-shot image features. Recomputing that frozen pass every step costs a forward of
the whole encoder per image per epoch. Instead, each training image gets V augmented views with
fixed seeds (``fsclip.adapt.extract.make_view``: the same views the frozen-feature methods
cache), the frozen features of every view are computed once and kept in the shared feature
cache (``fsclip.adapt.cache.FeatureCache``, reused by later runs, seeds, shots and methods), and
each epoch shows every image once, as one of its V views drawn at random.

Compared with Dassl's loader (a fresh random crop and flip at every step) the augmentation draws
from V views per image instead of infinitely many; ``TRAIN_VIEWS`` sets V.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, List, Sequence, Tuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from fsclip.adapt.cache import FeatureCache
from fsclip.adapt.extract import describe_transform, extract_views, make_view
from fsclip.engine.data.images import read_image


class FixedViewDataset(Dataset):
    """Item ``(i, v)`` -> view v of image i as a Dassl batch item ``{img, label, domain, impath,
    index, view}`` (``index`` is i, the position in ``items``)."""

    def __init__(self, items: Sequence[Any], transform: Callable, seed: int, root: str = "") -> None:
        self.items, self.transform, self.seed, self.root = list(items), transform, seed, root

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: Tuple[int, int]) -> Dict[str, Any]:
        i, v = key
        item = self.items[i]
        img = make_view(read_image(item.impath), self.transform, item.impath, v, self.seed, self.root)
        return {"img": img, "label": item.label, "domain": item.domain, "impath": item.impath,
                "index": i, "view": v}


class EpochViewSampler(Sampler):
    """Every epoch: each image once, in a random order, as one of its ``views`` views drawn at
    random (torch's global RNG, so a run with a fixed seed draws the same sequence)."""

    def __init__(self, n: int, views: int) -> None:
        self.n, self.views = n, views

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        order = torch.randperm(self.n).tolist()
        views = torch.randint(self.views, (self.n,)).tolist()
        return iter([(i, views[i]) for i in order])


def fixed_view_loader(items: Sequence[Any], transform: Callable, views: int, seed: int, batch_size: int,
                      num_workers: int, root: str = "", pin_memory: bool = False) -> DataLoader:
    """A training loader over fixed views (drop_last as Dassl's: only when there is a full batch)."""
    return DataLoader(FixedViewDataset(items, transform, seed, root), batch_size=batch_size,
                      sampler=EpochViewSampler(len(items), views), num_workers=num_workers,
                      drop_last=len(items) >= batch_size, pin_memory=pin_memory)


def frozen_view_features(cache: FeatureCache, encode: Callable[[Tensor], Tensor], encoder_id: str,
                         impaths: List[str], transform: Callable, views: int, seed: int, *,
                         batch_size: int, num_workers: int, device: torch.device, store_dtype: torch.dtype,
                         prec: str, root: str = "", label: str = "") -> Tensor:
    """``encode`` (a frozen image encoder, ``[B, 3, H, W] -> [B, D]``) of every view of every
    image, ``[N, views, D]`` on the CPU, through the feature cache (computed once per image).

    ``encoder_id`` identifies the encoder's weights and output (it names the cache space with
    the transform, views, seed, storage dtype and precision).
    """
    space = {"backbone": encoder_id, "trunk": "clip-image-feature", "transform": describe_transform(transform),
             "views": views, "view_seed": seed, "dtype": str(store_dtype), "prec": prec}

    def compute(paths: List[str]) -> Tensor:
        return extract_views(encode, paths, transform, views, seed, batch_size, num_workers, device, store_dtype,
                             root, desc=f"Frozen image features of {label} ({len(paths)} images x {views} views)")

    return cache.get(space, impaths, compute, label=label)
