"""What the trainer iterates: S2S2 pairs from the stack store, or baseline samples without one.

Both yield dicts with `original`, `mask`, `index`, `id` (and `stack_image`, `k` for S2S2). Data order
and every random draw derive from (seed, epoch, index), so a resumed run sees the same batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from s2s2.pipeline.augment import PairAugment
from s2s2.pipeline.data.prepared import PreparedDataset
from s2s2.pipeline.location_scale import global_location_scale
from s2s2.pipeline.seeding import epoch_permutation, sample_rng


class OriginalAugment:
    """`PairAugment`, then (optionally) SLAug's global location-scale remap of the original only."""

    def __init__(self, pair_augment: PairAugment, location_scale: bool) -> None:
        self.pair_augment = pair_augment
        self.location_scale = location_scale

    def __call__(self, original: np.ndarray, stack_image: np.ndarray | None, mask: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        original, stack_image, mask = self.pair_augment(original, stack_image, mask, rng)
        if self.location_scale:
            original = global_location_scale(original, rng)
        return original, stack_image, mask


class BaselineDataset(Dataset):
    """The baseline's samples: one split of a `PreparedDataset`, augmented like the S2S2 pairs."""

    def __init__(self, dataset: PreparedDataset, split: str, seed: int, transform: OriginalAugment | None) -> None:
        self.dataset = dataset
        self.samples = np.asarray(dataset.indices(split))
        self.seed = seed
        self.transform = transform
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Draw new augmentations for the next epoch."""
        self.epoch = int(epoch)

    def __getitem__(self, i: int) -> dict[str, Any]:
        index = int(self.samples[i])
        original = self.dataset.images[index].astype(np.float32)
        mask = self.dataset.masks[index]
        if self.transform is not None:
            original, _, mask = self.transform(original, None, mask, sample_rng(self.seed, self.epoch, index))
        return {
            "original": torch.from_numpy(np.ascontiguousarray(original, dtype=np.float32)),
            "mask": torch.from_numpy(np.ascontiguousarray(mask).astype(np.int64)),
            "index": index,
            "id": self.dataset.ids[index],
        }


class EpochBatchSampler(Sampler[list[int]]):
    """Batches of one epoch in the (seed, epoch) order, from `first_batch` on; rank r of a world of
    size w takes items r, r+w, ... of each global batch. The last incomplete batch is dropped."""

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, first_batch: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        self.order = epoch_permutation(seed, epoch, n)
        self.batch_size = batch_size
        self.first_batch = first_batch
        self.rank = rank
        self.world_size = world_size

    def __len__(self) -> int:
        return max(0, len(self.order) // self.batch_size - self.first_batch)

    def __iter__(self) -> Iterator[list[int]]:
        for b in range(self.first_batch, len(self.order) // self.batch_size):
            batch = self.order[b * self.batch_size:(b + 1) * self.batch_size]
            yield [int(i) for i in batch[self.rank::self.world_size]]
