"""Brain templates as datasets: hard tissue labels from probability maps, cut into 2-D slices.

Shared by `icbm152` (nilearn's MNI template, the embedded default) and `spm152` (SPM's avg152
images, the out-of-domain partner). Both give classes 0 background, 1 CSF/other, 2 grey matter,
3 white matter.
"""

from __future__ import annotations

import numpy as np

from s2s2.pipeline.data.geometry import crop_square, robust_scale, slice_spacing, square_box, volume_slice
from s2s2.pipeline.data.raw import RawSlice

CROP_MARGIN = 2  # voxels kept around the brain's bounding box


def tissue_labels(inside: np.ndarray, csf: np.ndarray, grey: np.ndarray, white: np.ndarray) -> np.ndarray:
    """argmax of [1-inside, inside*csf, grey, white] -> uint8 ids 0..3 (ties go to the lower id).

    `inside` is a 0/1 brain mask, the others tissue probabilities in [0,1]: outside the brain the
    background score 1 wins, inside it the most probable tissue does.
    """
    inside = inside.astype(np.float32)
    scores = np.stack([1.0 - inside, inside * csf, grey * inside, white * inside])
    return np.argmax(scores, axis=0).astype(np.uint8)


def icbm_csf(inside: np.ndarray, grey: np.ndarray, white: np.ndarray) -> np.ndarray:
    """The CSF/other score of the ICBM recipe: what grey and white matter leave, inside the brain."""
    return inside * np.clip(1.0 - grey - white, 0.0, 1.0)


def brain_slices(image: np.ndarray, labels: np.ndarray, zooms: tuple[float, ...], axis: int,
                 min_fraction: float, prefix: str) -> list[RawSlice]:
    """Cut a labelled brain volume into slices with more than `min_fraction` brain, cropped around the brain.

    Intensities are scaled per volume (99.5th percentile of the brain -> 1). One square crop
    box (the union of the kept slices' brain, plus a margin) is used for every slice, so all
    slices share one pixel spacing.
    """
    scaled = robust_scale(image, labels > 0, low_pct=0.0, high_pct=99.5)
    scaled = np.where(labels > 0, scaled, 0.0).astype(np.float32)
    kept = [i for i in range(labels.shape[axis])
            if (volume_slice(labels, axis, i) > 0).mean() > min_fraction]
    if not kept:
        return []
    union = np.any([volume_slice(labels, axis, i) > 0 for i in kept], axis=0)
    box = square_box(union, CROP_MARGIN)
    spacing = slice_spacing(zooms, axis)
    return [RawSlice(id=f"{prefix}-a{axis}s{i:03d}",
                     image=crop_square(volume_slice(scaled, axis, i), box)[None].copy(),
                     mask=crop_square(volume_slice(labels, axis, i), box),
                     spacing=spacing, case=prefix, position=i) for i in kept]
