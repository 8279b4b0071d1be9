"""The training samples on real stores: originals from the prepared data, one stack-image read per
visit, uniform reproducible k, lazy per-worker opening under fork, refusal of incomplete or foreign
stores, and the same originals and augmentation draws as the baseline."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from scipy import stats
from torch.utils.data import DataLoader
from zarr.abc.store import RangeByteRequest
from zarr.storage import LocalStore, WrapperStore

from s2s2.stages.train.augment import PairAugment
from s2s2.pipeline.config.train import AugmentConfig
from s2s2.pipeline.errors import StoreError
from s2s2.stages.train.datasets import BaselineDataset, StackPairDataset, collate_visits, draw_k
from s2s2.store.stack_store import StackStore
from test_store_support import fake_stack, synthetic_dataset

K = 4


class CountingStore(WrapperStore):
    """A real LocalStore underneath; records every `get` (key, byte range, bytes returned)."""

    def __init__(self, store):
        super().__init__(store)
        self.gets: list[tuple[str, object, int]] = []

    def _with_store(self, store):
        wrapped = type(self)(store)
        wrapped.gets = self.gets
        return wrapped

    async def get(self, key, prototype, byte_range=None):
        buffer = await self._store.get(key, prototype, byte_range)
        self.gets.append((key, byte_range, 0 if buffer is None else len(buffer)))
        return buffer


@pytest.fixture(scope="module")
def full_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("reader") / "s.zarr"
    ds = synthetic_dataset(n=24)  # 8 train samples
    store = StackStore.create(path, ds, k=K, shard_size=4)
    for shard in store.pending_shards():
        store.write_shard(shard, fake_stack(store.shard_samples(shard), K, (1, 16, 16)))
    return path, ds


def test_a_visit_reads_exactly_one_stack_image_from_the_store(full_store):
    path, ds = full_store
    counting = CountingStore(LocalStore(str(path), read_only=True))
    dataset = StackPairDataset(ds, counting, seed=3)  # reads metadata and every shard index, once
    counting.gets.clear()
    item = dataset[5]
    assert len(counting.gets) == 1  # the image's chunk, nothing else
    chunk_reads = {}
    for key, byte_range, _ in counting.gets:
        if isinstance(byte_range, RangeByteRequest):  # an inner chunk; the other gets are shard indexes
            array = key.split("/")[0]
            chunk_reads[array] = chunk_reads.get(array, 0) + 1
    assert chunk_reads == {"stack": 1}  # original and mask come from the prepared data
    assert not any(key.endswith("zarr.json") for key, _, _ in counting.gets)
    stack_bytes = sum(n for key, _, n in counting.gets if key.startswith("stack/"))
    shard_file = path / "stack" / "c" / "1" / "0" / "0" / "0" / "0"
    assert stack_bytes < shard_file.stat().st_size / K  # far less than the K images of the sample
    expected = StackStore.open(path).read_stack(item["index"], item["k"])
    assert item["stack_image"].dtype == torch.uint8  # handed over as stored; the trainer makes it float
    np.testing.assert_array_equal(item["stack_image"].numpy(), expected)
    counting.gets.clear()
    dataset[6]  # same shard (samples 4..7): the shard index is cached, one request for the image
    assert len(counting.gets) == 1 and all(isinstance(r, RangeByteRequest) for _, r, _ in counting.gets)


def test_a_batch_requests_its_stack_images_together_and_equals_its_visits_one_by_one(full_store):
    """`__getitems__` (what the DataLoader calls with a batch) sends the batch's chunk reads in one
    fetch and returns exactly the items single visits return; `collate_visits` stacks the images
    and masks (masks in their stored dtype) and keeps index, id and k as lists."""
    path, ds = full_store
    counting = CountingStore(LocalStore(str(path), read_only=True))
    dataset = StackPairDataset(ds, counting, seed=7, transform=PairAugment(AugmentConfig()))
    dataset.set_epoch(1)
    positions = [6, 1, 3, 0]
    singles = [dataset[i] for i in positions]
    source = dataset._reader.source
    fetches = []
    real_fetch = source.fetch
    source.fetch = lambda requests: fetches.append(len(requests)) or real_fetch(requests)
    batch_items = dataset.__getitems__(positions)
    assert fetches == [4]  # shard indexes known since construction: one fetch of the 4 chunks
    for single, item in zip(singles, batch_items):
        assert single.keys() == item.keys() and single["k"] == item["k"] and single["id"] == item["id"]
        for key in ("original", "stack_image", "mask"):
            assert torch.equal(single[key], item[key]), key
    batch = collate_visits(batch_items)
    assert batch["original"].shape == (4, 1, 16, 16) and batch["stack_image"].dtype == torch.uint8
    assert len(batch["original_photometric"]) == len(batch["stack_image_photometric"]) == 4  # drawn, not applied
    assert batch["mask"].dtype == torch.uint8 and batch["mask"].shape == (4, 16, 16)
    assert batch["k"] == [s["k"] for s in singles] and batch["index"] == [s["index"] for s in singles]
    assert batch["id"] == [s["id"] for s in singles]


def test_items_hold_the_right_pixels_types_and_shapes(full_store):
    path, ds = full_store
    dataset = StackPairDataset(ds, path, seed=0)
    store = StackStore.open(path)
    assert len(dataset) == store.n_samples
    item = dataset[2]
    index = ds.indices("train")[2]
    assert item["original"].dtype == torch.float32 and item["original"].shape == (1, 16, 16)
    assert item["mask"].dtype == torch.uint8 and item["mask"].shape == (16, 16)  # stored dtype; the trainer widens it
    assert item["id"] == store.ids[2] == ds.ids[index] and 0 <= item["k"] < K
    np.testing.assert_array_equal(item["mask"].numpy(), ds.masks[index])
    # the float32 original of the prepared data, not the store's uint8 copy
    np.testing.assert_array_equal(item["original"].numpy(), ds.images[index])
    assert not np.array_equal(item["original"].numpy(), store.read_original(2) / np.float32(255))


def test_k_is_uniform_and_reproducible(full_store):
    path, ds = full_store
    ks = np.array([draw_k(11, epoch, index, np.arange(K)) for epoch in range(500) for index in range(8)])
    counts = np.bincount(ks, minlength=K)
    assert stats.chisquare(counts).pvalue > 0.001, counts
    first, second = StackPairDataset(ds, path, seed=11), StackPairDataset(ds, path, seed=11)
    epochs = []
    for epoch in range(3):
        first.set_epoch(epoch)
        second.set_epoch(epoch)
        a = [first[i]["k"] for i in range(len(first))]
        assert a == [second[i]["k"] for i in range(len(second))]
        epochs.append(a)
    assert epochs[0] != epochs[1] or epochs[1] != epochs[2]  # a fresh draw per epoch
    first.set_epoch(0)
    assert [first[i]["k"] for i in range(len(first))] == epochs[0]
    assert [StackPairDataset(ds, path, seed=12)[i]["k"] for i in range(len(first))] != epochs[0]


def test_stack_k_draws_only_the_first_images_and_leaves_the_rest_of_the_visit_alone(full_store):
    path, ds = full_store
    store = StackStore.open(path)
    every, first_two = StackPairDataset(ds, path, seed=4), StackPairDataset(ds, path, seed=4, stack_k=2)
    assert first_two.provenance["ks_served"] == [0, 1] and first_two.provenance["k"] == K
    seen = set()
    for epoch in range(6):
        every.set_epoch(epoch)
        first_two.set_epoch(epoch)
        for i in range(len(first_two)):
            item, full = first_two[i], every[i]
            seen.add(item["k"])
            row = int(np.flatnonzero(store.source_indices == item["index"])[0])
            np.testing.assert_array_equal(item["stack_image"].numpy(), store.read_stack(row, item["k"]))
            np.testing.assert_array_equal(item["original"].numpy(), full["original"].numpy())
    assert seen == {0, 1}
    assert all(StackPairDataset(ds, path, seed=4, stack_k=1)[i]["k"] == 0 for i in range(len(first_two)))
    with pytest.raises(StoreError, match=f"train.stack_k=5, but the store holds K={K}.*between 1 and {K}"):
        StackPairDataset(ds, path, seed=4, stack_k=5)


def test_dataloader_with_two_forked_workers_matches_single_process(full_store):
    path, ds = full_store
    dataset = StackPairDataset(ds, path, seed=5, transform=PairAugment(AugmentConfig()))
    dataset.set_epoch(2)
    single = [dataset[i] for i in range(len(dataset))]
    loader = DataLoader(dataset, batch_size=3, num_workers=2, multiprocessing_context="fork", collate_fn=collate_visits)
    batches = list(loader)
    ks = [k for b in batches for k in b["k"]]
    assert ks == [s["k"] for s in single]
    originals = torch.cat([b["original"] for b in batches])
    stack_images = torch.cat([b["stack_image"] for b in batches])
    masks = torch.cat([b["mask"] for b in batches])
    torch.testing.assert_close(originals, torch.stack([s["original"] for s in single]))
    torch.testing.assert_close(stack_images, torch.stack([s["stack_image"] for s in single]))
    assert torch.equal(masks, torch.stack([s["mask"] for s in single]))


def test_a_pickled_dataset_carries_its_shard_indexes_and_reads_the_same_items(full_store):
    """What a spawned DataLoader worker receives: the reader's layouts and every shard index travel
    with the dataset, so the copy opens nothing and returns the same items."""
    path, ds = full_store
    dataset = StackPairDataset(ds, path, seed=9)
    copy = pickle.loads(pickle.dumps(dataset))
    assert copy._reader._arrays == {} and len(copy._reader._indexes) == 2  # 8 samples in shards of 4
    sent = []
    real_fetch = copy._reader.source.fetch
    copy._reader.source.fetch = lambda requests: sent.extend(r for _, r in requests) or real_fetch(requests)
    for i in range(len(dataset)):
        a, b = dataset[i], copy[i]
        assert a["k"] == b["k"] and torch.equal(a["stack_image"], b["stack_image"])
    assert len(sent) == len(dataset) and all(isinstance(r, RangeByteRequest) for r in sent)  # chunks only


def test_incomplete_and_foreign_stores_are_refused(tmp_path):
    ds = synthetic_dataset(n=24)
    path = tmp_path / "partial.zarr"
    store = StackStore.create(path, ds, k=K, shard_size=4)
    with pytest.raises(StoreError, match="no generated images"):
        StackPairDataset(ds, path, seed=0, allow_incomplete=True)
    store.write_shard(1, fake_stack(store.shard_samples(1), K, (1, 16, 16)))
    with pytest.raises(StoreError, match=r"50.0% generated.*`--set store.allow_incomplete=true`") as refused:
        StackPairDataset(ds, path, seed=0)
    assert "--allow-incomplete" not in str(refused.value)  # no such option: name the one that exists
    partial = StackPairDataset(ds, path, seed=0, allow_incomplete=True)
    assert len(partial) == 4 and sorted(partial[i]["index"] for i in range(4)) == [4, 5, 6, 7]
    other = synthetic_dataset(n=24, seed=9)
    with pytest.raises(StoreError, match="made from another dataset"):
        StackPairDataset(other, path, seed=0, allow_incomplete=True)


def test_a_store_of_another_split_is_refused(tmp_path):
    ds = synthetic_dataset(n=24)
    path = tmp_path / "val.zarr"
    store = StackStore.create(path, ds, k=2, shard_size=4, split="val")
    for shard in store.pending_shards():
        store.write_shard(shard, fake_stack(store.shard_samples(shard), 2, (1, 16, 16)))
    with pytest.raises(StoreError, match="holds stack images of the 'val' split, which validation reads and training never"):
        StackPairDataset(ds, path, seed=0)


def test_s2s2_visits_match_the_baseline_and_k_and_stack_photometrics_draw_their_own_streams(full_store):
    """Same seed: the same samples in the same order, the same original and mask pixel for pixel
    (geometry and photometrics), whichever k is drawn and however the stack image is jittered."""
    path, ds = full_store
    augment = PairAugment(AugmentConfig(hflip_p=0.5, vflip_p=0.5, affine_p=1.0, photometric_p=1.0),
                          location_scale=True)
    baseline, pairs = BaselineDataset(ds, seed=4, transform=augment), StackPairDataset(ds, path, seed=4, transform=augment)
    assert pairs.samples.tolist() == baseline.samples.tolist() == ds.indices("train")
    no_stack_jitter = StackPairDataset(ds, path, seed=4, transform=PairAugment(
        augment.cfg.model_copy(update={"stack_photometric": False}), location_scale=True))
    for epoch in range(3):
        for dataset in (baseline, pairs, no_stack_jitter):
            dataset.set_epoch(epoch)
        for i in range(len(baseline)):
            a, b, c = baseline[i], pairs[i], no_stack_jitter[i]
            assert a["index"] == b["index"] == c["index"] and "stack_image" not in a
            assert torch.equal(a["original"], b["original"]) and torch.equal(a["original"], c["original"])
            assert torch.equal(a["mask"], b["mask"]) and torch.equal(a["mask"], c["mask"])
            assert b["k"] == c["k"] and not torch.equal(b["stack_image"], c["stack_image"])


def test_augmentation_in_the_loader_hands_over_float32_with_every_draw_applied(full_store):
    """`augment.on_device: false`: the visit is the whole augmentation of the loader, float32 in [0, 1],
    pixel for pixel what the transform gives the stored stack image scaled to [0, 1] (noise included)."""
    path, ds = full_store
    cfg = AugmentConfig(hflip_p=0.5, affine_p=1.0, photometric_p=1.0, noise_std=0.05, on_device=False)
    pairs = StackPairDataset(ds, path, seed=3, transform=PairAugment(cfg))
    plain = StackPairDataset(ds, path, seed=3)
    store = StackStore.open(path)
    from s2s2.pipeline.seeding import sample_rng
    from s2s2.stages.train.datasets import ORIGINAL_STREAM, STACK_STREAM

    for i in range(len(pairs)):
        item, raw = pairs[i], plain[i]
        assert item["stack_image"].dtype == torch.float32 and "original_photometric" not in item
        index = item["index"]
        stored = store.read_stack(i, item["k"]).astype(np.float32) * np.float32(1 / 255)
        original, stack_image, mask = PairAugment(cfg)(
            np.asarray(ds.images[index], dtype=np.float32), stored, ds.masks[index],
            sample_rng(3, 0, index, ORIGINAL_STREAM), sample_rng(3, 0, index, STACK_STREAM))
        assert raw["k"] == item["k"]
        np.testing.assert_array_equal(item["original"].numpy(), original)
        np.testing.assert_array_equal(item["stack_image"].numpy(), stack_image)
        np.testing.assert_array_equal(item["mask"].numpy(), mask)
