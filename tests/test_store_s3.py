"""The store on s3:// against moto's S3 server on 127.0.0.1 (a real HTTP server, real s3fs client)."""

from __future__ import annotations

import numpy as np
import pytest

from s2s2.pipeline.errors import StoreError
from s2s2.store.inspect import bytes_on_disk, summarise, verify
from s2s2.stages.train.datasets import StackPairDataset
from s2s2.store.stack_store import StackStore
from test_store_support import moto_s3, fake_stack, synthetic_dataset


@pytest.fixture(scope="module")
def s3_options():
    with moto_s3("s2s2-test") as options:
        yield options


def test_create_write_and_read_pairs_on_s3(s3_options):
    url = "s3://s2s2-test/runs/stack.zarr"
    ds = synthetic_dataset(n=18)  # 6 train samples, 2 shards of 4
    store = StackStore.create(url, ds, k=2, shard_size=4, storage_options=s3_options)
    with pytest.raises(StoreError, match=r"66.7% generated"):
        store.write_shard(0, fake_stack(store.shard_samples(0), 2, (1, 16, 16)))
        StackPairDataset(ds, url, seed=0, storage_options=s3_options)
    store.write_shard(1, fake_stack(store.shard_samples(1), 2, (1, 16, 16)))

    reopened = StackStore.open(url, storage_options=s3_options)
    assert reopened.pending_shards() == [] and reopened.ids == [ds.ids[i] for i in ds.indices("train")]
    np.testing.assert_array_equal(reopened.read_shard_stack(1), fake_stack(range(4, 6), 2, (1, 16, 16)))
    dataset = StackPairDataset(ds, url, seed=1, storage_options=s3_options)
    for i in range(len(dataset)):
        item = dataset[i]
        expected = fake_stack(range(item["index"], item["index"] + 1), 2, (1, 16, 16))[0, item["k"]]
        np.testing.assert_array_equal(item["stack_image"].numpy(), expected)  # stored dtype
    assert not verify(reopened, s3_options)
    summary = summarise(reopened, storage_options=s3_options)
    assert summary["complete_fraction"] == 1.0 and summary["bytes_on_disk"] == bytes_on_disk(url, s3_options) > 0


def test_forked_dataloader_workers_read_from_s3(s3_options):
    """Each forked worker opens its own handle (fsspec resets its event loop after fork)."""
    import torch
    from torch.utils.data import DataLoader

    url = "s3://s2s2-test/fork/stack.zarr"
    ds = synthetic_dataset(n=24)
    store = StackStore.create(url, ds, k=2, shard_size=4, storage_options=s3_options)
    for shard in store.pending_shards():
        store.write_shard(shard, fake_stack(store.shard_samples(shard), 2, (1, 16, 16)))
    dataset = StackPairDataset(ds, url, seed=4, storage_options=s3_options)
    dataset[0]  # the parent holds an open handle when it forks
    batches = list(DataLoader(dataset, batch_size=3, num_workers=2, multiprocessing_context="fork", timeout=60))
    ks = torch.cat([b["k"] for b in batches]).tolist()
    assert ks == [dataset[i]["k"] for i in range(len(dataset))] and len(ks) == 8
    stacked = torch.cat([b["stack_image"] for b in batches])
    torch.testing.assert_close(stacked, torch.stack([dataset[i]["stack_image"] for i in range(len(dataset))]))


def test_a_spawned_worker_reads_from_s3_through_the_carried_reader(s3_options):
    """A spawned worker gets the dataset pickled: its reader brings the layouts and shard indexes
    and builds its own s3fs connection; the batches equal the main process's reads."""
    import torch
    from torch.utils.data import DataLoader

    from s2s2.stages.train.datasets import collate_visits

    url = "s3://s2s2-test/spawn/stack.zarr"
    ds = synthetic_dataset(n=24)
    store = StackStore.create(url, ds, k=2, shard_size=4, storage_options=s3_options)
    for shard in store.pending_shards():
        store.write_shard(shard, fake_stack(store.shard_samples(shard), 2, (1, 16, 16)))
    dataset = StackPairDataset(ds, url, seed=6, storage_options=s3_options)
    loader = DataLoader(dataset, batch_size=4, num_workers=1, multiprocessing_context="spawn",
                        collate_fn=collate_visits, timeout=120)
    batches = list(loader)
    assert [k for b in batches for k in b["k"]] == [dataset[i]["k"] for i in range(len(dataset))]
    torch.testing.assert_close(torch.cat([b["stack_image"] for b in batches]),
                               torch.stack([dataset[i]["stack_image"] for i in range(len(dataset))]))


def test_direct_reads_equal_zarrs_own_and_damage_is_named_on_s3(s3_options):
    """Every image read through s3fs ranged GETs equals zarr's read; a torn or missing shard object
    is the store's error naming the shard."""
    import s3fs
    import zarr

    from test_store_fast_read import assert_same_as_zarr, filled_store

    url = "s3://s2s2-test/direct/stack.zarr"
    filled_store(url, storage_options=s3_options)
    group = zarr.open_group(url, mode="r", storage_options=s3_options)
    for handle in (StackStore.open(url, storage_options=s3_options),
                   StackStore.open(url, storage_options=s3_options, cache_shard_indexes=True)):
        assert_same_as_zarr(handle, group)
    fs = s3fs.S3FileSystem(**s3_options)
    key = "s2s2-test/direct/stack.zarr/stack/c/1/0/0/0/0"
    fs.pipe(key, fs.cat(key)[:-9])
    with pytest.raises(StoreError, match=r"shard 1 of 'stack' \(stack/c/1/0/0/0/0\) is damaged: its shard index"):
        StackStore.open(url, storage_options=s3_options).read_stack(3, 0)
    fs.rm(key)
    with pytest.raises(StoreError, match=r"shard 1 of 'stack' \(stack/c/1/0/0/0/0\) is missing"):
        StackStore.open(url, storage_options=s3_options, cache_shard_indexes=True).read_stack(3, 0)
