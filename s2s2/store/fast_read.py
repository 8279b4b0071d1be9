"""Direct reads of single images from the store's shards: one ranged read per image.

zarr-python spends ~1 ms per array read on its async and codec orchestration, far more than the
disk and zstd need for one image (~0.03 ms at 192 px). This reader does what zarr's sharding codec
does, without the orchestration: it reads a shard's index (the byte range of every inner chunk,
with its crc32c), then fetches each requested chunk with one ranged read and decodes it with the
codec zarr uses (numcodecs' Zstd or Blosc). All requests of one call go out together: one trip
for the indexes not known yet, one for the chunks (what matters on object storage).

The layout is read from each array's own zarr metadata, and arrays laid out in any other way than
s2s2 writes them are refused. A chunk that zarr left unwritten (all fill value) reads as the fill
value, as in zarr. A shard whose index does not check out, or whose chunk does not decode, is an
error naming the store and the shard; so is a missing shard when `missing_is_error` (a reader of
done shards only, e.g. training).

Everything here is on zarr's public API (array metadata, codecs, `Store.get`, `zarr.buffer`) but
one call: `StoreBytes` runs the store's coroutines on zarr's own event loop through
`zarr.core.sync.sync`, which zarr keeps private, because an fsspec store (S3) is bound to that
loop. So the zarr versions this module supports are pinned (`ZARR_SUPPORTED`, the same range as
pyproject.toml), and tests check the installed zarr against it and read S3 through it.
"""

from __future__ import annotations

import asyncio
import math
import os
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import google_crc32c
import numpy as np
import zarr
from numcodecs import blosc, zstd
from zarr.abc.store import ByteRequest, RangeByteRequest, Store, SuffixByteRequest
from zarr.buffer import default_buffer_prototype
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ShardingCodec, ShardingCodecIndexLocation, ZstdCodec
from zarr.storage import LocalStore

from s2s2.pipeline.errors import StoreError

ZARR_SUPPORTED = ">=3.1,<3.2"  # zarr releases whose private event-loop entry point StoreBytes uses
EMPTY = np.uint64(2**64 - 1)  # index entry of a chunk zarr did not write (all fill value)
Request = tuple[str, tuple[int, ...]]  # (array name, leading coordinates of one image: (i,) or (i, k))


@dataclass(frozen=True)
class ShardLayout:
    """Where the images of one array live: shard grid, inner chunks and their decoding."""

    key_prefix: str  # the array's path in the store
    encode_key: Callable[[tuple[int, ...]], str]  # shard coordinates -> key under the array
    shard_shape: tuple[int, ...]
    chunks_per_shard: tuple[int, ...]
    chunk_shape: tuple[int, ...]  # one image: 1 in the leading (sample, k) dimensions
    array_shape: tuple[int, ...]
    dtype: np.dtype  # on-disk byte order
    native_dtype: np.dtype
    fill_value: Any
    decompress: Callable[[Any], bytes] | None

    @property
    def index_bytes(self) -> int:
        """Size of the shard index at the end of the shard file: 16 bytes per chunk + crc32c."""
        return 16 * int(np.prod(self.chunks_per_shard)) + 4


def _decompressor(codecs: Sequence[Any], where: str) -> Callable[[Any], bytes] | None:
    """The inner chunk's bytes-to-bytes codec as numcodecs' decoder (what zarr calls), or None."""
    if not codecs:
        return None
    if len(codecs) == 1 and isinstance(codecs[0], ZstdCodec):
        return zstd.decompress  # a zstd frame says whether it has a checksum; decompress verifies it
    if len(codecs) == 1 and isinstance(codecs[0], BloscCodec):
        return blosc.decompress  # a blosc frame names its own compressor and shuffle
    raise StoreError(f"{where}: inner chunk codecs {codecs} are not the ones s2s2 writes (zstd, blosc or none)")


