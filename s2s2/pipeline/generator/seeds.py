"""Seed derivation: every stack image and every training step gets its own reproducible seed.

Seeds are hashes of their coordinates, so a resumed or re-sharded run draws exactly the same noise
as an uninterrupted one, whatever order the work happens in.
"""

from __future__ import annotations

import hashlib

_SEED_BITS = 63


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from a tuple of ints/strings (sha256 of their text, stable across runs)."""
    text = ":".join(str(part) for part in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> (64 - _SEED_BITS)


def image_seed(base_seed: int, sample_index: int, k: int, attempt: int = 0) -> int:
    """Seed of stack image k of sample `sample_index`; `attempt` > 0 after a rejected (NaN/black) image."""
    if sample_index < 0 or k < 0 or attempt < 0:
        raise ValueError(f"sample_index, k and attempt must be >= 0, got {sample_index}, {k}, {attempt}")
    return derive_seed("image", base_seed, sample_index, k, attempt)


def step_seed(base_seed: int, step: int, process_index: int = 0) -> int:
    """Seed of one fine-tuning step (batch draw, noise, timesteps) on one process."""
    return derive_seed("step", base_seed, step, process_index)
