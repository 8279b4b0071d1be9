"""The store's direct read path against zarr's own reads, and its errors on damaged shards."""

from __future__ import annotations

import asyncio
import numpy as np
import pytest
import zarr
from zarr.storage import LocalStore, WrapperStore

from s2s2.pipeline.errors import StoreError
from s2s2.store.stack_store import StackStore
from test_store_support import fake_stack, synthetic_dataset

K = 3


def filled_store(path, compression: str = "zstd", dtype: str = "uint8", channels: int = 3, **open_args) -> StackStore:
    """7 samples in shards of 3 (the last one short), K=3; image (5, 1) is all zero, so zarr does not
    write its chunk at all; a float16 store gets fractional values."""
    store = StackStore.create(path, synthetic_dataset(n=21, channels=channels), k=K, shard_size=3,
                              compression=compression, dtype=dtype, **open_args)
    for shard in store.pending_shards():
        rows = store.shard_samples(shard)
        images = fake_stack(rows, K, (channels, 16, 16)).astype(np.float32) / 255.0
        if 5 in rows:
            images[rows.index(5), 1] = 0.0
        store.write_shard(shard, images)
    return store


def assert_same_as_zarr(store: StackStore, group: zarr.Group) -> None:
    """Every (sample, k), original and mask, one at a time and batched, equals what zarr reads."""
    stack, originals, masks = group["stack"][:], group["originals"][:], group["masks"][:]
    n = store.n_samples
    for i in range(n):
        np.testing.assert_array_equal(store.read_original(i), originals[i], strict=True)
        np.testing.assert_array_equal(store.read_mask(i), masks[i], strict=True)
        for k in range(K):
            np.testing.assert_array_equal(store.read_stack(i, k), stack[i, k], strict=True)
    indices, ks = np.repeat(np.arange(n), K), np.tile(np.arange(K), n)
    for image, i, k in zip(store.read_stack_images(indices, ks), indices, ks):
        np.testing.assert_array_equal(image, stack[i, k], strict=True)
    for (original, stack_image, mask), i, k in zip(store.read_pairs(indices, ks), indices, ks):
        np.testing.assert_array_equal(original, originals[i], strict=True)
        np.testing.assert_array_equal(stack_image, stack[i, k], strict=True)
        np.testing.assert_array_equal(mask, masks[i], strict=True)


@pytest.mark.parametrize(("compression", "dtype"), [("zstd", "uint8"), ("zstd", "float16"),
                                                     ("blosc-lz4", "uint8"), ("none", "float16")])
def test_every_image_equals_zarrs_own_read(tmp_path, compression, dtype):
    filled_store(tmp_path / "s.zarr", compression, dtype)
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    assert not np.any(group["stack"][5, 1])  # the unwritten chunk reads as the fill value
    for handle in (StackStore.open(tmp_path / "s.zarr"), StackStore.open(tmp_path / "s.zarr", cache_shard_indexes=True)):
        assert_same_as_zarr(handle, group)
        image = handle.read_stack(2, 0)
        image += 1  # writable, like zarr's arrays


def test_out_of_range_reads_are_refused(tmp_path):
    store = filled_store(tmp_path / "s.zarr", channels=1)
    with pytest.raises(StoreError, match=r"stack\[7, 0\] is out of range"):
        store.read_stack(7, 0)
    with pytest.raises(StoreError, match=r"stack\[0, 3\] is out of range"):
        store.read_stack(0, 3)


class InFlight(WrapperStore):
    """A real LocalStore underneath whose gets each take 20 ms; records the most gets in flight."""

    def __init__(self, store):
        super().__init__(store)
        self.now, self.peak, self.calls = 0, 0, 0

    def _with_store(self, store):
        return type(self)(store)

    async def get(self, key, prototype, byte_range=None):
        self.now += 1
        self.calls += 1
        self.peak = max(self.peak, self.now)
        await asyncio.sleep(0.02)
        self.now -= 1
        return await self._store.get(key, prototype, byte_range)


