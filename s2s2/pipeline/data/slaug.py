"""`slaug` adapter: the processed NIfTI volumes that SLAug (and CSDG before it) distribute.

    abdominal: ROOT/<SABSCT|CHAOST2>/processed/image_<id>.nii.gz + label_<id>.nii.gz  (ROOT = data/abdominal)
    cardiac:   ROOT/<bSSFP|LGE>/image_<id>.nii.gz + label_<id>.nii.gz               (ROOT = data/cardiac/processed)

Slices are read along the third array axis without reorientation, in the same array order as
SLAug's SimpleITK reader, and every slice is kept. Intensities: `data.intensity_window` if set,
else each volume's minimum and maximum map to 0 and 1 (SLAug z-scores instead; a linear map).

Splits follow SLAug's loaders. Abdominal: scan ids sorted numerically, the first 20 % test, the
next 10 % val, the rest (70 %) train. Cardiac: bSSFP trains on scans 1-35 and LGE on 6-45; SLAug
evaluates those same scans when the domain is the target (here: `eval_split: train`) and reports
bSSFP 36-45 / LGE 1-5 as in-domain, which are the test split here (no validation split: SLAug
tests the last checkpoint).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from s2s2.pipeline.config.data import SlaugData
from s2s2.pipeline.data.geometry import min_max_scale
from s2s2.pipeline.data.pairing import require_folder
from s2s2.pipeline.data.raw import RawDataset, RawSlice
from s2s2.pipeline.data.readers import check_pair_shapes, labels_from_values, read_nifti, windowed
from s2s2.pipeline.errors import DataError

_IMAGE = re.compile(r"^image_(?P<scan>\d+)\.nii\.gz$")
CARDIAC = ("bSSFP", "LGE")


def abdominal_split(scans: list[int]) -> dict[int, str]:
    """SLAug's `__get_scanids`: sorted ids; test = first n - round(0.7n) - floor(0.1n), then val, then train."""
    ordered = sorted(scans)
    n = len(ordered)
    n_train, n_val = round(n * 0.7), math.floor(n * 0.1)
    n_test = n - n_train - n_val
    labels = ["test"] * n_test + ["val"] * n_val + ["train"] * n_train
    return dict(zip(ordered, labels))


def cardiac_split(domain: str, scan: int) -> str | None:
    """Training scans as SLAug lists them; its validation scans are the test split here; others unused."""
    train = range(1, 36) if domain == "bSSFP" else range(6, 46)
    held = range(36, 46) if domain == "bSSFP" else range(1, 6)
    if scan in train:
        return "train"
    return "test" if scan in held else None


def domain_folder(root: Path, domain: str) -> Path:
    """ROOT/<domain>/processed (abdominal) or ROOT/<domain> (cardiac), whichever holds the volumes."""
    for folder in (root / domain / "processed", root / domain):
        if folder.is_dir() and any(folder.glob("image_*.nii.gz")):
            return folder
    require_folder(root, "SLAug data folder", "set data.root to SLAug's data/abdominal or data/cardiac/processed")
    raise DataError(f"has no image_<id>.nii.gz files in {domain}/processed/ or {domain}/", root,
                    "set data.root to SLAug's data/abdominal (SABSCT, CHAOST2) or data/cardiac/processed "
                    "(bSSFP, LGE) and data.domain to the domain folder's name")


def read_volume(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """A 3-D NIfTI volume in its stored array order (no reorientation) as float32, and its voxel sizes."""
    data, zooms = read_nifti(path, reorient=False)
    if data.ndim != 3:
        raise DataError(f"is a {data.ndim}-D volume {data.shape}; SLAug volumes are 3-D", path,
                        "use SLAug's processed image_<id>.nii.gz files")
    return data, zooms


def load_slaug(cfg: SlaugData) -> RawDataset:
    """Every slice of every scan of `cfg.domain` with SLAug's split."""
    domain = str(cfg.domain)
    folder = domain_folder(Path(cfg.root), domain)
    scans = {int(m["scan"]): p for p in folder.iterdir() if (m := _IMAGE.match(p.name))}
    splits = ({scan: cardiac_split(domain, scan) for scan in scans} if domain in CARDIAC
              else abdominal_split(list(scans)))
    class_names = cfg.default_class_names()
    slices: list[RawSlice] = []
    for scan in sorted(scans):
        if splits[scan] is None:
            continue
        image_path = scans[scan]
        label_path = folder / f"label_{scan}.nii.gz"
        if not label_path.is_file():
            raise DataError(f"has no label file {label_path.name} beside it", image_path,
                            "every image_<id>.nii.gz needs its label_<id>.nii.gz")
        volume, zooms = read_volume(image_path)
        labels, _ = read_volume(label_path)
        check_pair_shapes(volume.shape, labels.shape, image_path, label_path)
        volume = windowed(volume, cfg.intensity_window, image_path) if cfg.intensity_window else min_max_scale(volume)
        labels = labels_from_values(labels, class_names, label_path, cfg.binary_threshold)
        for z in range(volume.shape[2]):  # array [x, y, z]; slice z transposed = SimpleITK's [z] plane
            slices.append(RawSlice(id=f"{domain}_{scan}_{z}", image=np.ascontiguousarray(volume[:, :, z].T[None]),
                                   mask=np.ascontiguousarray(labels[:, :, z].T), spacing=(zooms[1], zooms[0]),
                                   case=f"{domain}_{scan}", position=z, thickness=zooms[2], split=splits[scan]))
    return RawDataset(name=f"slaug:{domain}", slices=slices, class_names=class_names,
                      modality=cfg.resolved_modality(), source={"root": str(Path(cfg.root).resolve())},
                      spacing_unit="mm")
