"""Human-readable views of a prepared dataset: a text summary and a PNG grid with mask overlays."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from s2s2.pipeline.data.prepared import SPLITS, PreparedDataset
from s2s2.pipeline.data.world import RigidPerturbation
from s2s2.pipeline.errors import DataError
from s2s2.pipeline.viz import overlay_mask, save_grid, to_rgb_uint8


def class_pixel_counts(dataset: PreparedDataset, indices: list[int]) -> dict[str, int]:
    """Pixels per class name over the samples `indices`."""
    counts = np.bincount(dataset.masks[indices].ravel(), minlength=dataset.num_classes) if indices else \
        np.zeros(dataset.num_classes, dtype=np.int64)
    return {name: int(count) for name, count in zip(dataset.class_names, counts)}


def describe(dataset: PreparedDataset, folder: Path | None = None) -> str:
    """Summary lines: samples per split, class pixel shares, geometry, fingerprint, cache folder."""
    spacing = [round(float(v), 3) for v in dataset.spacings.mean(axis=0)]
    volumes = len({dataset.cases[i] for i in range(len(dataset)) if dataset.is_volume_slice(i)})
    lines = [f"dataset     {dataset.name} ({dataset.modality})",
             f"samples     {len(dataset)}: " + ", ".join(f"{name} {len(dataset.indices(name))}" for name in SPLITS)
             + (f"; slices of {volumes} volume(s)" if volumes else "; 2-D images"),
             f"image shape {dataset.image_shape} (C,H,W), mean spacing {spacing} {dataset.spacing_unit}"]
    counts = class_pixel_counts(dataset, dataset.indices("all"))
    total = max(sum(counts.values()), 1)
    lines.append("classes     " + ", ".join(f"{i} {name}: {count} px ({count / total:.1%})"
                                            for i, (name, count) in enumerate(counts.items())))
    if dataset.grid:
        lines.append(f"grid        {dataset.grid}")
    for volume, motion in dataset.perturbations.items():
        lines.append(f"perturbed   {volume}: {RigidPerturbation(**motion).describe()}")
    lines.append(f"fingerprint {dataset.fingerprint()}")
    if folder is not None:
        lines.append(f"cache       {folder}")
    return "\n".join(lines)


def show_grid(dataset: PreparedDataset, split: str, n: int, out: Path, columns: int = 6,
              scale: int = 3) -> list[int]:
    """Write pairs (image | image with mask overlay) of `n` samples spread evenly over `split`; returns them."""
    indices = dataset.indices(split)
    if not indices:
        raise DataError(f"split {split!r} of dataset {dataset.name} is empty", None,
                        f"choose one of {[s for s in SPLITS if dataset.indices(s)]} with --split")
    picks = [indices[int(i)] for i in np.unique(np.linspace(0, len(indices) - 1, num=min(n, len(indices))).round())]
    tiles = []
    for index in picks:
        tiles.append(to_rgb_uint8(dataset.images[index]))
        tiles.append(overlay_mask(dataset.images[index], dataset.masks[index], dataset.num_classes, alpha=0.45))
    per_row = 2 * columns
    rows = [tiles[i:i + per_row] for i in range(0, len(tiles), per_row)]
    row_titles = [dataset.ids[picks[i // 2]] for i in range(0, len(tiles), per_row)]
    save_grid(rows, out, row_titles=row_titles, col_titles=["image", "mask"] * min(columns, len(picks)),
              scale=scale, legend=dataset.class_names)
    return picks


def data_notice(adapter: str) -> str | None:
    """The licence notice that must accompany a dataset built from third-party files, if any."""
    from s2s2.pipeline.data.adapters import ADAPTERS

    return ADAPTERS[adapter].notice
