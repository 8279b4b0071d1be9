"""What the trainer iterates: the training split of a `PreparedDataset`, with (S2S2) or without
(baseline) one stack image per visit from the stack store.

Matched runs: both methods take the original and its mask from the same prepared arrays (float32),
visit the samples in the same order, and draw every random number from per-visit generators seeded
by (seed, epoch, index, stream), one stream per purpose:
- `ORIGINAL_STREAM`: the shared geometry and the original's photometrics (and location-scale, GIN);
- `K_STREAM`: which stack image k this visit reads;
- `STACK_STREAM`: the stack image's own photometrics.
So the baseline and S2S2 with the same seed see the same originals, augmented the same way; only
the stack image is extra. A resumed run sees the same batches.

The stack image is the only read from the store per visit (one inner chunk); a DataLoader batch
requests its stack images together (`__getitems__`: one trip to an object store per batch). The
batch goes to the trainer through `collate_visits`: stack images and masks in their stored dtype
(uint8: a quarter of the bytes of float32), converted to float by the trainer on its device
(`augment.device_images`), the photometric draws and the bookkeeping (index, id, k) as plain lists,
because every tensor a worker hands over costs a shared-memory segment and a file-descriptor
transfer, and its bytes a copy (measured in `bench/store_read.py`: the hand-over, not the read,
bounded the loader). With location-scale or GIN, which act on the jittered original, the dataset
applies the whole augmentation and hands over float32 images. The workers
read through the dataset's shard reader, which carries the layouts and shard indexes along and
rebuilds its connection to an object store in each new process.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, default_collate

from s2s2.pipeline.data.prepared import PreparedDataset
from s2s2.pipeline.errors import StoreError
from s2s2.pipeline.seeding import epoch_permutation, sample_rng
from s2s2.stages.train.augment import PairAugment, PairTransform
from s2s2.store.layout import to_unit_float
from s2s2.store.manifest import VAL_SPLIT
from s2s2.store.provenance import store_provenance
from s2s2.store.stack_store import StackStore

ORIGINAL_STREAM, K_STREAM, STACK_STREAM = 0, 1, 2
logger = logging.getLogger(__name__)
BATCHED_KEYS = ("original", "stack_image", "mask")  # stacked into one tensor each; the rest stays a list


def collate_visits(items: list[dict[str, Any]]) -> dict[str, Any]:
    """One batch from its visits: the image and mask tensors stacked (in shared memory inside a
    worker, as torch's default collate does), index, id and k as lists."""
    return {key: default_collate([item[key] for item in items]) if key in BATCHED_KEYS else [item[key] for item in items]
            for key in items[0]}


def draw_k(seed: int, epoch: int, index: int, choices: np.ndarray) -> int:
    """k uniformly among `choices`, from the visit's own k stream (it leaves the augmentation alone)."""
    return int(choices[sample_rng(seed, epoch, index, K_STREAM).integers(len(choices))])


class BaselineDataset(Dataset):
    """The training split of a `PreparedDataset`: original and mask per visit, augmented."""

    def __init__(self, dataset: PreparedDataset, seed: int, transform: PairTransform | None = None) -> None:
        self.dataset = dataset
        self.samples = np.asarray(dataset.indices("train"), dtype=np.int64)
        self.seed = int(seed)
        self.transform = transform
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Draw new augmentations (and k's) for the next epoch; call before iterating."""
        self.epoch = int(epoch)

    def stack_images(self, indices: list[int]) -> list[tuple[np.ndarray | None, dict[str, Any]]]:
        """Each visit's stack image and what to report about it (none for the baseline)."""
        return [(None, {}) for _ in indices]

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.__getitems__([i])[0]

    def __getitems__(self, positions: list[int]) -> list[dict[str, Any]]:
        """The visits of one batch (the DataLoader calls this with a whole batch), their stack
        images requested together."""
        indices = [int(self.samples[i]) for i in positions]
        return [self._visit(index, stack_image, extra)
                for index, (stack_image, extra) in zip(indices, self.stack_images(indices), strict=True)]

    def _visit(self, index: int, stack_image: np.ndarray | None, extra: dict[str, Any]) -> dict[str, Any]:
        """One visit; `stack_image` in its stored dtype. Images go out in their own dtype with the
        photometric draws beside them, or (a transform that cannot defer them) as float32."""
        original = np.asarray(self.dataset.images[index], dtype=np.float32)
        mask = self.dataset.masks[index]
        draws: dict[str, Any] = {}
        if self.transform is not None:
            rng = sample_rng(self.seed, self.epoch, index, ORIGINAL_STREAM)
            stack_rng = sample_rng(self.seed, self.epoch, index, STACK_STREAM) if stack_image is not None else None
            if isinstance(self.transform, PairAugment) and self.transform.can_defer:
                original, stack_image, mask, draw, stack_draw = self.transform.defer(original, stack_image, mask, rng,
                                                                                     stack_rng)
                draws = {"original_photometric": draw, **({"stack_image_photometric": stack_draw}
                                                          if stack_image is not None else {})}
            else:
                if stack_image is not None:
                    stack_image = to_unit_float(stack_image)
                original, stack_image, mask = self.transform(original, stack_image, mask, rng, stack_rng)
        item = {
            "original": torch.from_numpy(np.ascontiguousarray(original)),
            "mask": torch.from_numpy(np.ascontiguousarray(mask)),  # stored dtype; the trainer widens it
            "index": index,
            "id": self.dataset.ids[index],
            **draws,
            **extra,
        }
        if stack_image is not None:
            item["stack_image"] = torch.from_numpy(np.ascontiguousarray(stack_image))  # stored dtype
        return item


class StackPairDataset(BaselineDataset):
    """The baseline's visits plus one stack image k of the visited sample, from the stack store.

    The store must be made from this dataset (fingerprint) and hold every training sample; with
    `allow_incomplete`, only training samples with at least one done image are served, and k is drawn
    among that sample's done images (writers fill whole shards, so in practice all K or none).
    `stack_k` limits the draw to the first `stack_k` of the K images (None: all K).
    """

    def __init__(
        self,
        dataset: PreparedDataset,
        path: str | Path | Any,
        seed: int,
        transform: PairTransform | None = None,
        allow_incomplete: bool = False,
        storage_options: dict[str, Any] | None = None,
        stack_k: int | None = None,
    ):
        super().__init__(dataset, seed, transform)
        store = StackStore.open(path, "r", storage_options, cache_shard_indexes=True)
        manifest = store.manifest
        if stack_k is not None and not 1 <= stack_k <= store.k:
            raise StoreError(f"{path}: train.stack_k={stack_k}, but the store holds K={store.k} images per mask; "
                             f"fix: set train.stack_k between 1 and {store.k}, or leave it unset to draw from all K")
        k_drawn = store.k if stack_k is None else stack_k
        if manifest.split == VAL_SPLIT:
            raise StoreError(f"{path}: this store holds stack images of the {VAL_SPLIT!r} split, which validation "
                             "reads and training never does; fix: point store.path at the training split's store "
                             "(store.val_path names the validation one)")
        fingerprint = dataset.fingerprint()
        if manifest.dataset_fingerprint != fingerprint:
            raise StoreError(
                f"{path}: the stack store was made from another dataset (store fingerprint "
                f"{manifest.dataset_fingerprint[:12]}…, this dataset {fingerprint[:12]}…); "
                "fix: point store.path at the stack made for this dataset, or re-create it with "
                "`s2s2 stack init --overwrite` and `s2s2 generate`")
        done = store.current_done()[:, :k_drawn]  # images of the generator in force only, never a replaced one's
        fraction = float(done.mean())
        if fraction < 1.0 and not allow_incomplete:
            raise StoreError(f"{path}: the stack is {100 * fraction:.1f}% generated "
                             f"({len(store.pending_shards())} of {store.num_shards} shards pending); "
                             "fix: finish `s2s2 generate`, or add `--set store.allow_incomplete=true` to train on the "
                             "done samples only")
        row_of = {int(index): row for row, index in enumerate(store.source_indices)}
        missing = [int(i) for i in self.samples if int(i) not in row_of]
        if missing:
            raise StoreError(f"{path}: the store holds split {manifest.split!r}, which lacks {len(missing)} of the "
                             f"{len(self.samples)} training samples (e.g. {dataset.ids[missing[0]]}); fix: create the "
                             "store from the training split (store.split: train) with `s2s2 stack init --overwrite`")
        served = [i for i in self.samples if done[row_of[int(i)]].any()]
        if not served:
            raise StoreError(f"{path}: no generated images yet; fix: run `s2s2 generate` first")
        self._rows = {int(i): row_of[int(i)] for i in served}
        self._choices = {int(i): np.flatnonzero(done[row_of[int(i)]]) for i in served}
        ks_served = sorted({int(k) for ks in self._choices.values() for k in ks})
        if sum(len(ks) for ks in self._choices.values()) < len(self.samples) * k_drawn:
            logger.warning(f"{path}: store.allow_incomplete serves {len(served)} of {len(self.samples)} training "
                           f"samples (ks {ks_served} of {k_drawn}, not every image): this run is no longer "
                           "matched to its baseline (which sees every sample) nor to a run on the complete stack")
        self.provenance = store_provenance(store, served, ks_served, len(self.samples))
        self.samples = np.asarray(served, dtype=np.int64)
        self.manifest = manifest
        # The reader travels to the DataLoader workers (forked or pickled) with every served shard's
        # index, fetched here in one trip: a worker sends only its chunk requests, and the workers
        # the trainer starts each epoch open nothing (0.16-0.5 s per worker on S3 with 10 ms latency).
        self._reader = store.image_reader()
        first_rows = sorted({row - row % manifest.shard_size for row in self._rows.values()})
        self._reader.locate([("stack", (row, 0)) for row in first_rows])

    def stack_images(self, indices: list[int]) -> list[tuple[np.ndarray | None, dict[str, Any]]]:
        """Stack image k of each dataset sample (k from the visit's k stream), in the store's dtype,
        all requested from the store together."""
        ks = [draw_k(self.seed, self.epoch, index, self._choices[index]) for index in indices]
        images = self._reader.read([("stack", (self._rows[index], k)) for index, k in zip(indices, ks, strict=True)])
        return [(image, {"k": k}) for image, k in zip(images, ks, strict=True)]


def batches_per_epoch(n: int, batch_size: int, drop_last: bool) -> int:
    """Optimisation steps of one pass over `n` samples: the last partial batch dropped or trained on."""
    return n // batch_size if drop_last else -(-n // batch_size)


class EpochBatchSampler(Sampler[list[int]]):
    """Batches of one epoch in the (seed, epoch) order, from `first_batch` on; rank r of a world of
    size w takes items r, r+w, ... of each global batch. The last incomplete batch is dropped, or with
    `drop_last=False` trained on (padded from the epoch's start to a multiple of w, so that every rank
    takes part, as torch's DistributedSampler pads)."""

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, first_batch: int = 0,
                 rank: int = 0, world_size: int = 1, drop_last: bool = True) -> None:
        self.order = epoch_permutation(seed, epoch, n)
        self.batch_size = batch_size
        self.first_batch = first_batch
        self.rank = rank
        self.world_size = world_size
        self.batches = batches_per_epoch(n, batch_size, drop_last)

    def __len__(self) -> int:
        return max(0, self.batches - self.first_batch)

    def __iter__(self) -> Iterator[list[int]]:
        for b in range(self.first_batch, self.batches):
            batch = self.order[b * self.batch_size:(b + 1) * self.batch_size]
            if len(batch) % self.world_size:
                batch = np.concatenate([batch, self.order[:self.world_size - len(batch) % self.world_size]])
            yield [int(i) for i in batch[self.rank::self.world_size]]
