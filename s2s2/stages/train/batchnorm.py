"""Batch-norm running statistics from the originals only, in S2S2's one forward of 2B images.

S2S2 forwards [originals; stack images] as one batch, so by default every batch-norm layer
normalises over all 2B images and its running statistics (what evaluation uses) mix the stack's
appearances in. `originals_only_running_stats` makes each batch-norm layer treat the two halves
separately for one forward: the originals exactly as the baseline's forward of the same batch
(normalised by their own batch statistics, running statistics updated from them), the stack images
normalised by their own batch statistics with the running statistics left as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch.nn.modules.batchnorm import _BatchNorm


def _split_forward(module: _BatchNorm, n_first: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The module's own forward on x[:n_first] (updates the running statistics), then on the rest
    with momentum 0 and the batch counter restored (running statistics untouched)."""
    forward = type(module).forward

    def split(x: torch.Tensor) -> torch.Tensor:
        if not module.training or x.shape[0] <= n_first:
            return forward(module, x)
        first = forward(module, x[:n_first])
        momentum, tracked = module.momentum, module.num_batches_tracked
        module.momentum = 0.0  # running = (1 - 0) * running + 0 * batch: unchanged
        if tracked is not None:
            module.num_batches_tracked = tracked.clone()
        try:
            rest = forward(module, x[n_first:])
        finally:
            module.momentum = momentum
            if tracked is not None:
                module.num_batches_tracked = tracked
        return torch.cat([first, rest])

    return split


@contextmanager
def originals_only_running_stats(model: torch.nn.Module, n_originals: int) -> Iterator[None]:
    """Within the block, every batch-norm layer of `model` splits its batch after `n_originals`
    images: running statistics from the first part only (see the module docstring)."""
    layers = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    for layer in layers:
        layer.forward = _split_forward(layer, n_originals)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward
