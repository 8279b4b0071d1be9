"""Training augmentation: one geometric transform shared by the original, the stack image and the
mask (so features stay aligned with the labels); photometric jitter and the optional intensity
augmentations (SLAug location-scale, GIN) on the original, drawn from the original's generator; the
stack image's own photometric jitter from a generator of its own.

Two generators per visit make runs matched: the baseline and S2S2 with the same seed draw the same
geometry and the same photometrics for the original, whatever happens to the stack image.
Pure numpy/scipy (GIN: a few torch convolutions), deterministic given the generators.

Hand-over in the stored dtype (`PairAugment.defer`): the dataset applies the geometry to the images
in their stored dtype (uint8 stack images stay uint8) and only draws the photometric parameters,
from the same generators in the same order; the trainer converts to float and applies them on its
device (`device_images`). Every draw is the same as in `PairAugment.__call__` except the noise: its
field is made on the device from a seed drawn where `__call__` draws the field (same sigma, another
realisation). An affine-warped uint8 image is rounded back to uint8 (at most 0.5/255 per pixel).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
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


@dataclass(frozen=True)
class PhotometricDraw:
    """One draw of `photometric`'s parameters; the noise field comes from `noise_seed` on the device."""

    shift: float
    contrast: float
    gamma: float
    sigma: float
    noise_seed: int


def draw_photometric(cfg: AugmentConfig, rng: np.random.Generator) -> PhotometricDraw | None:
    """The parameters `photometric` draws, in its order; one integer from `rng` stands for the noise
    field (None: no jitter this visit)."""
    if rng.random() >= cfg.photometric_p:
        return None
    shift = float(rng.uniform(-cfg.brightness, cfg.brightness))
    contrast = float(rng.uniform(1.0 - cfg.contrast, 1.0 + cfg.contrast))
    gamma = math.exp(rng.uniform(-cfg.gamma, cfg.gamma))
    sigma = float(rng.uniform(0.0, cfg.noise_std))
    seed = int(rng.integers(2**62)) if sigma > 0 else 0
    return PhotometricDraw(shift, contrast, gamma, sigma, seed)


def apply_photometric(images: torch.Tensor, draws: list[PhotometricDraw | None]) -> torch.Tensor:
    """`photometric` on a float batch [B,C,H,W] in [0,1], one draw per image, on the images' device."""
    out = []
    for image, draw in zip(images, draws, strict=True):
        if draw is None:
            out.append(image)
            continue
        jittered = image + np.float32(draw.shift)
        mean = jittered.mean()
        jittered = (jittered - mean) * np.float32(draw.contrast) + mean
        jittered = jittered.clamp(0.0, 1.0) ** np.float32(draw.gamma)
        if draw.sigma > 0:
            noise = torch.Generator(device=image.device).manual_seed(draw.noise_seed)
            jittered = jittered + torch.randn(image.shape, generator=noise, device=image.device) * np.float32(draw.sigma)
        out.append(jittered.clamp(0.0, 1.0))
    return torch.stack(out)


def device_images(batch: dict[str, Any], key: str, device: torch.device) -> torch.Tensor:
    """The batch's `key` images on `device` as float32 in [0, 1] (uint8 scaled by 1/255 there), with
    the photometric draws the dataset handed over under `{key}_photometric` applied."""
    images = batch[key].to(device, non_blocking=True)
    images = images.to(torch.float32) * np.float32(1.0 / 255.0) if images.dtype == torch.uint8 else images.float()
    draws = batch.get(f"{key}_photometric")
    return apply_photometric(images, draws) if draws is not None and any(d is not None for d in draws) else images


def warp_stored(image: np.ndarray, geometry: Geometry) -> np.ndarray:
    """The geometry on a [C,H,W] image in its stored dtype: flips and quarter turns are exact; an
    affine warp of uint8 is rounded back to uint8, of any other dtype returned as float32."""
    if geometry.affine is None:
        return np.stack([apply_geometry(plane, geometry, order=1) for plane in image])
    warped = np.stack([apply_geometry(plane.astype(np.float32), geometry, order=1) for plane in image])
    return np.clip(np.rint(warped), 0, 255).astype(np.uint8) if image.dtype == np.uint8 else warped.astype(np.float32)


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

    @property
    def can_defer(self) -> bool:
        """Whether the photometric part runs on the trainer's device (`defer`): when `cfg.on_device`, and
        not with location-scale or GIN, which act on the jittered original in the dataset."""
        return self.cfg.on_device and not (self.location_scale or self.gin)

    def defer(
        self,
        original: np.ndarray,
        stack_image: np.ndarray | None,
        mask: np.ndarray,
        rng: np.random.Generator,
        stack_rng: np.random.Generator | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, PhotometricDraw | None, PhotometricDraw | None]:
        """The geometry applied in the stored dtypes, the photometrics drawn, not applied: (original,
        stack_image, mask, the original's draw, the stack image's draw), from the same generators
        in the same order as `__call__`."""
        if not self.can_defer:
            raise ValueError("location-scale and GIN run in the dataset: use the transform itself")
        if stack_image is not None and stack_rng is None:
            raise ValueError("the stack image needs its own generator (stack_rng) for its photometric draws")
        if not self.cfg.enabled:
            return original, stack_image, mask, None, None
        geometry = draw_geometry(self.cfg, mask.shape, rng)  # type: ignore[arg-type]
        original = warp_stored(original, geometry)
        draw = draw_photometric(self.cfg, rng)
        mask = apply_geometry(mask, geometry, order=0)
        stack_draw = None
        if stack_image is not None:
            stack_image = warp_stored(stack_image, geometry)
            if self.cfg.stack_photometric:
                stack_draw = draw_photometric(self.cfg, stack_rng)  # type: ignore[arg-type]
        return original, stack_image, mask, draw, stack_draw
