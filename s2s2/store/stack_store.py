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
from s2s2.store.fast_read import ShardReader
from s2s2.store.layout import compressors, num_shards, shard_rows, to_store_dtype
from s2s2.store.manifest import (
    MANIFEST_KEY,
    SCHEMA_VERSION,
    Compression,
    GeneratorIdentity,
    Manifest,
    StackGenerator,
    StoreDtype,
    changed_sources,
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
    options = storage_options if storage_options and isinstance(path, str) and "://" in path else None
    return zarr.open_group(store=_store_like(path), mode=mode, storage_options=options)


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


class StackStore:
    """Handle on one stack store; create with `StackStore.create`, open with `StackStore.open`."""

    def __init__(self, group: zarr.Group, manifest: Manifest, path: Any, writable: bool,
                 reads_done_shards_only: bool = False):
        self._group = group
        self._manifest = manifest
        self.path = path
        self.writable = writable
        self._stack = group["stack"]
        self._done = group["done"]
        self._originals = group["originals"]
        self._masks = group["masks"]
        self._reader = ShardReader({"originals": self._originals, "masks": self._masks, "stack": self._stack}, str(path),
                                   cache_indexes=reads_done_shards_only,
                                   missing_is_error=reads_done_shards_only)

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
        return cls(group, manifest, path, writable=True)

    @classmethod
    def _existing(cls, path: Any, storage_options: dict[str, Any] | None) -> StackStore | None:
        try:
            group = _open_group(path, "r+", storage_options)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            return None
        manifest = _read_manifest(group, path)
        return cls(group, manifest, path, writable=True)

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
        return cls(group, _read_manifest(group, path), path, writable=mode == "r+",
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

    def done_ledger(self) -> np.ndarray:
        """bool [N, K]: which stack images are written."""
        return np.asarray(self._done[:], dtype=bool)

    def pending_shards(self) -> list[int]:
        """Shards with any image not marked done: a (re)started writer does exactly these."""
        done = self.done_ledger()
        shard_size = self._manifest.shard_size
        return [s for s in range(self.num_shards) if not done[s * shard_size:(s + 1) * shard_size].all()]

    def complete_fraction(self) -> float:
        return float(self.done_ledger().mean())

    # --- reading ---------------------------------------------------------------------------------

    def read_masks(self, indices: Any) -> np.ndarray:
        return np.asarray(self._masks.oindex[np.asarray(indices, dtype=np.int64)])

    def read_originals(self, indices: Any) -> np.ndarray:
        return np.asarray(self._originals.oindex[np.asarray(indices, dtype=np.int64)])

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

    def _write_manifest(self, manifest: Manifest) -> None:
        self._group.attrs[MANIFEST_KEY] = manifest.model_dump(mode="json")
        self._manifest = manifest

    def bind_generator(self, generator: StackGenerator, overwrite: bool = False) -> None:
        """Record which sources fill the stack (each owns a range of k). A source that differs from
        the recorded one is refused unless `overwrite`, which clears the done flags of its images
        only, so the next run regenerates them and keeps the other sources' work."""
        self._require_writable()
        if generator.k != self.k:
            raise StoreError(f"{self.path}: the generator's sources fill K={generator.k} images per sample, "
                             f"the store holds K={self.k}; fix: set store.k to {generator.k} or use another store")
        recorded = self._manifest.generator
        if recorded is not None and recorded != generator:
            changed, ks = changed_sources(recorded, generator)
            if not overwrite:
                raise StoreError(f"{self.path}: the store was filled by another generator ("
                                 + "; ".join(changed) + "); fix: pass --overwrite to regenerate those images")
            done = self.done_ledger()
            done[:, ks] = False
            self._done[:] = done
        status = "complete" if self.complete_fraction() == 1.0 else "generating"
        self._write_manifest(self._manifest.model_copy(update={"generator": generator, "status": status,
                                                               "updated": utc_now()}))

    def refresh_status(self) -> str:
        """Recompute the status from the ledger and record it (call from one coordinator only)."""
        self._require_writable()
        if self.complete_fraction() == 1.0:
            status = "complete"
        else:
            status = "generating" if self._manifest.generator is not None else "initialised"
        self._write_manifest(self._manifest.model_copy(update={"status": status, "updated": utc_now()}))
        return status
