"""Damage diagnosis of a stack store: which file does not decode, and how to repair it.

A store's files can be truncated or corrupted (a full disk, a copy cut short, bit rot). A read
that fails to decode becomes one error naming the store, every damaged file and the repair:
originals and masks come from the dataset (only re-creating the store restores them); stack
images and done flags are regenerated once their files are gone, because a shard without done
flags is pending.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from s2s2.pipeline.errors import StoreError
from s2s2.store.layout import is_local

if TYPE_CHECKING:
    from s2s2.store.stack_store import StackStore

# What zarr raises for a shard file that does not decode: its crc32c index checksum (ValueError),
# zstd's content checksum or a garbled frame (RuntimeError).
DECODE_ERRORS = (ValueError, RuntimeError)
ARRAYS = ("originals", "masks", "stack", "done")


def unreadable_metadata_file(path: Any) -> str:
    """The first zarr.json of a local store that is not valid JSON (a generic name elsewhere)."""
    if is_local(path):
        for candidate in [Path(path) / "zarr.json", *(Path(path) / array / "zarr.json" for array in ARRAYS)]:
            try:
                json.loads(candidate.read_bytes())
            except (OSError, ValueError):
                return str(candidate)
    return f"{path}/.../zarr.json"


def damaged_metadata(path: Any, err: Exception) -> StoreError:
    """The error for a store whose zarr metadata cannot be read."""
    return StoreError(f"{unreadable_metadata_file(path)}: the stack store's metadata cannot be read "
                      f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}): it is truncated or "
                      "corrupt; fix: re-create the store with `s2s2 stack init --overwrite` (same config), then "
                      "`s2s2 generate`")


def repair_advice(path: Any, damaged: list[tuple[str, int]], shard_file: Callable[[str, int], str]) -> str:
    """How to repair the damaged (array, shard) files: originals and masks come from the dataset
    (only re-creating the store restores them); stack images and ledger flags are regenerated once
    their files are gone, because a shard without done flags is pending."""
    if any(array in ("originals", "masks") for array, _ in damaged):
        return ("the originals and masks come from the dataset and `s2s2 generate` cannot restore them: re-create "
                "the store with `s2s2 stack init --overwrite` (same config), then run `s2s2 generate`")
    shards = sorted({shard for _, shard in damaged})
    files = [shard_file(array, shard) for shard in shards for array in ("stack", "done")]
    return (f"delete {', '.join(files)} (the shard(s) become pending), then run `s2s2 generate` to regenerate "
            f"them; `s2s2 stack inspect {path} --verify` lists every damaged shard")


def damaged_shards(store: StackStore, samples: Any, arrays: tuple[str, ...] = ARRAYS) -> list[tuple[str, int, Exception]]:
    """(array, shard, error) of every shard file holding `samples` that fails to decode."""
    size = store.manifest.shard_size
    found = []
    for shard in sorted({int(i) // size for i in np.atleast_1d(np.asarray(samples, dtype=np.int64))}):
        for array in arrays:
            try:
                store.decode_shard(array, shard)
            except DECODE_ERRORS as err:
                found.append((array, shard, err))
    return found


def damage_error(store: StackStore, damaged: list[tuple[str, int, Exception]]) -> StoreError:
    """One message naming every damaged file and how to repair it."""
    lines = [f"{store.path}: damaged shard file(s) that cannot be decoded:"]
    lines += [f"  {store.shard_file(array, shard)} ({array} of shard {shard}): {type(err).__name__}: "
              f"{str(err)[:120]}" for array, shard, err in damaged]
    lines.append("fix: " + repair_advice(store.path, [(a, s) for a, s, _ in damaged], store.shard_file))
    return StoreError("\n".join(lines))


def names_damage(arrays: tuple[str, ...], samples: Callable[..., Any]) -> Callable:
    """Decorate a read of a StackStore: a shard file that fails to decode becomes a StoreError
    naming the store, the file and the fix (`samples(store, *args)` are the samples the read touched)."""

    def decorate(read: Callable) -> Callable:
        @functools.wraps(read)
        def checked(store: StackStore, *args: Any, **kwargs: Any) -> Any:
            try:
                return read(store, *args, **kwargs)
            except DECODE_ERRORS:
                damaged = damaged_shards(store, samples(store, *args, **kwargs), arrays)
                if not damaged:
                    raise
                raise damage_error(store, damaged) from None

        return checked

    return decorate
