"""Read one image, mask or volume file, turning every way it can be wrong into a `DataError`.

Each error names the file, the offending value and how to fix it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from s2s2.pipeline.config.data import DEFAULT_BINARY_THRESHOLD
from s2s2.pipeline.data.geometry import window_scale
from s2s2.pipeline.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
NIFTI_SUFFIXES = (".nii", ".nii.gz")


def file_stem(path: Path) -> str:
    """File name without its (possibly double, `.nii.gz`) extension."""
    name = path.name
    for suffix in (".nii.gz", *IMAGE_SUFFIXES, ".nii", ".npz"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def read_picture(path: Path, is_mask: bool = False) -> np.ndarray:
    """A 2-D picture as [H,W] (grey) or [H,W,3] (colour) array in its own dtype; alpha is dropped.

    A palette ("P") mask keeps its palette indices: VOC-style masks store class ids that way.
    """
    try:
        with Image.open(path) as picture:
            picture.load()
            keep_indices = is_mask and picture.mode == "P"
            if not keep_indices and picture.mode in ("RGBA", "LA", "P", "CMYK", "YCbCr", "HSV", "LAB"):
                picture = picture.convert("RGB" if picture.mode != "LA" else "L")
            array = np.asarray(picture)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DataError(f"is not a readable image ({err.__class__.__name__}: {err})", path,
                        "replace or remove the file (images and masks must be PNG/JPEG/BMP/TIFF)") from None
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3):
        raise DataError(f"has an unexpected shape {array.shape}", path, "save it as a 2-D grey or RGB image")
    return array


def picture_to_image(array: np.ndarray, path: Path) -> np.ndarray:
    """Picture [H,W] or [H,W,3] to float32 [C,H,W] in [0,1], dividing by its dtype's maximum."""
    check_finite(array, path)
    if np.issubdtype(array.dtype, np.integer):
        scaled = array.astype(np.float32) / float(np.iinfo(array.dtype).max)
    elif array.dtype == np.bool_:
        scaled = array.astype(np.float32)
    else:
        scaled = array.astype(np.float32)
        if scaled.size and (scaled.min() < 0.0 or scaled.max() > 1.0):
            lo, hi = float(scaled.min()), float(scaled.max())
            scaled = (scaled - lo) / (hi - lo if hi > lo else 1.0)
    return scaled[None] if scaled.ndim == 2 else np.ascontiguousarray(scaled.transpose(2, 0, 1))


def mask_plane(picture: np.ndarray) -> np.ndarray:
    """A mask picture as one plane: masks saved in colour carry their value in every channel."""
    return picture.max(axis=2) if picture.ndim == 3 else picture


def check_finite(array: np.ndarray, path: Path) -> None:
    """Refuse NaN or infinite values (they would poison scaling and every loss)."""
    if np.issubdtype(np.asarray(array).dtype, np.floating):
        bad = ~np.isfinite(array)
        if bad.any():
            raise DataError(f"holds {int(bad.sum())} NaN/Inf values (of {array.size})", path,
                            "fix or remove the file; NaN/Inf intensities cannot be scaled")


def windowed(values: np.ndarray, window: tuple[float, float], path: Path) -> np.ndarray:
    """`values` with the intensity window mapped to [0, 1]; refuses data that cover only a sliver of the
    window (e.g. already normalised to [0, 1]), which the window would flatten to a near-constant image."""
    low, high = window
    values = np.asarray(values, dtype=np.float32)
    if values.size and float(values.max() - values.min()) < 0.05 * (high - low):
        raise DataError(f"holds intensities in [{values.min():.4g}, {values.max():.4g}], under 5 % of the "
                        f"intensity window [{low:g}, {high:g}]: the data look normalised already", path,
                        "remove data.intensity_window (or set it to the range the data are stored in)")
    return window_scale(values, window)


def unit_intensities(values: np.ndarray, path: Path, window: tuple[float, float] | None) -> np.ndarray:
    """Intensities in [0, 1]: `window` mapped to [0, 1] when given, else the stored values, which must
    already lie in [0, 1] (as in the preprocessed releases of TransUNet's Synapse and SSL4MIS's ACDC)."""
    check_finite(values, path)
    if window is not None:
        return windowed(values, window, path)
    values = np.asarray(values, dtype=np.float32)
    if values.size and (values.min() < -1e-3 or values.max() > 1.0 + 1e-3):
        raise DataError(f"holds intensities in [{values.min():.4g}, {values.max():.4g}], not in [0, 1]", path,
                        "set data.intensity_window to the range that maps to [0, 1] (CT: [-125, 275] HU)")
    return np.clip(values, 0.0, 1.0)


