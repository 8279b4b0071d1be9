"""The stack store: one Zarr v3 group holding originals, masks, the K-image stack and a done ledger.

Layout (N samples, K images each, S = shard size):
  originals [N,C,H,W]   masks [N,H,W]   stack [N,K,C,H,W]   one inner chunk = one image,
                                          shards of S samples (all K images of each)
  done [N,K] bool       one chunk per shard, so writers of different shards never share a file
  ids, prompts [N] str  source_index [N] int64 (index of the sample in its PreparedDataset)
The manifest lives in the group attributes and is written last, so a half-created store is
recognisable. A writer writes a whole shard, then its done flags: a crash leaves the shard pending.
Zarr's LocalStore writes every object to a temporary file and renames it (zarr >= 3.1), so a
reader never sees a torn shard; object stores (S3) replace objects atomically by themselves.
This module holds the array I/O; damage diagnosis lives in `s2s2.store.damage`, the generator
binding in `s2s2.store.binding`, single-image reads in `s2s2.store.fast_read`.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import version as _package_version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
from pydantic import ValidationError
from tqdm import tqdm

from s2s2.pipeline.errors import StoreError
from s2s2.store.binding import GeneratorBinding
from s2s2.store.claims import ClaimBook
from s2s2.store.damage import damaged_metadata, names_damage, repair_advice
from s2s2.store.fast_read import ShardReader
from s2s2.store.layout import compressors, is_local, num_shards, shard_rows, to_store_dtype
from s2s2.store.manifest import (
    MANIFEST_KEY,
    SCHEMA_VERSION,
    Compression,
    GeneratorIdentity,
    Manifest,
    StackGenerator,
    utc_now,
)

if TYPE_CHECKING:
    from zarr.abc.store import Store

    from s2s2.pipeline.data.prepared import PreparedDataset

__all__ = ["GeneratorIdentity", "Manifest", "StackGenerator", "StackStore"]


def _store_like(path: Any) -> Any:
    """zarr accepts str paths/URLs and Store objects; Path objects become strings."""
    return str(path) if isinstance(path, Path) else path


def _open_group(path: Any, mode: str, storage_options: dict[str, Any] | None) -> zarr.Group:
    """Open the store's group; a plain file in the way or unreadable metadata is a StoreError."""
    if is_local(path) and Path(path).exists() and not Path(path).is_dir():
        raise StoreError(f"{path} is a file, not a stack store (a Zarr folder); fix: choose another path "
                         "(store.path or the PATH argument) or move the file away")
    options = storage_options if storage_options and isinstance(path, str) and "://" in path else None
    try:
        # s2s2 writes Zarr v3 only; naming the format spares the probes for v2 metadata (three
        # more requests per opening on object storage)
        return zarr.open_group(store=_store_like(path), mode=mode, storage_options=options, zarr_format=3)
    except zarr.errors.GroupNotFoundError:  # no store there (callers decide what that means)
        raise
    except (ValueError, TypeError, KeyError) as err:  # JSONDecodeError is a ValueError
        raise damaged_metadata(path, err) from None


def _read_manifest(group: zarr.Group, path: Any) -> Manifest:
    raw = group.attrs.get(MANIFEST_KEY)
    if raw is None:
        raise StoreError(f"{path}: no s2s2 manifest in the group attributes — not a stack store, or its "
                         "creation was interrupted; fix: run `s2s2 stack init ... --overwrite`")
    version = raw.get("schema_version") if isinstance(raw, dict) else None
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise StoreError(f"{path}: manifest schema_version={version!r}, this s2s2 reads <= {SCHEMA_VERSION}; "
                         "fix: upgrade s2s2 or re-create the store")
    try:
        return Manifest.model_validate(raw)
    except ValidationError as err:
        raise StoreError(f"{path}: manifest does not validate: {err}") from err


