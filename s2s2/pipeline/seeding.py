"""Seeds and random-number states: one place that makes runs repeatable and resumable.

Data order and per-sample randomness are *derived* from (seed, epoch, index), never drawn from a
global stream, so a resumed run needs only the torch RNG states (dropout, drop-path) restored.
"""

from __future__ import annotations

import random

import numpy as np
import torch


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
