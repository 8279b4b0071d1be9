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

from dataclasses import dataclass

import numpy as np
import torch

from s2s2.pipeline.config.appearance import AppearanceRemapConfig, CorruptionConfig, LabelsToImageConfig
from s2s2.pipeline.monai_import import import_monai

_MONAI_SEED_LIMIT = 2**32  # MONAI seeds a numpy RandomState, which takes 32-bit seeds


def corrupt(image: np.ndarray, rng: np.random.Generator, cfg: CorruptionConfig) -> np.ndarray:
    """Blur, bias field, gamma and noise in acquisition order, each with its probability; float32
    [C,H,W] clipped to [0, 1]. The label map is untouched: only intensities change."""
    import_monai()
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


def label_mean_map(image: np.ndarray, mask: np.ndarray, num_labels: int) -> np.ndarray:
    """Every pixel replaced by the mean of its label in `image` (per channel): float32 [C,H,W].

    The appearance an image shows, painted on its mask; the ControlNet's extra control channels.
    """
    mask = np.asarray(mask, dtype=np.int64)
    counts = np.bincount(mask.ravel(), minlength=num_labels).astype(np.float64)
    sums = np.stack([np.bincount(mask.ravel(), weights=channel.ravel(), minlength=num_labels) for channel in image])
    means = sums / np.maximum(counts, 1.0)  # [C, num_labels]
    return means[:, mask].astype(np.float32)


def appearance_remap(image: np.ndarray, mask: np.ndarray, num_labels: int, rng: np.random.Generator,
                     cfg: AppearanceRemapConfig) -> np.ndarray:
    """A new appearance of a real image [C,H,W] in [0,1] on its own mask [H,W], float32 [C,H,W].

    Each label but `keep_labels` gets a new mean (`label_means`: uniform, `separation` apart, per
    channel) and keeps the image's own texture around its old mean, scaled by a factor drawn per
    label; then `corrupt`. Only intensities change: the label map is the input's.
    """
    image = np.asarray(image, dtype=np.float64)
    mask = np.asarray(mask, dtype=np.int64)
    if mask.size and (mask.min() < 0 or mask.max() >= num_labels):
        raise ValueError(f"mask holds labels {mask.min()}..{mask.max()}, outside 0..{num_labels - 1}")
    channels = image.shape[0]
    old_means = label_mean_map(image, mask, num_labels)
    drawn = [label for label in range(num_labels) if label not in cfg.keep_labels]
    means = np.zeros((num_labels, channels))  # kept labels: their own means (added back below)
    means[drawn] = label_means(len(drawn), channels, rng, LabelsToImageConfig(mean=cfg.mean, separation=cfg.separation))
    scales = np.ones(num_labels)
    scales[drawn] = rng.uniform(*cfg.texture, size=len(drawn))
    kept = np.isin(mask, cfg.keep_labels)
    remapped = np.where(kept, image, means.T[:, mask] + scales[mask] * (image - old_means))
    return corrupt(np.clip(remapped, 0.0, 1.0).astype(np.float32), rng, cfg.corruption)


@dataclass(frozen=True)
class AppearanceSource:
    """Real images with their masks, to draw appearance-remapped training images from (for the
    tiny VAE and the ControlNet fine-tune alike)."""

    images: np.ndarray  # [N, C, H, W] float in [0, 1]
    masks: np.ndarray  # [N, H, W]
    num_classes: int
    cfg: AppearanceRemapConfig

    def draw(self, rows: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Which positions of `rows` get a new appearance (each with `cfg.probability`) and their
        remapped images, float32 [n, C, H, W]; everything from `rng`."""
        chosen = np.flatnonzero(rng.random(len(rows)) < self.cfg.probability)
        remapped = [appearance_remap(self.images[row], self.masks[row], self.num_classes, rng, self.cfg)
                    for row in np.asarray(rows)[chosen]]
        return chosen, np.stack(remapped) if remapped else np.empty((0, *self.images.shape[1:]), np.float32)
