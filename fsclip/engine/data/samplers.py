"""Samplers selectable by name in DATALOADER.*.SAMPLER."""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Iterator, List, Sequence

from torch.utils.data import RandomSampler, Sampler, SequentialSampler


class RandomClassSampler(Sampler):
    """Batches of ``batch_size // n_ins`` classes with ``n_ins`` images each."""

    def __init__(self, data_source: Sequence, batch_size: int, n_ins: int) -> None:
        if batch_size < n_ins:
            raise ValueError(f"batch_size={batch_size} must be >= N_INS={n_ins}")
        self.data_source = data_source
        self.batch_size = batch_size
        self.n_ins = n_ins
        self.ncls_per_batch = batch_size // n_ins
        self.index_dic = defaultdict(list)
        for index, item in enumerate(data_source):
            self.index_dic[item.label].append(index)
        self.labels = list(self.index_dic.keys())
        if len(self.labels) < self.ncls_per_batch:
            raise ValueError(
                f"RandomClassSampler needs >= {self.ncls_per_batch} classes, found {len(self.labels)}"
            )
        self.length = len(list(self.__iter__()))

    def __iter__(self) -> Iterator[int]:
        batch_idxs_dict = defaultdict(list)
        for label in self.labels:
            idxs = list(self.index_dic[label])
            if len(idxs) < self.n_ins:
                idxs = random.choices(idxs, k=self.n_ins)
            random.shuffle(idxs)
            batch = []
            for idx in idxs:
                batch.append(idx)
                if len(batch) == self.n_ins:
                    batch_idxs_dict[label].append(batch)
                    batch = []
        avai_labels = list(self.labels)
        final: List[int] = []
        while len(avai_labels) >= self.ncls_per_batch:
            for label in random.sample(avai_labels, self.ncls_per_batch):
                final.extend(batch_idxs_dict[label].pop(0))
                if not batch_idxs_dict[label]:
                    avai_labels.remove(label)
        return iter(final)

    def __len__(self) -> int:
        return self.length


AVAI_SAMPLERS = ["RandomSampler", "SequentialSampler", "RandomClassSampler"]


def build_sampler(sampler_type: str, cfg=None, data_source=None, batch_size: int = 32,
                  n_domain: int = 0, n_ins: int = 16) -> Sampler:
    if sampler_type == "RandomSampler":
        return RandomSampler(data_source)
    if sampler_type == "SequentialSampler":
        return SequentialSampler(data_source)
    if sampler_type == "RandomClassSampler":
        return RandomClassSampler(data_source, batch_size, n_ins)
    raise ValueError(f'Unknown sampler "{sampler_type}" in DATALOADER.*.SAMPLER; choose from {AVAI_SAMPLERS}')
