"""Seeds and random-number states: one place that makes runs repeatable and resumable.

Every seed is *derived* from its coordinates, never drawn from a global stream: stack images and
fine-tuning steps get hashes of (base seed, sample index, k) and (base seed, step), the segmenter's
data order and per-sample randomness come from (seed, epoch, index). So a resumed or re-sharded run
draws exactly what an uninterrupted one draws, whatever order the work happens in, and needs only
the torch RNG states (dropout, drop-path) restored.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch

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


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch (all devices); optionally ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def sample_rng(seed: int, epoch: int, index: int, stream: int = 0) -> np.random.Generator:
    """Generator for one visit of one sample: independent of worker count, order and resumption."""
    return np.random.default_rng([seed, epoch, index, stream])


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order in which the training samples are visited in one epoch."""
    return np.random.default_rng([seed, epoch, 2**31 - 1]).permutation(n)


def torch_rng_state() -> dict[str, torch.Tensor]:
    """The torch RNG states to save with a checkpoint (CPU, and CUDA when present)."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            state[f"cuda{i}"] = s
    return state


def set_torch_rng_state(state: dict[str, torch.Tensor]) -> None:
    """Restore what `torch_rng_state` saved."""
    torch.set_rng_state(state["cpu"])
    cuda = [state[k] for k in sorted(k for k in state if k.startswith("cuda"))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
