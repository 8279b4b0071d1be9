"""The pair reader on real stores: two image reads per visit, uniform reproducible k, lazy
per-worker opening under fork, refusal of incomplete or foreign stores."""

from __future__ import annotations

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
from s2s2.stages.train.datasets import StackPairDataset, draw_k
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


def test_a_visit_reads_exactly_two_images_and_the_mask(full_store):
    path, _ = full_store
    counting = CountingStore(LocalStore(str(path), read_only=True))
    dataset = StackPairDataset(counting, seed=3)
    dataset[0]  # warm: array metadata is read once per handle
    counting.gets.clear()
    item = dataset[5]
    chunk_reads = {}
    for key, byte_range, _ in counting.gets:
        if isinstance(byte_range, RangeByteRequest):  # an inner chunk; the other gets are shard indexes
            array = key.split("/")[0]
            chunk_reads[array] = chunk_reads.get(array, 0) + 1
    assert chunk_reads == {"originals": 1, "stack": 1, "masks": 1}
    assert not any(key.endswith("zarr.json") for key, _, _ in counting.gets)
    stack_bytes = sum(n for key, _, n in counting.gets if key.startswith("stack/"))
    shard_file = path / "stack" / "c" / "1" / "0" / "0" / "0" / "0"
    assert stack_bytes < shard_file.stat().st_size / K  # far less than the K images of the sample
    expected = StackStore.open(path).read_stack(item["index"], item["k"])
    np.testing.assert_allclose(item["stack_image"].numpy(), expected / 255.0, atol=1e-6)
    counting.gets.clear()
    dataset[6]  # same shard (samples 4..7): the shard indexes are cached, one request per image
    assert len(counting.gets) == 3 and all(isinstance(r, RangeByteRequest) for _, r, _ in counting.gets)


def test_items_hold_the_right_pixels_types_and_shapes(full_store):
    path, ds = full_store
    dataset = StackPairDataset(path, seed=0, expected_fingerprint=ds.fingerprint())
    store = StackStore.open(path)
    assert len(dataset) == store.n_samples
    item = dataset[2]
    assert item["original"].dtype == torch.float32 and item["original"].shape == (1, 16, 16)
    assert item["mask"].dtype == torch.int64 and item["mask"].shape == (16, 16)
    assert item["id"] == store.ids[2] and 0 <= item["k"] < K
    np.testing.assert_array_equal(item["mask"].numpy(), ds.masks[ds.indices("train")[2]])
    np.testing.assert_allclose(item["original"].numpy(), store.read_original(2) / 255.0, atol=1e-6)
    assert 0.0 <= float(item["original"].min()) and float(item["original"].max()) <= 1.0


def test_k_is_uniform_and_reproducible(full_store):
    path, _ = full_store
    ks = np.array([draw_k(11, epoch, index, np.arange(K))[0] for epoch in range(500) for index in range(8)])
    counts = np.bincount(ks, minlength=K)
    assert stats.chisquare(counts).pvalue > 0.001, counts
    first, second = StackPairDataset(path, seed=11), StackPairDataset(path, seed=11)
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
    assert [StackPairDataset(path, seed=12)[i]["k"] for i in range(len(first))] != epochs[0]


def test_dataloader_with_two_forked_workers_matches_single_process(full_store):
    path, _ = full_store
    dataset = StackPairDataset(path, seed=5, transform=PairAugment(AugmentConfig()))
    dataset.set_epoch(2)
    single = [dataset[i] for i in range(len(dataset))]
    assert dataset._store is not None  # opened lazily in this process by the reads above
    loader = DataLoader(dataset, batch_size=3, num_workers=2, multiprocessing_context="fork")
    batches = list(loader)
    ks = torch.cat([b["k"] for b in batches]).tolist()
    assert ks == [s["k"] for s in single]
    originals = torch.cat([b["original"] for b in batches])
    stack_images = torch.cat([b["stack_image"] for b in batches])
    masks = torch.cat([b["mask"] for b in batches])
    torch.testing.assert_close(originals, torch.stack([s["original"] for s in single]))
    torch.testing.assert_close(stack_images, torch.stack([s["stack_image"] for s in single]))
    assert torch.equal(masks, torch.stack([s["mask"] for s in single]))


def test_incomplete_and_foreign_stores_are_refused(tmp_path):
    ds = synthetic_dataset(n=24)
    path = tmp_path / "partial.zarr"
    store = StackStore.create(path, ds, k=K, shard_size=4)
    with pytest.raises(StoreError, match="no generated images"):
        StackPairDataset(path, seed=0, allow_incomplete=True)
    store.write_shard(1, fake_stack(store.shard_samples(1), K, (1, 16, 16)))
    with pytest.raises(StoreError, match=r"50.0% generated.*`--set store.allow_incomplete=true`") as refused:
        StackPairDataset(path, seed=0)
    assert "--allow-incomplete" not in str(refused.value)  # no such option: name the one that exists
    partial = StackPairDataset(path, seed=0, allow_incomplete=True)
    assert len(partial) == 4 and sorted(partial[i]["index"] for i in range(4)) == [4, 5, 6, 7]
    other = synthetic_dataset(n=24, seed=9)
    with pytest.raises(StoreError, match="made from another dataset"):
        StackPairDataset(path, seed=0, allow_incomplete=True, expected_fingerprint=other.fingerprint())
