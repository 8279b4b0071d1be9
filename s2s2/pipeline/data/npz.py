"""`npz` adapter: one `.npz` per 2-D slice holding `image` and `label` arrays (TransUNet Synapse style)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from s2s2.pipeline.config.data import NpzData
from s2s2.pipeline.data.geometry import robust_scale
from s2s2.pipeline.data.pairing import case_of, require_folder
from s2s2.pipeline.data.raw import RawDataset, RawSlice
from s2s2.pipeline.data.readers import check_finite, check_pair_shapes, labels_from_values, read_npz, windowed
from s2s2.pipeline.errors import DataError


def npz_image(image: np.ndarray, path: Path, window: tuple[float, float] | None = None) -> np.ndarray:
    """[H,W] or [H,W,3] slice -> float32 [C,H,W] in [0,1]: `window` mapped to [0,1] when given, else
    data outside [0,1] is scaled per slice (0.5-99.5 %)."""
    if image.ndim == 3 and image.shape[2] == 3:
        image = image.transpose(2, 0, 1)
    elif image.ndim == 2:
        image = image[None]
    else:
        raise DataError(f"holds an image of shape {image.shape}; npz slices must be [H,W] or [H,W,3]", path,
                        "store one 2-D slice per file (cut volumes with the nnunet adapter instead)")
    check_finite(image, path)
    if window is not None:
        return windowed(image, window, path)
    image = image.astype(np.float32)
    if image.size and (image.min() < 0.0 or image.max() > 1.0):
        image = robust_scale(image, low_pct=0.5, high_pct=99.5)
    return image


def load_npz(cfg: NpzData) -> RawDataset:
    """Read every `*.npz` in `cfg.root`; slices named `<case>_slice<N>` are grouped by case for the split."""
    root = require_folder(Path(cfg.root), "npz dataset folder", "set data.root to a folder of .npz slice files")
    class_names = cfg.default_class_names()
    slices = []
    for path in sorted(root.glob("*.npz")):
        image, label = read_npz(path)
        if label.ndim != 2:
            raise DataError(f"holds a {label.ndim}-D label {label.shape} beside the image {image.shape}", path,
                            "npz slices need a 2-D label [H,W] of class ids matching the image")
        check_pair_shapes(image.shape[:2], label.shape, path, path)
        slices.append(RawSlice(id=path.stem, image=npz_image(image, path, cfg.intensity_window),
                               mask=labels_from_values(label, class_names, path, cfg.binary_threshold),
                               spacing=(1.0, 1.0), case=case_of(path.stem, cfg.group_regex)))
    return RawDataset(name=f"npz:{root.name}", slices=slices, class_names=class_names,
                      modality=cfg.resolved_modality(), source={"root": str(root.resolve())})