def shard_layout(array: zarr.Array, where: str) -> ShardLayout:
    """The layout of one array from its zarr metadata; refuses layouts s2s2 does not write."""
    meta = array.metadata
    codecs = getattr(meta, "codecs", ())
    if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
        raise StoreError(f"{where}: array {array.path!r} is not sharded as s2s2 writes it; "
                         "fix: re-create the store with `s2s2 stack init --overwrite`")
    sharding = codecs[0]
    inner, index_codecs = list(sharding.codecs), list(sharding.index_codecs)
    if (not inner or not isinstance(inner[0], BytesCodec) or sharding.index_location != ShardingCodecIndexLocation.end
            or [type(c) for c in index_codecs] != [BytesCodec, Crc32cCodec]
            or getattr(index_codecs[0].endian, "value", "little") != "little"):
        raise StoreError(f"{where}: array {array.path!r} has a shard layout s2s2 does not write ({sharding}); "
                         "fix: re-create the store with `s2s2 stack init --overwrite`")
    shard_shape = tuple(meta.chunk_grid.chunk_shape)
    chunk_shape = tuple(sharding.chunk_shape)
    if any(c not in (1, n) for c, n in zip(chunk_shape, array.shape)):
        raise StoreError(f"{where}: array {array.path!r} has inner chunks {chunk_shape}, not one image each")
    native = np.dtype(array.dtype)
    endian = getattr(inner[0].endian, "value", None)
    on_disk = native if endian is None else native.newbyteorder("<" if endian == "little" else ">")
    return ShardLayout(
        key_prefix=array.path, encode_key=meta.encode_chunk_key, shard_shape=shard_shape,
        chunks_per_shard=tuple(s // c for s, c in zip(shard_shape, chunk_shape)),
        chunk_shape=chunk_shape, array_shape=tuple(array.shape), dtype=on_disk, native_dtype=native,
        fill_value=meta.fill_value, decompress=_decompressor(inner[1:], where))


class LocalFiles:
    """Bytes of a LocalStore: each key is a file under its root, read with `pread`."""

    def __init__(self, root: Path):
        self.root = str(root)

    def fetch(self, requests: Sequence[tuple[str, ByteRequest]]) -> list[bytes | None]:
        """The bytes of each (key, byte range); None for a key with no file."""
        out: list[bytes | None] = []
        for key, byte_range in requests:
            try:
                fd = os.open(f"{self.root}/{key}", os.O_RDONLY)
            except FileNotFoundError:
                out.append(None)
                continue
            try:
                if isinstance(byte_range, SuffixByteRequest):
                    size = os.fstat(fd).st_size
                    out.append(os.pread(fd, min(byte_range.suffix, size), max(size - byte_range.suffix, 0)))
                else:
                    out.append(os.pread(fd, byte_range.end - byte_range.start, byte_range.start))
            finally:
                os.close(fd)
        return out


class StoreBytes:
    """Bytes of any zarr Store (fsspec/S3, memory, wrappers): all requests of a call are awaited
    together in one trip through zarr's event loop, so N requests cost about one round trip."""

    def __init__(self, store: Store):
        self.store = store
        self._pid = os.getpid()

    def _own_store(self) -> Store:
        """The store, as a fresh copy in a forked child: the parent's HTTP sessions and event loop
        do not survive a fork, and a pickled fsspec filesystem is rebuilt in the new process."""
        if self._pid != os.getpid():
            self.store = pickle.loads(pickle.dumps(self.store))
            self._pid = os.getpid()
        return self.store

    def fetch(self, requests: Sequence[tuple[str, ByteRequest]]) -> list[Any]:
        # zarr's private loop runner (see the module docstring and ZARR_SUPPORTED): the only one
        # that may drive a store zarr opened
        from zarr.core.sync import sync

        prototype = default_buffer_prototype()
        store = self._own_store()

        async def gather() -> list[Any]:
            return await asyncio.gather(*(store.get(key, prototype, byte_range) for key, byte_range in requests))

        return [None if buffer is None else buffer.as_numpy_array() for buffer in sync(gather())]


def byte_source(store: Store) -> LocalFiles | StoreBytes:
    """Plain files for a LocalStore (no event loop needed); the store's own async API otherwise."""
    if isinstance(store, LocalStore):
        return LocalFiles(Path(store.root))
    return StoreBytes(store)


class ShardReader:
    """Reads whole inner chunks (one image each) of some arrays of one store, by name.

    `cache_indexes`: remember each shard's index after its first read (valid for shards that are
    never rewritten, i.e. done shards; a missing shard is never cached)."""

    def __init__(self, arrays: Mapping[str, zarr.Array], where: str, cache_indexes: bool = False,
                 missing_is_error: bool = False, repair: Callable[[str, int], str] | None = None):
        self.where = where
        self.repair = repair  # (array, shard) -> how to repair that shard file, for the error messages
        self.cache_indexes = cache_indexes
        self.missing_is_error = missing_is_error
        self.source = byte_source(next(iter(arrays.values())).store)
        self._arrays = dict(arrays)
        self._layouts: dict[str, ShardLayout] = {}
        self._indexes: dict[tuple[str, tuple[int, ...]], np.ndarray] = {}
        self._checked: set[tuple[str, int]] = set()  # (array, leading dims) known to address whole images
        self._keys: dict[tuple[str, tuple[int, ...]], str] = {}

    def __getstate__(self) -> dict[str, Any]:
        """A reader travels to other processes (spawned DataLoader workers) with its layouts and
        cached shard indexes, so they send no metadata or index request; the zarr arrays and the
        repair advice (which needs the whole store) stay behind."""
        for name in self._arrays:
            self.layout(name)
        return {**self.__dict__, "_arrays": {}, "repair": None}

    def layout(self, name: str) -> ShardLayout:
        if name not in self._layouts:
            self._layouts[name] = shard_layout(self._arrays[name], self.where)
        return self._layouts[name]

    def _shard_of(self, name: str, lead: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
        """(shard coordinates, flat position of the image's chunk inside its shard)."""
        layout = self.layout(name)
        if (name, len(lead)) not in self._checked:
            if len(lead) > len(layout.array_shape) or layout.chunk_shape[len(lead):] != layout.array_shape[len(lead):]:
                raise StoreError(f"{self.where}: {name}{list(lead)} does not address one whole image of "
                                 f"shape {layout.chunk_shape[len(lead):]}")
            self._checked.add((name, len(lead)))
        if any(not 0 <= c < n for c, n in zip(lead, layout.array_shape)):
            raise StoreError(f"{self.where}: {name}{list(lead)} is out of range for shape {layout.array_shape}")
        shard = tuple([c // s for c, s in zip(lead, layout.shard_shape)]) + (0,) * (len(layout.shard_shape) - len(lead))
        position = 0  # row-major position of the chunk in its shard (only the leading dims have several)
        for c, s, n in zip(lead, layout.shard_shape, layout.chunks_per_shard):
            position = position * n + c % s
        return shard, position

    def _key(self, name: str, shard: tuple[int, ...]) -> str:
        key = self._keys.get((name, shard))
        if key is None:
            layout = self.layout(name)
            key = f"{layout.key_prefix}/{layout.encode_key(shard)}" if layout.key_prefix else layout.encode_key(shard)
            self._keys[(name, shard)] = key
        return key

    def _fix(self, name: str, shard: tuple[int, ...]) -> str:
        if self.repair is not None:
            return self.repair(name, shard[0])
        return ("run `s2s2 stack inspect --verify`, then re-run `s2s2 generate` for the shards it names (delete "
                "their done flags) or restore the store")

    def _damaged(self, name: str, shard: tuple[int, ...], reason: str) -> StoreError:
        return StoreError(f"{self.where}: shard {shard[0]} of {name!r} ({self._key(name, shard)}) is damaged: {reason}; "
                          f"fix: {self._fix(name, shard)}")

    def _decode_index(self, name: str, shard: tuple[int, ...], raw: Any) -> np.ndarray:
        layout = self.layout(name)
        data = bytes(raw)
        if len(data) != layout.index_bytes or google_crc32c.value(data[:-4]) != int.from_bytes(data[-4:], "little"):
            raise self._damaged(name, shard, "its shard index does not match its checksum (torn or truncated file)")
        return np.frombuffer(data[:-4], dtype="<u8").reshape(-1, 2)

    def indexes(self, shards: Sequence[tuple[str, tuple[int, ...]]]) -> list[np.ndarray | None]:
        """The index [chunks, (offset, length)] of each (array, shard), fetched together; None for a
        shard with no file (an error when `missing_is_error`)."""
        wanted = list(dict.fromkeys(s for s in shards if s not in self._indexes))
        fetched = self.source.fetch([(self._key(name, shard), SuffixByteRequest(self.layout(name).index_bytes))
                                     for name, shard in wanted]) if wanted else []
        found: dict[tuple[str, tuple[int, ...]], np.ndarray | None] = {}
        for (name, shard), raw in zip(wanted, fetched):
            if raw is None:
                if self.missing_is_error:
                    raise StoreError(f"{self.where}: shard {shard[0]} of {name!r} ({self._key(name, shard)}) is missing "
                                     f"although the done ledger says it was written; fix: {self._fix(name, shard)}")
                found[(name, shard)] = None
                continue
            found[(name, shard)] = self._decode_index(name, shard, raw)
            if self.cache_indexes:
                self._indexes[(name, shard)] = found[(name, shard)]
        return [found[s] if s in found else self._indexes[s] for s in shards]

    def locate(self, requests: Sequence[Request]) -> list[tuple[str, int, int] | None]:
        """(key, start, end) of each image's inner chunk in the store; None for a chunk zarr did not
        write (the image is the fill value). Indexes not known yet are fetched together."""
        located = [(name, *self._shard_of(name, lead)) for name, lead in requests]
        indexes = self.indexes([(name, shard) for name, shard, _ in located])
        out: list[tuple[str, int, int] | None] = []
        for (name, shard, position), index in zip(located, indexes):
            if index is None or index[position, 0] == EMPTY:
                out.append(None)
            else:
                start, length = (int(v) for v in index[position])
                out.append((self._key(name, shard), start, start + length))
        return out

    def read(self, requests: Sequence[Request]) -> list[np.ndarray]:
        """The image of each (array, leading coordinates), exactly as `zarr_array[coords]` returns it."""
        ranges = self.locate(requests)
        wanted = [r for r, where in enumerate(ranges) if where is not None]
        fetched = self.source.fetch([(ranges[r][0], RangeByteRequest(ranges[r][1], ranges[r][2]))  # type: ignore[index]
                                     for r in wanted])
        chunks = dict(zip(wanted, fetched))
        images = []
        for r, (name, lead) in enumerate(requests):
            raw = chunks.get(r)
            if r in chunks and raw is None:
                raise self._damaged(name, self._shard_of(name, lead)[0], "the shard file vanished while it was read")
            images.append(self._decode(name, lead, raw))
        return images

    def _decode(self, name: str, lead: tuple[int, ...], raw: Any) -> np.ndarray:
        layout = self.layout(name)
        shape = layout.chunk_shape[len(lead):]
        if raw is None:  # not written by zarr: the whole image is the fill value
            return np.full(shape, layout.fill_value, dtype=layout.native_dtype)
        try:
            data = raw if layout.decompress is None else layout.decompress(raw)
        except Exception as err:  # whatever the codec raises, the cause is damaged bytes
            raise self._damaged(name, self._shard_of(name, lead)[0],
                                f"the chunk of {name}{list(lead)} does not decode ({type(err).__name__}: {err})") from err
        nbytes = layout.dtype.itemsize * math.prod(shape)
        if len(data) != nbytes:
            raise self._damaged(name, self._shard_of(name, lead)[0],
                                f"the chunk of {name}{list(lead)} holds {len(data)} bytes, not {nbytes}")
        # a copy, so the image is writable like zarr's (and no longer holds the fetched buffer)
        return np.frombuffer(data, dtype=layout.dtype).reshape(shape).astype(layout.native_dtype)
