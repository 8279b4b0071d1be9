"""Brain templates as datasets: hard tissue labels from probability maps, cut into 2-D slices on one grid.

Shared by `icbm152` (nilearn's MNI template, the embedded default) and `spm152` (SPM's avg152
images, the out-of-domain partner). Both give classes 0 background, 1 CSF/other, 2 grey matter,
3 white matter. A template is resampled in world coordinates onto a *reference*: a grid, a slice
axis and one square crop box (by default the ICBM template's), so that slice i of any template
shows the same place as slice i of the training data; an out-of-domain template is first moved by
its fixed rigid perturbation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from s2s2.pipeline.config.data import BrainTemplate
from s2s2.pipeline.data.geometry import crop_square, robust_scale, slice_spacing, square_box, volume_slice
from s2s2.pipeline.data.raw import RawSlice
from s2s2.pipeline.data.world import Grid, RigidPerturbation, draw_perturbation, resample

CROP_MARGIN = 2  # voxels kept around the brain's bounding box


@dataclass(frozen=True)
class SliceReference:
    """Where slices are cut: a RAS grid, the slice axis, one crop box for every slice, and the brain's
    bounding box in world coordinates (centre and size, mm: where perturbations turn and how far they shift)."""

    name: str
    grid: Grid
    axis: int
    box: tuple[int, int, int, int]
    center_mm: tuple[float, float, float]
    extent_mm: tuple[float, float, float]

    @property
    def grid_id(self) -> str:
        """Equal for two datasets exactly when their slices share positions and pixels."""
        return f"{self.name}:axis{self.axis}:box{','.join(str(v) for v in self.box)}"


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


def kept_slices(labels: np.ndarray, axis: int, min_fraction: float) -> list[int]:
    """Indices along `axis` of the slices with more than `min_fraction` brain."""
    return [i for i in range(labels.shape[axis]) if (volume_slice(labels, axis, i) > 0).mean() > min_fraction]


def slice_reference(name: str, labels: np.ndarray, grid: Grid, axis: int, min_fraction: float) -> SliceReference:
    """The reference of a labelled volume: the square box around the union of its kept slices' brain
    (plus a margin) and the world bounding box of its brain."""
    kept = kept_slices(labels, axis, min_fraction) or list(range(labels.shape[axis]))
    union = np.any([volume_slice(labels, axis, i) > 0 for i in kept], axis=0)
    voxels = np.argwhere(labels > 0) if labels.any() else np.array([[0, 0, 0], np.array(labels.shape) - 1])
    corners = np.stack([grid.world(voxels.min(axis=0)), grid.world(voxels.max(axis=0))])
    center = corners.mean(axis=0)
    extent = np.abs(corners[1] - corners[0]) + np.asarray(grid.zooms)
    return SliceReference(name=name, grid=grid, axis=axis, box=square_box(union, CROP_MARGIN),
                          center_mm=tuple(float(v) for v in center), extent_mm=tuple(float(v) for v in extent))


def template_perturbation(cfg: BrainTemplate, key: str, reference: SliceReference) -> RigidPerturbation | None:
    """The fixed rigid perturbation of template `key` (None when off): turns about the reference brain's
    centre, shifts by up to a fraction of its extent."""
    if not cfg.perturbed():
        return None
    return draw_perturbation(cfg.perturb.seed, key, cfg.perturb.max_rotate_deg, cfg.perturb.max_shift_fraction,
                             reference.extent_mm, reference.center_mm)


def place_volumes(volumes: dict[str, np.ndarray], affine: np.ndarray, reference: SliceReference,
                  perturbation: RigidPerturbation | None) -> dict[str, np.ndarray]:
    """Every volume (image or probability map, with voxel-to-world `affine`) moved by `perturbation` and
    resampled linearly onto the reference grid."""
    transform = None if perturbation is None else perturbation.matrix()
    return {key: resample(volume, affine, reference.grid, order=1, transform=transform)
            for key, volume in volumes.items()}


def brain_slices(image: np.ndarray, labels: np.ndarray, reference: SliceReference, min_fraction: float,
                 prefix: str) -> list[RawSlice]:
    """Cut a labelled brain volume on the reference grid into slices with more than `min_fraction` brain,
    each cropped with the reference box (so all slices share one pixel spacing and place).

    Intensities are scaled per volume (99.5th percentile of the brain -> 1).
    """
    axis = reference.axis
    scaled = robust_scale(image, labels > 0, low_pct=0.0, high_pct=99.5)
    scaled = np.where(labels > 0, scaled, 0.0).astype(np.float32)
    zooms = reference.grid.zooms
    spacing = slice_spacing(zooms, axis)
    return [RawSlice(id=f"{prefix}-a{axis}s{i:03d}",
                     image=crop_square(volume_slice(scaled, axis, i), reference.box)[None].copy(),
                     mask=crop_square(volume_slice(labels, axis, i), reference.box),
                     spacing=spacing, case=prefix, position=i, thickness=zooms[axis])
            for i in kept_slices(labels, axis, min_fraction)]