def test_a_batch_of_reads_goes_out_together(tmp_path):
    filled_store(tmp_path / "s.zarr")
    slow = InFlight(LocalStore(str(tmp_path / "s.zarr"), read_only=True))
    store = StackStore.open(slow, cache_shard_indexes=True)
    store.read_pair(0, 0)  # shard 0's indexes of the three arrays
    slow.calls = slow.peak = 0
    pairs = store.read_pairs([1, 4, 6], [0, 1, 2])  # shards 0, 1, 2
    assert len(pairs) == 3
    assert slow.calls == 6 + 9 and slow.peak == 9  # the 6 new indexes together, then the 9 chunks together
    slow.calls = slow.peak = 0
    store.read_stack_images([0, 1, 2, 3, 4, 6], [0, 1, 2, 0, 1, 2])  # all indexes known: one trip
    assert slow.calls == slow.peak == 6


def shard_file(path, shard: int):
    return path / "stack" / "c" / str(shard) / "0" / "0" / "0" / "0"


def test_torn_and_missing_shards_are_clear_errors(tmp_path):
    path = tmp_path / "s.zarr"
    filled_store(path, channels=1)
    torn = shard_file(path, 1)
    torn.write_bytes(torn.read_bytes()[: torn.stat().st_size // 2])
    for handle in (StackStore.open(path), StackStore.open(path, cache_shard_indexes=True)):
        with pytest.raises(StoreError, match=rf"{path}: shard 1 of 'stack' \(stack/c/1/0/0/0/0\) is damaged: "
                                             r"its shard index does not match its checksum"):
            handle.read_stack(4, 0)

    shard_file(path, 2).unlink()  # done ledger says written, file gone
    np.testing.assert_array_equal(StackStore.open(path).read_stack(6, 0), np.zeros((1, 16, 16), np.uint8))  # as zarr
    with pytest.raises(StoreError, match=rf"{path}: shard 2 of 'stack' \(stack/c/2/0/0/0/0\) is missing although "
                                         "the done ledger says it was written"):
        StackStore.open(path, cache_shard_indexes=True).read_stack(6, 0)


def test_a_corrupted_chunk_is_a_clear_error(tmp_path):
    path = tmp_path / "s.zarr"
    filled_store(path, channels=1)
    data = bytearray(shard_file(path, 0).read_bytes())
    data[30:34] = bytes(4)  # inside the first chunk's zstd frame; the index (at the end) stays intact
    shard_file(path, 0).write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"shard 0 of 'stack' .* is damaged: the chunk of stack\[0, 0\] does not decode"):
        StackStore.open(path).read_stack(0, 0)
    np.testing.assert_array_equal(StackStore.open(path).read_stack(0, 1), fake_stack(range(3), K, (1, 16, 16))[0, 1])


def test_training_stops_with_the_stores_error_on_a_torn_shard(tmp_path):
    """The trainer's reads go through the same path: the StoreError (exit 2 at the CLI) names the shard."""
    from s2s2.stages.train.loop import run_train
    from test_train_support import blob_dataset, filled_store as filled_training_store, tiny_config

    dataset = blob_dataset(n=24, size=32)
    filled_training_store(tmp_path / "stack.zarr", dataset, k=2)
    torn = shard_file(tmp_path / "stack.zarr", 2)
    torn.write_bytes(torn.read_bytes()[:-9])
    with pytest.raises(StoreError, match=r"stack.zarr: shard 2 of 'stack' \(stack/c/2/0/0/0/0\) is damaged"):
        run_train(tiny_config(tmp_path, steps=4, val_every=100, checkpoint_every=100), dataset=dataset)


def test_the_installed_zarr_is_a_version_the_fast_read_path_supports():
    # fast_read drives fsspec stores through one private zarr call: pyproject pins the zarr range
    # it was written for, and declares every package it imports
    import tomllib
    from pathlib import Path

    from packaging.requirements import Requirement

    from s2s2.store.fast_read import ZARR_SUPPORTED

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    declared = {r.name: r for r in map(Requirement, project["dependencies"])}
    assert declared["zarr"].specifier == Requirement(f"zarr{ZARR_SUPPORTED}").specifier
    assert declared["zarr"].specifier.contains(zarr.__version__)
    assert {"google-crc32c", "numcodecs", "zarr"} <= declared.keys()  # what fast_read imports
