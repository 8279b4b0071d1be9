"""A read-only store wrapper that remembers shard indexes, so a read of one image from a shard
costs one request (the image's byte range) instead of two (index, then image) after the first
visit of that shard. Halves the requests per training pair, which matters most on object stores.

Safe because readers only read done shards, and a done shard is never rewritten.
"""

from __future__ import annotations

from typing import Any

from zarr.abc.store import ByteRequest, Store, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import FsspecStore, LocalStore, WrapperStore


class ShardIndexCache(WrapperStore):
    """Caches suffix reads (zarr's shard index lives at the end of each shard file)."""

    def __init__(self, store: Store):
        super().__init__(store)
        self._indexes: dict[tuple[str, int], Buffer] = {}

    def _with_store(self, store: Store) -> ShardIndexCache:
        wrapped = type(self)(store)
        wrapped._indexes = self._indexes
        return wrapped

    async def _get(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None) -> Buffer | None:
        if isinstance(self._store, LocalStore):  # small local reads: a thread hop costs more than the read
            return self._store.get_sync(key, prototype=prototype, byte_range=byte_range)
        return await self._store.get(key, prototype, byte_range)

    async def get(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None) -> Buffer | None:
        if not isinstance(byte_range, SuffixByteRequest):
            return await self._get(key, prototype, byte_range)
        cached = self._indexes.get((key, byte_range.suffix))
        if cached is None:
            cached = await self._get(key, prototype, byte_range)
            if cached is not None:  # a shard not written yet may appear later
                self._indexes[(key, byte_range.suffix)] = cached
        return cached


def read_only_cached(path: Any, storage_options: dict[str, Any] | None) -> ShardIndexCache:
    """The store behind a path, URL or Store object, read-only, with shard indexes cached."""
    if isinstance(path, Store):
        base = path
    elif "://" in str(path):
        base = FsspecStore.from_url(str(path), storage_options=storage_options, read_only=True)
    else:
        base = LocalStore(str(path), read_only=True)
    return ShardIndexCache(base)
