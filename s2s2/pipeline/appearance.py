"""Appearance randomisation: random image corruptions and a SynthSeg-style labels-to-image.

Pure and seeded: every function takes a numpy Generator and returns the same array for the same
Generator state, so one seed per image reproduces its pixels byte for byte. Images are float32
[C,H,W] in [0, 1]; masks are integer [H,W] class ids.

The corruptions are MONAI's transforms (RandGaussianSmooth, RandBiasField, RandAdjustContrast,
RandGaussianNoise), each seeded from the Generator. TorchIO's RandomLabelsToImage would cover the
label-to-intensity step too, but it brings SimpleITK and draws from torch's global RNG; MONAI is a
dependency already and has no labels-to-image, so that step is the few lines of numpy below.
"""

from __future__ import annotations

import numpy as np
import torch

from s2s2.pipeline.config.appearance import CorruptionConfig, LabelsToImageConfig

_MONAI_SEED_LIMIT = 2**32  # MONAI seeds a numpy RandomState, which takes 32-bit seeds


def corrupt(image: np.ndarray, rng: np.random.Generator, cfg: CorruptionConfig) -> np.ndarray:
    """Blur, bias field, gamma and noise in acquisition order, each with its probability; float32
    [C,H,W] clipped to [0, 1]. The label map is untouched: only intensities change."""
    from monai.transforms import RandAdjustContrast, RandBiasField, RandGaussianNoise, RandGaussianSmooth

    steps = (
        RandGaussianSmooth(sigma_x=cfg.blur_sigma, sigma_y=cfg.blur_sigma, prob=cfg.blur_p),
        RandBiasField(degree=cfg.bias_degree, coeff_range=(-cfg.bias_coeff, cfg.bias_coeff), prob=cfg.bias_p),
        RandAdjustContrast(gamma=cfg.gamma, prob=cfg.gamma_p),
        RandGaussianNoise(std=cfg.noise_std, prob=cfg.noise_p),
    )
    seeds = rng.integers(0, _MONAI_SEED_LIMIT, size=len(steps))  # one stream per step, always all drawn
    out = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    for step, seed in zip(steps, seeds):
        step.set_random_state(seed=int(seed))
        out = step(out)
    return np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0)


def label_means(num_labels: int, channels: int, rng: np.random.Generator,
                cfg: LabelsToImageConfig) -> np.ndarray:
    """Mean intensity of each label in each channel, [num_labels, C], ~ U(cfg.mean), any two at
    least `separation` x (mean range / (labels - 1)) apart per channel. Drawn uniformly over such
    configurations (sorted uniform draws on the range less the gaps, plus the gaps), then shuffled
    over the labels."""
    low, high = cfg.mean
    gap = cfg.separation * (high - low) / max(num_labels - 1, 1)
    slack = (high - low) - (num_labels - 1) * gap
    draws = np.sort(rng.uniform(0.0, slack, size=(channels, num_labels)), axis=1)
    levels = low + draws + gap * np.arange(num_labels)
    order = np.stack([rng.permutation(num_labels) for _ in range(channels)])  # which label gets which level
    return np.take_along_axis(levels, order, axis=1).T


def labels_to_image(mask: np.ndarray, num_labels: int, channels: int, rng: np.random.Generator,
                    cfg: LabelsToImageConfig) -> np.ndarray:
    """A synthetic image of `mask`: per-label Gaussian intensities (mean and SD drawn per label and
    channel), then `corrupt`. float32 [C,H,W] in [0, 1]."""
    mask = np.asarray(mask, dtype=np.int64)
    if mask.size and (mask.min() < 0 or mask.max() >= num_labels):
        raise ValueError(f"mask holds labels {mask.min()}..{mask.max()}, outside 0..{num_labels - 1}")
    means = label_means(num_labels, channels, rng, cfg)
    stds = rng.uniform(*cfg.std, size=(num_labels, channels))
    texture = rng.standard_normal((channels, *mask.shape))
    image = means.T[:, mask] + stds.T[:, mask] * texture
    return corrupt(np.clip(image, 0.0, 1.0).astype(np.float32), rng, cfg.corruption)