def labels_from_values(values: np.ndarray, class_names: tuple[str, ...], path: Path,
                       binary_threshold: int | None) -> np.ndarray:
    """Turn stored mask values into class ids, refusing values outside the declared classes.

    With two classes, masks whose values exceed 1 (0/255 PNG or JPEG masks) are thresholded. Without
    an explicit threshold, a mask that no value would survive (label ids such as {0, 1, 2, 9}) is
    refused rather than silently read as all background.
    """
    values = np.asarray(values)
    check_finite(values, path)
    if len(class_names) == 2 and values.size and values.max() > 1:
        if binary_threshold is None:
            if values.max() <= DEFAULT_BINARY_THRESHOLD:
                found = [v.item() for v in np.unique(values)]
                raise DataError(f"holds mask values {found[:8]}{' ...' if len(found) > 8 else ''} but two classes "
                                f"are declared {list(class_names)}: thresholded as 0/255 masks at "
                                f"{DEFAULT_BINARY_THRESHOLD}, every pixel would be background", path,
                                "declare every class in data.class_names (class 0 first), or set "
                                "data.binary_threshold explicitly if these are 0/255 masks")
            binary_threshold = DEFAULT_BINARY_THRESHOLD
        return (values > binary_threshold).astype(np.uint8)
    rounded = np.rint(values)
    if values.size and not np.array_equal(rounded, values):
        raise DataError("holds non-integer label values", path, "masks must hold integer class ids")
    unique = np.unique(rounded.astype(np.int64))
    outside = [int(v) for v in unique if v < 0 or v >= len(class_names)]
    if outside:
        raise DataError(f"holds label value(s) {outside[:5]} outside the declared classes "
                        f"0..{len(class_names) - 1} {list(class_names)}", path,
                        "declare every class in data.class_names (class 0 first) or fix the mask")
    return rounded.astype(np.uint8)


def read_nifti_volume(path: Path, reorient: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A NIfTI volume as float32 array, reoriented to RAS (or in its stored array order), with its
    voxel-to-world affine (mm)."""
    import nibabel as nib

    try:
        volume = nib.load(str(path))
        if reorient:
            volume = nib.as_closest_canonical(volume)
        data = np.asarray(volume.dataobj, dtype=np.float32)
        affine = np.asarray(volume.affine, dtype=np.float64)
    except Exception as err:  # nibabel raises many types for corrupt files
        raise DataError(f"is not a readable NIfTI file ({err.__class__.__name__}: {err})", path,
                        "replace or remove the file") from None
    check_finite(data, path)
    return data, affine


def read_nifti(path: Path, reorient: bool = True) -> tuple[np.ndarray, tuple[float, ...]]:
    """A NIfTI volume as float32 array, reoriented to RAS (or in its stored array order), with its voxel sizes (mm)."""
    data, affine = read_nifti_volume(path, reorient)
    return data, tuple(float(z) for z in np.linalg.norm(affine[:3, :3], axis=0))


def read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The `image` and `label` arrays of one `.npz` slice file."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            missing = [key for key in ("image", "label") if key not in arrays.files]
            if missing:
                raise DataError(f"lacks array(s) {missing}; it has {arrays.files}", path,
                                "save each slice with np.savez(path, image=..., label=...)")
            return np.asarray(arrays["image"]), np.asarray(arrays["label"])
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"is not a readable .npz file ({err.__class__.__name__}: {err})", path,
                        "replace or remove the file") from None


def read_h5(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The `image` and `label` datasets of one HDF5 file (TransUNet / SSL4MIS slices and volumes)."""
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            missing = [key for key in ("image", "label") if key not in handle]
            if missing:
                raise DataError(f"lacks dataset(s) {missing}; it has {sorted(handle)}", path,
                                "each file needs the datasets `image` and `label` of the same shape")
            return np.asarray(handle["image"][()]), np.asarray(handle["label"][()])
    except DataError:
        raise
    except Exception as err:  # h5py raises OSError, KeyError, ... for damaged files
        raise DataError(f"is not a readable HDF5 file ({err.__class__.__name__}: {err})", path,
                        "replace or remove the file") from None


def check_pair_shapes(image_shape: tuple[int, ...], mask_shape: tuple[int, ...], image_path: Path,
                      mask_path: Path) -> None:
    """Refuse masks whose dimensionality or spatial size differs from their image's."""
    if len(mask_shape) != len(image_shape):
        raise DataError(f"is a {len(mask_shape)}-D mask {mask_shape} beside the {len(image_shape)}-D image "
                        f"{image_path} {image_shape}", mask_path,
                        "give 2-D masks for 2-D images and 3-D masks for 3-D volumes")
    if tuple(mask_shape) != tuple(image_shape):
        raise DataError(f"has shape {tuple(mask_shape)} but its image {image_path} has {tuple(image_shape)}",
                        mask_path, "image and mask must have the same size")
