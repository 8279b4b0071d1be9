"""Pure helpers for the store layout: shard ranges, dtype conversion, codecs and store paths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from s2s2.store.manifest import Compression, StoreDtype


def num_shards(n_samples: int, shard_size: int) -> int:
    """Shards needed for `n_samples` (the last one may be short)."""
    return -(-n_samples // shard_size)


def shard_rows(n_samples: int, shard_size: int, shard: int) -> range:
    """Sample indices held by `shard`."""
    start = shard * shard_size
    return range(start, min(start + shard_size, n_samples))


def to_store_dtype(images: np.ndarray, dtype: StoreDtype) -> np.ndarray:
    """Convert images to the store dtype: float inputs are read as [0, 1], uint8 as [0, 255]."""
    if images.dtype == np.uint8:
        return images if dtype == "uint8" else (images.astype(np.float32) / 255.0).astype(np.float16)
    unit = np.clip(np.asarray(images, dtype=np.float32), 0.0, 1.0)
    if dtype == "uint8":
        return np.rint(unit * 255.0).astype(np.uint8)
    return unit.astype(np.float16)


def to_unit_float(images: np.ndarray) -> np.ndarray:
    """Store-dtype images as float32 in [0, 1] (what models and augmentation consume)."""
    if images.dtype == np.uint8:
        return images.astype(np.float32) * np.float32(1.0 / 255.0)
    return images.astype(np.float32)


def compressors(name: Compression, level: int) -> list:
    """Zarr v3 codecs for one inner chunk; zstd keeps its own content checksum for `--verify`."""
    from zarr.codecs import BloscCodec, ZstdCodec

    if name == "none":
        return []
    if name == "zstd":
        return [ZstdCodec(level=level, checksum=True)]
    cname = name.split("-", 1)[1]
    return [BloscCodec(cname=cname, clevel=min(level, 9), shuffle="bitshuffle")]


def is_local(path: Any) -> bool:
    """True for a path on local disk (a str or Path without a URL scheme)."""
    return isinstance(path, (str, Path)) and "://" not in str(path)
