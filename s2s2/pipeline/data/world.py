"""Volumes in world coordinates: resampling onto another grid and fixed, seeded rigid perturbations.

A volume is an array with its voxel-to-world affine (mm). Resampling goes through nibabel
(`resample_from_to`), so orientation, voxel size and origin are all taken from the affines;
a rigid perturbation moves the volume in world space (it changes the affine) before resampling.
Out-of-domain test volumes are moved this way so that anatomy at a fixed position cannot carry
a score (a model must look at the image, not at where it is).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    """A RAS voxel grid: its shape and voxel-to-world affine (mm)."""

    shape: tuple[int, int, int]
    affine: np.ndarray  # 4x4

    @property
    def zooms(self) -> tuple[float, float, float]:
        """Voxel size (mm) along each array axis."""
        return tuple(float(z) for z in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    def world(self, voxel: np.ndarray) -> np.ndarray:
        """World coordinates (mm) of a (fractional) voxel index."""
        return self.affine[:3, :3] @ np.asarray(voxel, dtype=np.float64) + self.affine[:3, 3]


@dataclass(frozen=True)
class RigidPerturbation:
    """A rigid motion in world space: rotation about `center_mm` (x, then y, then z axis), then a shift."""

    rotate_deg: tuple[float, float, float]
    shift_mm: tuple[float, float, float]
    center_mm: tuple[float, float, float]

    def matrix(self) -> np.ndarray:
        """4x4 world transform p -> R (p - c) + c + t."""
        ax, ay, az = np.deg2rad(self.rotate_deg)
        rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
        ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
        rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
        rotation = rz @ ry @ rx
        center = np.asarray(self.center_mm, dtype=np.float64)
        out = np.eye(4)
        out[:3, :3] = rotation
        out[:3, 3] = center - rotation @ center + np.asarray(self.shift_mm, dtype=np.float64)
        return out

    def as_dict(self) -> dict[str, list[float]]:
        """JSON-ready record (provenance)."""
        return {k: [round(float(v), 4) for v in value] for k, value in asdict(self).items()}

    def describe(self) -> str:
        """One line for people: rotation, shift and centre."""
        rotate = ", ".join(f"{v:+.1f}" for v in self.rotate_deg)
        shift = ", ".join(f"{v:+.1f}" for v in self.shift_mm)
        center = ", ".join(f"{v:.1f}" for v in self.center_mm)
        return f"rotation ({rotate}) deg about x, y, z at ({center}) mm, shift ({shift}) mm"


def seeded_rng(seed: int, key: str) -> np.random.Generator:
    """A generator fixed by (seed, key): the same volume gets the same draw in every process and run."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def draw_perturbation(seed: int, key: str, max_rotate_deg: float, max_shift_fraction: float,
                      fov_mm: tuple[float, float, float], center_mm: tuple[float, float, float]) -> RigidPerturbation:
    """Angles uniform in +-max_rotate_deg and shifts uniform in +-max_shift_fraction of the field of view
    per axis, drawn from (seed, key)."""
    rng = seeded_rng(seed, key)
    rotate = rng.uniform(-max_rotate_deg, max_rotate_deg, 3)
    shift = rng.uniform(-1.0, 1.0, 3) * max_shift_fraction * np.asarray(fov_mm, dtype=np.float64)
    return RigidPerturbation(rotate_deg=tuple(float(v) for v in rotate), shift_mm=tuple(float(v) for v in shift),
                             center_mm=tuple(float(v) for v in center_mm))


def resample(volume: np.ndarray, affine: np.ndarray, target: Grid, order: int,
             transform: np.ndarray | None = None) -> np.ndarray:
    """`volume` (with voxel-to-world `affine`), moved by the world `transform` if given, sampled on `target`.

    order 0 (nearest) for label maps, 1 (linear) for images and probability maps; outside the
    source volume is 0.
    """
    import nibabel as nib
    from nibabel.processing import resample_from_to

    if transform is None and tuple(volume.shape) == tuple(target.shape) and np.allclose(affine, target.affine):
        return np.asarray(volume, dtype=np.float32)  # already on the target grid: nothing to interpolate
    moved = affine if transform is None else transform @ affine
    source = nib.Nifti1Image(np.asarray(volume, dtype=np.float32), moved)
    out = resample_from_to(source, (target.shape, target.affine), order=order, mode="constant", cval=0.0)
    return np.asarray(out.dataobj, dtype=np.float32)
