"""Pure array helpers shared by the adapters: intensity scaling, slicing, cropping, padding, resizing.

Kept free of file I/O so they can be tested on small arrays.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

SPLINE_ORDER = {"nearest": 0, "linear": 1, "cubic": 3}


def robust_scale(values: np.ndarray, region: np.ndarray | None = None, low_pct: float = 0.0,
                 high_pct: float = 99.5) -> np.ndarray:
    """Map intensities to [0,1]: percentiles `low_pct`/`high_pct` of `region` (or all) go to 0/1, then clip.

    A high percentile rather than the maximum keeps a few bright voxels from darkening everything.
    """
    values = np.asarray(values, dtype=np.float32)
    reference = values[region] if region is not None and region.any() else values.reshape(-1)
    low, high = np.percentile(reference, [low_pct, high_pct]) if reference.size else (0.0, 1.0)
    if high <= low:
        high = low + 1.0
    return np.clip((values - low) / (high - low), 0.0, 1.0).astype(np.float32)


def window_scale(values: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Map the intensity window [low, high] linearly to [0, 1] and clip (e.g. CT HU [-125, 275])."""
    low, high = window
    return np.clip((np.asarray(values, dtype=np.float32) - low) / (high - low), 0.0, 1.0).astype(np.float32)


def min_max_scale(values: np.ndarray) -> np.ndarray:
    """Map the minimum to 0 and the maximum to 1 (a constant array becomes 0)."""
    values = np.asarray(values, dtype=np.float32)
    low, high = float(values.min()), float(values.max())
    return ((values - low) / (high - low if high > low else 1.0)).astype(np.float32)


def volume_slice(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """Slice `index` of a RAS volume [X,Y,Z,...] along `axis`, rotated so anterior/superior is up.

    Trailing axes (channels) are kept: the result is [rows, cols, ...].
    """
    plane = np.take(volume, index, axis=axis)
    return np.flip(np.swapaxes(plane, 0, 1), axis=0)


def slice_spacing(zooms: tuple[float, ...], axis: int) -> tuple[float, float]:
    """In-plane (row, col) pixel spacing of a slice cut by `volume_slice` from a volume with `zooms`."""
    first, second = [float(z) for i, z in enumerate(zooms[:3]) if i != axis]
    return second, first


def square_box(foreground: np.ndarray, margin: int) -> tuple[int, int, int, int]:
    """(top, left, side, side) of a square around the True pixels of a 2-D array, plus `margin`.

    The square may reach outside the array; `crop_square` pads those parts with zeros.
    """
    rows = np.flatnonzero(foreground.any(axis=1))
    cols = np.flatnonzero(foreground.any(axis=0))
    if rows.size == 0:
        return 0, 0, max(foreground.shape), max(foreground.shape)
    top, bottom = int(rows[0]) - margin, int(rows[-1]) + 1 + margin
    left, right = int(cols[0]) - margin, int(cols[-1]) + 1 + margin
    side = max(bottom - top, right - left)
    top -= (side - (bottom - top)) // 2
    left -= (side - (right - left)) // 2
    return top, left, side, side


def crop_square(array: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Cut `box` (top, left, height, width) from the last two axes of `array`, zero-padding outside it."""
    top, left, height, width = box
    out = np.zeros(array.shape[:-2] + (height, width), dtype=array.dtype)
    src_top, src_left = max(top, 0), max(left, 0)
    src_bottom = min(top + height, array.shape[-2])
    src_right = min(left + width, array.shape[-1])
    if src_bottom > src_top and src_right > src_left:
        out[..., src_top - top:src_bottom - top, src_left - left:src_right - left] = \
            array[..., src_top:src_bottom, src_left:src_right]
    return out


def pad_box(shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """The centred square box that pads an image of `shape` (H, W) to max(H, W) on both sides."""
    height, width = shape
    side = max(height, width)
    return -((side - height) // 2), -((side - width) // 2), side, side


def zoom_plane(plane: np.ndarray, size: int, order: int) -> np.ndarray:
    """Resize one 2-D plane to [size,size] with scipy's spline zoom, as the TransUNet code does."""
    rows, cols = plane.shape
    return ndimage.zoom(plane, (size / rows, size / cols), order=order)


def resize_image(image: np.ndarray, size: int, method: str = "antialias") -> np.ndarray:
    """Resize float32 [C,H,W] to [C,size,size].

    `antialias` (default): bilinear with antialiasing (area-like on shrink). `nearest`, `linear`,
    `cubic`: spline zoom of order 0/1/3, clipped to [0,1] (cubic splines overshoot at edges).
    """
    if image.shape[1:] == (size, size):
        return image.astype(np.float32)
    if method != "antialias":
        planes = [zoom_plane(plane.astype(np.float32), size, SPLINE_ORDER[method]) for plane in image]
        return np.clip(np.stack(planes), 0.0, 1.0).astype(np.float32)
    planes = [np.asarray(Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32), mode="F")
                         .resize((size, size), Image.Resampling.BILINEAR)) for plane in image]
    return np.stack(planes).astype(np.float32)


def resize_mask(mask: np.ndarray, size: int, num_classes: int, method: str = "majority") -> np.ndarray:
    """Resize an integer mask [H,W] to [size,size].

    `majority` (default): argmax of the per-class resampled one-hot maps; unlike nearest neighbour
    this follows the same (antialiased) filter as the image, so thin structures and borders stay
    where the image puts them when shrinking a lot. `nearest`: spline zoom of order 0.
    """
    if mask.shape == (size, size):
        return mask.astype(np.uint8)
    if method == "nearest":
        return zoom_plane(mask.astype(np.uint8), size, 0)
    one_hot = np.stack([(mask == c).astype(np.float32) for c in range(num_classes)])
    return np.argmax(resize_image(one_hot, size), axis=0).astype(np.uint8)
