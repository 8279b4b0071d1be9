"""The training-free stack source: SynthSeg-style images drawn from the masks alone.

Each stack image is `labels_to_image` of its mask with a Generator seeded by (base seed, sample
index, k), so any image can be redrawn alone, in any order, on any worker, byte for byte.
"""

from __future__ import annotations

import numpy as np

from s2s2.pipeline.appearance import labels_to_image
from s2s2.pipeline.config.appearance import LabelsToImageConfig
from s2s2.pipeline.seeding import derive_seed


def synth_seed(base_seed: int, sample_index: int, k: int) -> int:
    """Seed of synth stack image k of sample `sample_index` (its own stream, apart from the ControlNet's)."""
    if sample_index < 0 or k < 0:
        raise ValueError(f"sample_index and k must be >= 0, got {sample_index}, {k}")
    return derive_seed("synth", base_seed, sample_index, k)


def synth_stack(masks: np.ndarray, sample_indices: list[int], ks: range, num_classes: int, channels: int,
                cfg: LabelsToImageConfig, seed: int) -> np.ndarray:
    """Images k in `ks` of each mask [m,H,W]: float32 [m, len(ks), C, H, W] in [0, 1]."""
    out = np.empty((len(masks), len(ks), channels, *masks.shape[1:]), dtype=np.float32)
    for row, (mask, index) in enumerate(zip(masks, sample_indices)):
        for column, k in enumerate(ks):
            rng = np.random.default_rng(synth_seed(seed, index, k))
            out[row, column] = labels_to_image(mask, num_classes, channels, rng, cfg)
    return out
