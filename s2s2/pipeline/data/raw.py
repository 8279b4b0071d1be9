"""What every adapter returns: 2-D slices at their native size, before resizing and splitting."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class RawSlice:
    """One 2-D case at native resolution; `case` and `position` drive the split."""

    id: str
    image: np.ndarray  # float32 [C, H, W] in [0, 1]
    mask: np.ndarray  # integer [H, W], ids 0..num_classes-1 (already checked)
    spacing: tuple[float, float]  # (row, col) pixel size in mm at native resolution
    case: str  # slices of one case (volume, patient) always land in one split
    position: int = 0  # slice index inside its volume (slab splits, volume metrics)
    thickness: float = 0.0  # distance (mm) to the next slice of its volume; 0: a 2-D image, not a slice
    split: str | None = None  # a split fixed by the data's own lists (train/val/test); None = assigned


@dataclass
class RawDataset:
    """An adapter's output: the slices, what they show, and where the data came from."""

    name: str
    slices: list[RawSlice]
    class_names: tuple[str, ...]
    modality: str
    fixed_split: str | None = None  # e.g. "test": an out-of-domain set is all test
    source: dict[str, object] = field(default_factory=dict)  # provenance recorded in provenance.json
    spacing_unit: str = "px"  # "mm" when the files say how large a pixel is, else original pixels
    grid: str = ""  # non-empty: slices of datasets with the same grid share positions and pixels
    perturbations: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # volume -> rigid motion applied
