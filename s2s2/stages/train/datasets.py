"""What the trainer iterates: S2S2 pairs from the stack store, or baseline samples without one.

Both yield dicts with `original`, `mask`, `index`, `id` (and `stack_image`, `k` for S2S2). Data order
and every random draw derive from (seed, epoch, index), so a resumed run sees the same batches.

The pair reader reads exactly two images per visit (one inner chunk of `originals`, one of
`stack`) plus the mask. The store is opened lazily in each process (DataLoader worker): after a
`fork` the child opens its own handle. Local stores work with `fork`; fsspec stores (s3://) should
use `multiprocessing_context="spawn"`, since their event loop and HTTP sessions do not survive a fork.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from s2s2.pipeline.data.prepared import PreparedDataset
from s2s2.pipeline.errors import StoreError
from s2s2.pipeline.seeding import epoch_permutation, sample_rng
from s2s2.stages.train.augment import PairTransform
from s2s2.store.layout import to_unit_float
from s2s2.store.stack_store import StackStore


def draw_k(seed: int, epoch: int, index: int, choices: np.ndarray) -> tuple[int, np.random.Generator]:
    """Pick k uniformly among `choices` with a generator seeded by (seed, epoch, index); the same
    generator then drives the augmentation of that visit."""
    rng = np.random.default_rng([seed, epoch, index])
    return int(choices[rng.integers(len(choices))]), rng


class BaselineDataset(Dataset):
    """The baseline's samples: one split of a `PreparedDataset`, augmented like the S2S2 pairs."""

    def __init__(self, dataset: PreparedDataset, split: str, seed: int, transform: PairTransform | None) -> None:
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


class StackPairDataset(Dataset):
    """Pairs for the two-sample S2S2 objective from a complete (or `allow_incomplete`) store.

    With `allow_incomplete`, only samples with at least one done image are served, and k is drawn
    among that sample's done images (writers fill whole shards, so in practice all K or none).
    """

    def __init__(
        self,
        path: str | Path | Any,
        seed: int,
        transform: PairTransform | None = None,
        expected_fingerprint: str | None = None,
        allow_incomplete: bool = False,
        storage_options: dict[str, Any] | None = None,
    ):
        self.path = path
        self.seed = int(seed)
        self.transform = transform
        self.storage_options = storage_options
        self.epoch = 0
        store = StackStore.open(path, "r", storage_options)
        manifest = store.manifest
        if expected_fingerprint is not None and manifest.dataset_fingerprint != expected_fingerprint:
            raise StoreError(
                f"{path}: the stack store was made from another dataset (store fingerprint "
                f"{manifest.dataset_fingerprint[:12]}…, this dataset {expected_fingerprint[:12]}…); "
                "fix: point store.path at the stack made for this dataset, or re-create it with "
                "`s2s2 stack init --overwrite` and `s2s2 generate`")
        done = store.done_ledger()
        fraction = float(done.mean())
        if fraction < 1.0 and not allow_incomplete:
            raise StoreError(f"{path}: the stack is {100 * fraction:.1f}% generated "
                             f"({len(store.pending_shards())} of {store.num_shards} shards pending); "
                             "fix: finish `s2s2 generate`, or add `--set store.allow_incomplete=true` to train on the done samples only")
        self.samples = np.flatnonzero(done.any(axis=1))
        if len(self.samples) == 0:
            raise StoreError(f"{path}: no generated images yet; fix: run `s2s2 generate` first")
        self._choices = [np.flatnonzero(done[i]) for i in self.samples]
        self.k = manifest.k
        self.manifest = manifest
        self._ids = store.ids
        self._store: StackStore | None = None  # opened per process on first use
        self._pid = -1

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Draw new k's (and augmentations) for the next epoch; call before iterating."""
        self.epoch = int(epoch)

    def _handle(self) -> StackStore:
        if self._store is None or self._pid != os.getpid():
            self._store = StackStore.open(self.path, "r", self.storage_options, cache_shard_indexes=True)
            self._pid = os.getpid()
        return self._store

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_store"] = None  # spawned workers open their own handle
        return state

    def __getitem__(self, i: int) -> dict[str, Any]:
        index = int(self.samples[i])
        k, rng = draw_k(self.seed, self.epoch, index, self._choices[i])
        original, stack_image, mask = self._handle().read_pair(index, k)
        original, stack_image = to_unit_float(original), to_unit_float(stack_image)
        if self.transform is not None:
            original, stack_image, mask = self.transform(original, stack_image, mask, rng)
        return {
            "original": torch.from_numpy(np.ascontiguousarray(original, dtype=np.float32)),
            "stack_image": torch.from_numpy(np.ascontiguousarray(stack_image, dtype=np.float32)),
            "mask": torch.from_numpy(np.ascontiguousarray(mask).astype(np.int64)),
            "k": k,
            "index": index,
            "id": self._ids[index],
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