class StackStore(GeneratorBinding):
    """Handle on one stack store; create with `StackStore.create`, open with `StackStore.open`.

    Array I/O lives here; the generator binding (`check_generator`, `done_for`, `bind_for_write`, ...)
    comes from `GeneratorBinding` (s2s2.store.binding)."""

    def __init__(self, group: zarr.Group, manifest: Manifest, path: Any, writable: bool,
                 storage_options: dict[str, Any] | None = None, reads_done_shards_only: bool = False):
        self._group = group
        self._manifest = manifest
        self.path = path
        self.writable = writable
        self.storage_options = storage_options
        try:
            self._stack = group["stack"]
            self._done = group["done"]
            self._originals = group["originals"]
            self._masks = group["masks"]
        except (ValueError, TypeError) as err:
            raise damaged_metadata(path, err) from None
        except KeyError as err:
            raise StoreError(f"{path}: array {err} is missing from the store; fix: re-create the store with "
                             "`s2s2 stack init --overwrite` (same config), then `s2s2 generate`") from None
        self._reader = ShardReader({"originals": self._originals, "masks": self._masks, "stack": self._stack}, str(path),
                                   cache_indexes=reads_done_shards_only,
                                   missing_is_error=reads_done_shards_only,
                                   repair=lambda array, shard: repair_advice(path, [(array, shard)], self.shard_file))

    # --- creation and opening ------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | Path | Store,
        dataset: PreparedDataset,
        k: int,
        split: str = "train",
        shard_size: int = 8,
        dtype: str = "uint8",
        overwrite: bool = False,
        compression: Compression = "zstd",
        compression_level: int = 3,
        storage_options: dict[str, Any] | None = None,
    ) -> StackStore:
        """Write the originals, masks and ids of `split`, an empty stack and the manifest.

        An existing store made for the same dataset, split, K, dtype and shard size is reopened
        (its finished shards kept); any other existing store is refused unless `overwrite`.
        """
        if dtype not in ("uint8", "float16"):
            raise StoreError(f"store dtype {dtype!r} is not supported; use uint8 or float16")
        if k < 1 or shard_size < 1:
            raise StoreError(f"k={k} and shard_size={shard_size} must both be >= 1")
        indices = dataset.indices(split)
        if not indices:
            raise StoreError(f"dataset {dataset.name} has no samples in split {split!r}")
        fingerprint = dataset.fingerprint()
        if overwrite and isinstance(path, (str, Path)):
            running = ClaimBook(path, storage_options).running_writers()
            if running:
                who = ", ".join(f"{w.host} pid {w.pid}" for w in running)
                raise StoreError(f"{path}: `s2s2 generate` is writing this store ({who}); replacing it now would "
                                 "pull it from under that run; fix: wait for it to finish or stop it (its record "
                                 "lapses generate.claim_seconds later), then rerun")
        if not overwrite:
            existing = cls._existing(path, storage_options)
            if existing is not None:
                wanted = {"dataset_fingerprint": fingerprint, "split": split, "k": k, "dtype": dtype,
                          "shard_size": shard_size}
                return existing._reopen_if_matching(wanted)

        n = len(indices)
        c, h, w = dataset.image_shape
        group = _open_group(path, "w", storage_options)
        codecs = compressors(compression, compression_level)
        group.create_array("originals", shape=(n, c, h, w), chunks=(1, c, h, w), shards=(shard_size, c, h, w),
                           dtype=dtype, compressors=codecs, fill_value=0)
        group.create_array("masks", shape=(n, h, w), chunks=(1, h, w), shards=(shard_size, h, w),
                           dtype="uint8", compressors=codecs, fill_value=0)
        group.create_array("stack", shape=(n, k, c, h, w), chunks=(1, 1, c, h, w),
                           shards=(shard_size, k, c, h, w), dtype=dtype, compressors=codecs, fill_value=0)
        group.create_array("done", shape=(n, k), chunks=(shard_size, k), dtype="bool", fill_value=False)
        group.create_array("ids", shape=(n,), dtype=str)
        group.create_array("prompts", shape=(n,), dtype=str)
        group.create_array("source_index", shape=(n,), dtype="int64")
        group["ids"][:] = np.array([dataset.ids[i] for i in indices], dtype=object)
        group["prompts"][:] = np.array([dataset.prompt(i) for i in indices], dtype=object)
        group["source_index"][:] = np.asarray(indices, dtype=np.int64)
        index_array = np.asarray(indices)
        for shard in tqdm(range(num_shards(n, shard_size)), desc="stack init", unit="shard", leave=False):
            rows = shard_rows(n, shard_size, shard)
            picked = index_array[rows.start:rows.stop]
            group["originals"][rows.start:rows.stop] = to_store_dtype(dataset.images[picked], dtype)  # type: ignore[arg-type]
            group["masks"][rows.start:rows.stop] = dataset.masks[picked].astype(np.uint8)
        now = utc_now()
        manifest = Manifest(
            software_version=_package_version("s2s2"), dataset_name=dataset.name, dataset_fingerprint=fingerprint,
            split=split, class_names=tuple(dataset.class_names), modality=dataset.modality,
            prompt_template=dataset.prompt_template, n_samples=n, k=k, image_shape=(c, h, w),
            dtype=dtype, shard_size=shard_size, compression=compression, created=now, updated=now,  # type: ignore[arg-type]
        )
        group.attrs[MANIFEST_KEY] = manifest.model_dump(mode="json")  # last: marks the store as usable
        return cls(group, manifest, path, writable=True, storage_options=storage_options)

    @classmethod
    def _existing(cls, path: Any, storage_options: dict[str, Any] | None) -> StackStore | None:
        try:
            group = _open_group(path, "r+", storage_options)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            return None
        manifest = _read_manifest(group, path)
        return cls(group, manifest, path, writable=True, storage_options=storage_options)

    def _reopen_if_matching(self, wanted: dict[str, Any]) -> StackStore:
        have = self._manifest.model_dump()
        diffs = [f"{key}: store has {have[key]!r}, asked for {value!r}" for key, value in wanted.items()
                 if have[key] != value]
        if diffs:
            raise StoreError(f"{self.path}: an existing stack store was made for other parameters ("
                             + "; ".join(diffs) + "); fix: pass --overwrite to replace it, or another path")
        return self

    @classmethod
    def open(cls, path: str | Path | Store, mode: str = "r", storage_options: dict[str, Any] | None = None,
             cache_shard_indexes: bool = False) -> StackStore:
        """Open an existing store read-only ("r") or for writing shards ("r+").

        `cache_shard_indexes` (read-only): a handle that reads done shards only (the training
        reader): each shard's index is read once and remembered (a done shard is never rewritten),
        and a missing shard is an error rather than the fill value zarr would return."""
        if mode not in ("r", "r+"):
            raise StoreError(f"open mode {mode!r}: use 'r' or 'r+'")
        if cache_shard_indexes and mode != "r":
            raise StoreError("shard indexes may only be cached by read-only handles (mode='r')")
        try:
            group = _open_group(path, mode, storage_options)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as err:
            raise StoreError(f"{path}: no stack store there; fix: create it with `s2s2 stack init`") from err
        return cls(group, _read_manifest(group, path), path, writable=mode == "r+", storage_options=storage_options,
                   reads_done_shards_only=cache_shard_indexes)

    # --- description -----------------------------------------------------------------------------

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    @property
    def n_samples(self) -> int:
        return self._manifest.n_samples

    @property
    def k(self) -> int:
        return self._manifest.k

    @property
    def num_shards(self) -> int:
        return num_shards(self.n_samples, self._manifest.shard_size)

    def shard_samples(self, shard: int) -> range:
        """Sample indices of one shard (the unit of work of a writer)."""
        if not 0 <= shard < self.num_shards:
            raise StoreError(f"{self.path}: shard {shard} out of range 0..{self.num_shards - 1}")
        return shard_rows(self.n_samples, self._manifest.shard_size, shard)

    @property
    def ids(self) -> list[str]:
        return [str(v) for v in self._group["ids"][:]]

    @property
    def prompts(self) -> list[str]:
        return [str(v) for v in self._group["prompts"][:]]

    @property
    def source_indices(self) -> np.ndarray:
        """Index of each store sample in the PreparedDataset it was made from."""
        return np.asarray(self._group["source_index"][:])

    # --- shard files ----------------------------------------------------------------------

    def shard_file(self, array: str, shard: int) -> str:
        """Where one shard of `array` lives (a file, or an object key under a URL)."""
        chunks = self._group[array].metadata
        key = chunks.encode_chunk_key((shard,) + (0,) * (len(chunks.shape) - 1))
        return f"{str(self.path).rstrip('/')}/{array}/{key}"

    def decode_shard(self, array: str, shard: int) -> np.ndarray:
        """Every value of one shard of `array` (raises what the codecs raise if it is damaged)."""
        rows = self.shard_samples(shard)
        return np.asarray(self._group[array][rows.start:rows.stop])

    @names_damage(("done",), lambda self: range(self.n_samples))
    def done_ledger(self) -> np.ndarray:
        """bool [N, K]: which stack images are written."""
        return np.asarray(self._done[:], dtype=bool)

    @names_damage(("done",), lambda self, rows: rows)
    def shard_ledger(self, rows: range) -> np.ndarray:
        """bool [len(rows), K]: the done flags of some samples (a shard's rows: one ledger chunk)."""
        return np.asarray(self._done[rows.start:rows.stop], dtype=bool)

    def pending_shards(self) -> list[int]:
        """Shards with any image not marked done: a (re)started writer does exactly these."""
        done = self.done_ledger()
        shard_size = self._manifest.shard_size
        return [s for s in range(self.num_shards) if not done[s * shard_size:(s + 1) * shard_size].all()]

    def complete_fraction(self) -> float:
        return float(self.done_ledger().mean())

    # --- reading ---------------------------------------------------------------------------------

    @names_damage(("masks",), lambda self, indices: indices)
    def read_masks(self, indices: Any) -> np.ndarray:
        return np.asarray(self._masks.oindex[np.asarray(indices, dtype=np.int64)])

    @names_damage(("originals",), lambda self, indices: indices)
    def read_originals(self, indices: Any) -> np.ndarray:
        return np.asarray(self._originals.oindex[np.asarray(indices, dtype=np.int64)])

    def image_reader(self) -> ShardReader:
        """This handle's single-image reader, e.g. to hand to DataLoader workers: it carries its
        array layouts and cached shard indexes along, so a worker opens nothing."""
        return self._reader

    def read_stack(self, index: int, k: int) -> np.ndarray:
        """One stack image [C,H,W] in the store dtype (one ranged read of its inner chunk)."""
        return self._reader.read([("stack", (int(index), int(k)))])[0]

    def read_stack_images(self, indices: Sequence[int], ks: Sequence[int]) -> list[np.ndarray]:
        """Stack image ks[j] of sample indices[j] for every j, requested together (one trip to
        an object store for the whole list, e.g. a training batch)."""
        return self._reader.read([("stack", (int(i), int(k))) for i, k in zip(indices, ks, strict=True)])

    def read_original(self, index: int) -> np.ndarray:
        """One original [C,H,W] in the store dtype (one ranged read of its inner chunk)."""
        return self._reader.read([("originals", (int(index),))])[0]

    def read_mask(self, index: int) -> np.ndarray:
        return self._reader.read([("masks", (int(index),))])[0]

    def read_pairs(self, indices: Sequence[int], ks: Sequence[int]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(original, stack image k, mask) of each (index, k), all requested together."""
        images = self._reader.read(self._pair_requests(indices, ks))
        return [(images[j], images[j + 1], images[j + 2]) for j in range(0, len(images), 3)]

    def pair_chunk_ranges(self, indices: Sequence[int], ks: Sequence[int]) -> list[tuple[str, int, int] | None]:
        """(key, start, end) in the store of the original, stack image and mask chunks that
        `read_pairs(indices, ks)` fetches, in that order (what a raw read of the same bytes reads)."""
        return self._reader.locate(self._pair_requests(indices, ks))

    def _pair_requests(self, indices: Sequence[int], ks: Sequence[int]) -> list[tuple[str, tuple[int, ...]]]:
        requests: list[tuple[str, tuple[int, ...]]] = []
        for i, k in zip(indices, ks, strict=True):
            requests += [("originals", (int(i),)), ("stack", (int(i), int(k))), ("masks", (int(i),))]
        return requests

    def read_pair(self, index: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(original, stack image k, mask) of one sample: three ranged reads, requested together."""
        return self.read_pairs([index], [k])[0]

    @names_damage(("stack",), lambda self, shard: self.shard_samples(shard))
    def read_shard_stack(self, shard: int) -> np.ndarray:
        """All stack images of one shard [S,K,C,H,W] (decodes the whole shard file)."""
        rows = self.shard_samples(shard)
        return np.asarray(self._stack[rows.start:rows.stop])

    # --- writing ---------------------------------------------------------------------------------

    def _require_writable(self) -> None:
        if not self.writable:
            raise StoreError(f"{self.path}: opened read-only; open with mode='r+' to write")

    def write_shard(self, shard: int, stack_images: np.ndarray) -> None:
        """Write all K images of every sample of `shard` in one call, then mark them done.

        `stack_images` is uint8 [S,K,C,H,W] (or float in [0,1]). One writer per shard: zarr rewrites
        a whole shard file on any write into it.
        """
        self._require_writable()
        rows = self.shard_samples(shard)
        expected = (len(rows), self.k, *self._manifest.image_shape)
        if tuple(stack_images.shape) != expected:
            raise StoreError(f"{self.path}: shard {shard} needs images of shape {expected}, got {stack_images.shape}")
        self._stack[rows.start:rows.stop] = to_store_dtype(stack_images, self._manifest.dtype)
        self._mark_done(rows)

    def _mark_done(self, rows: range) -> None:
        """Flag a shard's images as written (its own ledger chunk: no other writer touches it)."""
        self._done[rows.start:rows.stop] = True

    def _unmark_done(self, rows: range) -> None:
        """Flag a shard's images as not written (the shard becomes pending)."""
        self._done[rows.start:rows.stop] = False

    def _write_ledger(self, done: np.ndarray) -> None:
        """Replace the whole done ledger [N,K]."""
        self._done[:] = done

    def _write_manifest(self, manifest: Manifest) -> None:
        self._group.attrs[MANIFEST_KEY] = manifest.model_dump(mode="json")
        self._manifest = manifest

    def _update_manifest(self, **changes: Any) -> Manifest:
        """Re-read the manifest (other writers update it too), apply `changes`, write it back."""
        fresh = _read_manifest(_open_group(self.path, "r", self.storage_options), self.path)
        manifest = fresh.model_copy(update={**changes, "updated": utc_now()})
        self._write_manifest(manifest)
        return manifest
