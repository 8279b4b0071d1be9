"""The preprocessing a segmenter was trained with, recorded in its model folder and applied to new scans.

`Preprocessing` says what the data pipeline did to the training images (intensity scaling, slice
axis, grid and crop, channels, resizing); `volume_to_model` / `picture_to_model` / `npz_to_model`
apply it to a new input, and `model_to_plane` undoes the geometry on the model's output, so masks
come back at the input's own size and position.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F

from s2s2.pipeline.config.base import StrictModel
from s2s2.pipeline.config.data import BrainTemplate, DataConfig
from s2s2.pipeline.data.geometry import crop_square, pad_box, resize_image, robust_scale
from s2s2.pipeline.data.prepare import LUMINANCE
from s2s2.pipeline.errors import ConfigError



class Preprocessing(StrictModel):
    """What was done to the training images, in order (see the module docstring)."""

    kind: Literal["volume", "picture", "npz"]  # 3-D NIfTI volumes cut into slices, 2-D pictures, npz slices
    adapter: str  # the data adapter the model was trained on
    intensity: Literal["window", "percentile", "dtype"]  # window -> [0,1]; percentiles -> [0,1]; /dtype max
    window: Optional[tuple[float, float]] = None
    percentiles: tuple[float, float] = (0.5, 99.5)
    nonzero_only: bool = False  # percentiles of the nonzero voxels only, zero kept zero (skull-stripped templates)
    axis: int = 2  # slice axis of RAS volumes
    grid_shape: Optional[tuple[int, int, int]] = None  # volumes are resampled onto this RAS grid first
    grid_affine: Optional[list[list[float]]] = None
    crop_box: Optional[tuple[int, int, int, int]] = None  # (top, left, side, side) cut from every slice
    keep_aspect: bool = True  # padded to a square before resizing
    channels: Literal[1, 3] = 1
    size: int = 64
    image_resize: Literal["antialias", "nearest", "linear", "cubic"] = "antialias"


def preprocessing_for(data: DataConfig, channels: int) -> Preprocessing:
    """The preprocessing of `data` as its adapter applies it (the adapters that `predict` can repeat)."""
    window = getattr(data, "intensity_window", None)
    common = dict(adapter=data.adapter, axis=getattr(data, "axis", 2), keep_aspect=data.keep_aspect,
                  channels=channels, size=data.size, image_resize=data.image_resize, window=window)
    if isinstance(data, BrainTemplate):
        if data.resolved_grid() != "icbm152":
            raise ConfigError(f"data.grid={data.grid}: predict repeats brain-template preprocessing on the icbm152 "
                              "grid only; fix: train with data.grid=icbm152")
        from s2s2.pipeline.data.icbm152 import icbm152_reference

        reference = icbm152_reference(data)
        return Preprocessing(kind="volume", intensity="percentile", percentiles=(0.0, 99.5), nonzero_only=True,
                             grid_shape=reference.grid.shape, grid_affine=np.asarray(reference.grid.affine).tolist(),
                             crop_box=reference.box, **common)
    if data.adapter == "nnunet":
        from s2s2.pipeline.data.nnunet import parse_dataset_json
        from s2s2.pipeline.data.readers import NIFTI_SUFFIXES

        volumes = parse_dataset_json(Path(data.root) / "dataset.json").file_ending.lower() in NIFTI_SUFFIXES
        if volumes:
            return Preprocessing(kind="volume", intensity="window" if window else "percentile", **common)
        return Preprocessing(kind="picture", intensity="dtype", **common)
    if data.adapter == "folder":
        return Preprocessing(kind="picture", intensity="dtype", **common)
    if data.adapter == "npz":
        return Preprocessing(kind="npz", intensity="window" if window else "percentile", **common)
    raise ConfigError(f"data.adapter={data.adapter}: predict repeats the preprocessing of the icbm152, spm152, "
                      "nnunet, folder and npz adapters; export models trained on those")


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """[C,H,W] with C in (1, 3) converted to `channels` as the data pipeline does (grey repeated, RGB -> luma)."""
    if image.shape[0] == channels:
        return image
    if channels == 3:
        return np.repeat(image, 3, axis=0)
    return np.tensordot(LUMINANCE, image, axes=1)[None].astype(np.float32)


def model_box(plane_shape: tuple[int, int], prep: Preprocessing) -> tuple[int, int, int, int]:
    """The square (top, left, side, side) of a plane that is resized to the model's input."""
    if prep.crop_box is not None:
        return prep.crop_box
    if prep.keep_aspect:
        return pad_box(plane_shape)
    return (0, 0, *plane_shape)


def plane_to_model(image: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """One scaled image [C,H,W] -> the model's input [channels,size,size] (crop or pad, then resize)."""
    box = model_box(image.shape[-2:], prep)
    return resize_image(crop_square(to_channels(image, prep.channels), box), prep.size, prep.image_resize)


def model_to_plane(probabilities: np.ndarray, plane_shape: tuple[int, int], prep: Preprocessing) -> np.ndarray:
    """Class probabilities [K,size,size] -> [K,H,W] on the input plane: resized (bilinear) back to the box,
    the box placed where it was cut; outside it the background (class 0) has probability 1."""
    top, left, height, width = model_box(plane_shape, prep)
    resized = F.interpolate(torch.from_numpy(np.ascontiguousarray(probabilities))[None], size=(height, width),
                            mode="bilinear", align_corners=False)[0].numpy()
    out = np.zeros((probabilities.shape[0], *plane_shape), np.float32)
    out[0] = 1.0
    rows = slice(max(top, 0), min(top + height, plane_shape[0]))
    cols = slice(max(left, 0), min(left + width, plane_shape[1]))
    out[:, rows, cols] = resized[:, rows.start - top:rows.stop - top, cols.start - left:cols.stop - left]
    return out


def scale_volume(volume: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """Intensities of one channel volume to [0, 1] as at training."""
    if prep.intensity == "window":
        low, high = prep.window
        return np.clip((volume.astype(np.float32) - low) / (high - low), 0.0, 1.0).astype(np.float32)
    if prep.nonzero_only:
        inside = volume > 0
        scaled = robust_scale(volume, inside, low_pct=prep.percentiles[0], high_pct=prep.percentiles[1])
        return np.where(inside, scaled, 0.0).astype(np.float32)
    return robust_scale(volume, low_pct=prep.percentiles[0], high_pct=prep.percentiles[1])


def volume_planes(volume: np.ndarray, axis: int) -> list[np.ndarray]:
    """Every slice of a [C,X,Y,Z] RAS volume along `axis` as [C,rows,cols], oriented as at training."""
    from s2s2.pipeline.data.geometry import volume_slice

    moved = np.moveaxis(volume, 0, -1)  # channels last, as `volume_slice` keeps trailing axes
    return [np.ascontiguousarray(np.moveaxis(volume_slice(moved, axis, i), -1, 0))
            for i in range(volume.shape[axis + 1])]


def place_plane(volume: np.ndarray, axis: int, index: int, plane: np.ndarray) -> None:
    """Write a [..., rows, cols] plane back at `index` along `axis` of a [..., X, Y, Z] volume
    (the inverse of `volume_slice`)."""
    restored = np.swapaxes(np.flip(plane, axis=-2), -2, -1)
    where = [slice(None)] * volume.ndim
    where[volume.ndim - 3 + axis] = index
    volume[tuple(where)] = restored
