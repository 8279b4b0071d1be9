"""Training augmentation: one geometric transform shared by the original, the stack image and the
mask (so features stay aligned with the labels); photometric jitter and the optional intensity
augmentations (SLAug location-scale, GIN) on the original, drawn from the original's generator; the
stack image's own photometric jitter from a generator of its own.

Two generators per visit make runs matched: the baseline and S2S2 with the same seed draw the same
geometry and the same photometrics for the original, whatever happens to the stack image.
Pure numpy/scipy (GIN: a few torch convolutions), deterministic given the generators.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from s2s2.pipeline.config.train import AugmentConfig
from s2s2.stages.train.gin import gin_augment
from s2s2.stages.train.location_scale import global_location_scale


@dataclass(frozen=True)
class Geometry:
    """One draw of the shared geometric transform."""

    hflip: bool
    vflip: bool
    rot90: int
    affine: np.ndarray | None  # 2x2 matrix (output -> input coordinates) or None
    shift: tuple[float, float]


def draw_geometry(cfg: AugmentConfig, shape: tuple[int, int], rng: np.random.Generator) -> Geometry:
    """Draw flips, a multiple of 90 degrees and a small affine (rotation, scale, shift)."""
    hflip = bool(rng.random() < cfg.hflip_p)
    vflip = bool(rng.random() < cfg.vflip_p)
    rot90 = int(rng.integers(1, 4)) if (rng.random() < cfg.rot90_p and shape[0] == shape[1]) else 0
    if rng.random() < cfg.affine_p:
        angle = math.radians(rng.uniform(-cfg.max_rotate_deg, cfg.max_rotate_deg))
        scale = rng.uniform(1.0 - cfg.max_scale, 1.0 + cfg.max_scale)
        cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
        matrix = np.array([[cos, -sin], [sin, cos]])
        shift = (rng.uniform(-cfg.max_translate, cfg.max_translate) * shape[0],
                 rng.uniform(-cfg.max_translate, cfg.max_translate) * shape[1])
        return Geometry(hflip, vflip, rot90, matrix, shift)
    return Geometry(hflip, vflip, rot90, None, (0.0, 0.0))


def apply_geometry(plane: np.ndarray, geometry: Geometry, order: int) -> np.ndarray:
    """Transform one 2-D plane; order 1 (bilinear) for images, 0 (nearest) for masks."""
    out = plane
    if geometry.affine is not None:
        centre = (np.array(plane.shape, dtype=np.float64) - 1.0) / 2.0
        offset = centre - geometry.affine @ centre - np.asarray(geometry.shift)
        out = ndimage.affine_transform(out, geometry.affine, offset=offset, order=order, mode="constant", cval=0)
    if geometry.hflip:
        out = out[:, ::-1]
    if geometry.vflip:
        out = out[::-1, :]
    if geometry.rot90:
        out = np.rot90(out, geometry.rot90)
    return np.ascontiguousarray(out)


def photometric(image: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast, gamma and Gaussian noise on a float [C,H,W] image in [0,1]."""
    if rng.random() >= cfg.photometric_p:
        return image
    out = image + np.float32(rng.uniform(-cfg.brightness, cfg.brightness))
    mean = out.mean()
    out = (out - mean) * np.float32(rng.uniform(1.0 - cfg.contrast, 1.0 + cfg.contrast)) + mean
    out = np.clip(out, 0.0, 1.0) ** np.float32(math.exp(rng.uniform(-cfg.gamma, cfg.gamma)))
    sigma = rng.uniform(0.0, cfg.noise_std)
    if sigma > 0:
        out = out + rng.normal(0.0, sigma, size=out.shape).astype(np.float32)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


PairTransform = Callable[
    [np.ndarray, "np.ndarray | None", np.ndarray, np.random.Generator, "np.random.Generator | None"],
    "tuple[np.ndarray, np.ndarray | None, np.ndarray]",
]


class PairAugment:
    """Callable `(original, stack_image | None, mask, rng, stack_rng) -> (original, stack_image | None, mask)`.

    `rng` draws the shared geometry, then the original's photometrics, location-scale and GIN;
    `stack_rng` draws the stack image's photometrics only (none with `cfg.stack_photometric` off).
    `cfg.enabled` switches the geometric and photometric part; location-scale and GIN are separate.
    """

    def __init__(self, cfg: AugmentConfig | None = None, location_scale: bool = False, gin: bool = False):
        self.cfg = cfg if cfg is not None else AugmentConfig()
        self.location_scale = location_scale
        self.gin = gin

    def __call__(
        self,
        original: np.ndarray,
        stack_image: np.ndarray | None,
        mask: np.ndarray,
        rng: np.random.Generator,
        stack_rng: np.random.Generator | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        if stack_image is not None and stack_rng is None:
            raise ValueError("the stack image needs its own generator (stack_rng) for its photometric draws")
        if self.cfg.enabled:
            geometry = draw_geometry(self.cfg, mask.shape, rng)  # type: ignore[arg-type]

            def warp(image: np.ndarray) -> np.ndarray:
                return np.stack([apply_geometry(plane, geometry, order=1) for plane in image]).astype(np.float32)

            original = photometric(warp(original), self.cfg, rng)
            mask = apply_geometry(mask, geometry, order=0)
            if stack_image is not None:
                stack_image = warp(stack_image)
                if self.cfg.stack_photometric:
                    stack_image = photometric(stack_image, self.cfg, stack_rng)  # type: ignore[arg-type]
        if self.location_scale:
            original = global_location_scale(original, rng)
        if self.gin:
            original = gin_augment(original, rng)
        return original, stack_image, mask
