"""Control images and colour conversion between the data and the generator.

The control image is the mask drawn in the PASCAL-VOC palette, scaled to [0, 1] floats, at the
generation resolution (nearest neighbour); training and sampling use this same function. A
generator trained with appearance randomisation reads extra control channels after the palette:
the per-label mean intensities of the image it should render, painted on the mask. Grey images
are repeated to RGB for the generator and averaged back to one channel afterwards.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from s2s2.pipeline.errors import DataError
from s2s2.pipeline.palette import mask_to_rgb

PALETTE_SIZE = 256


def control_images(masks: np.ndarray, num_classes: int, resolution: int) -> torch.Tensor:
    """float32 [n,3,R,R] in [0,1]: masks [n,H,W] in VOC colours, nearest-resized to `resolution`."""
    masks = np.asarray(masks)
    if num_classes > PALETTE_SIZE:
        raise DataError(f"{num_classes} classes do not fit the {PALETTE_SIZE}-colour VOC palette",
                        fix="merge classes so that at most 256 remain")
    if masks.size and (masks.min() < 0 or masks.max() >= num_classes):
        raise DataError(f"masks hold class ids {int(masks.min())}..{int(masks.max())} but the dataset "
                        f"declares {num_classes} classes (0..{num_classes - 1})",
                        fix="declare every class id in the dataset's class_names")
    rgb = np.stack([mask_to_rgb(mask, num_classes) for mask in masks])  # [n,H,W,3] uint8
    control = torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255.0
    if control.shape[-2:] != (resolution, resolution):
        control = F.interpolate(control, size=(resolution, resolution), mode="nearest")
    return control.contiguous()


def appearance_controls(images: np.ndarray, masks: np.ndarray, num_classes: int, resolution: int) -> torch.Tensor:
    """float32 [n,C,R,R] in [0,1]: each image's per-label mean intensities painted on its mask
    (`label_mean_map`), nearest-resized to `resolution` like the palette channels."""
    from s2s2.pipeline.appearance import label_mean_map

    maps = np.stack([label_mean_map(image, mask, num_classes) for image, mask in zip(images, masks)])
    control = torch.from_numpy(maps).float()
    if control.shape[-2:] != (resolution, resolution):
        control = F.interpolate(control, size=(resolution, resolution), mode="nearest")
    return control.contiguous()


def to_generator_rgb(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Images [n,C,H,W] in [0,1] (C = 1 or 3) -> [n,3,R,R] in [-1,1], the VAE's input range."""
    if images.shape[1] == 1:
        images = images.repeat(1, 3, 1, 1)
    if images.shape[-2:] != (resolution, resolution):
        images = F.interpolate(images, size=(resolution, resolution), mode="bilinear", antialias=True,
                               align_corners=False)
    return images.clamp(0, 1) * 2 - 1


def from_generator_rgb(rgb: np.ndarray, channels: int, size: tuple[int, int]) -> np.ndarray:
    """Generated RGB [n,R,R,3] float in [0,1] -> uint8 [n,C,H,W]; grey modalities average to 1 channel."""
    images = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(0, 3, 1, 2)
    if channels == 1:
        images = images.mean(dim=1, keepdim=True)
    if tuple(images.shape[-2:]) != tuple(size):
        images = F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def is_bad_image(image: np.ndarray, black_level: float = 2.0 / 255.0) -> bool:
    """True for an image with NaN/inf pixels or one that is entirely black (a failed sample)."""
    image = np.asarray(image, dtype=np.float32)
    return bool(not np.isfinite(image).all() or image.max() <= black_level)
