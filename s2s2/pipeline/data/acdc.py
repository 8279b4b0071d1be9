"""`acdc` adapter: ACDC cardiac MRI as SSL4MIS-style HDF5 files, split as the TransUNet-S2S2 code does.

    ROOT/ACDC_training_slices/patient031_frame01_slice_0.h5   one slice: `image` [H,W] in [0,1], `label`
    ROOT/ACDC_training_volumes/patient001_frame01.h5          one volume: `image`, `label` [D,H,W]

Patients 1-20 are the test split and 21-30 the validation split (every slice of their volumes);
patients 31-100 train from their slice files (cut from their volumes when there is no slice folder).
Labels: 1 right ventricle, 2 myocardium, 3 left ventricle (ACDC's coding). Every slice is kept.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from s2s2.pipeline.config.data import AcdcData
from s2s2.pipeline.data.pairing import require_folder
from s2s2.pipeline.data.raw import RawDataset, RawSlice
from s2s2.pipeline.data.readers import check_pair_shapes, labels_from_values, read_h5, unit_intensities
from s2s2.pipeline.errors import DataError

_NAME = re.compile(r"^patient(?P<patient>\d+)_frame\d+(_slice_(?P<index>\d+))?$")
SLICES, VOLUMES = "ACDC_training_slices", "ACDC_training_volumes"


def acdc_split(patient: int) -> str:
    """Split of a patient number: 1-20 test, 21-30 val, 31-100 train (the authors' `_get_ids`)."""
    if patient <= 20:
        return "test"
    return "val" if patient <= 30 else "train"


def _name_parts(path: Path) -> tuple[str, int, int]:
    """(volume name, patient number, slice index) of an ACDC h5 file name."""
    match = _NAME.match(path.name[: -len(".h5")])
    if match is None:
        raise DataError("is not named patientNNN_frameNN[_slice_N].h5", path,
                        "keep the SSL4MIS file names (the patient number decides the split)")
    volume = path.name[: -len(".h5")].split("_slice_")[0]
    return volume, int(match["patient"]), int(match["index"] or 0)


def _slice(image: np.ndarray, label: np.ndarray, path: Path, cfg: AcdcData, class_names: tuple[str, ...],
           name: str, volume: str, index: int, split: str) -> RawSlice:
    return RawSlice(id=name, image=unit_intensities(image, path, cfg.intensity_window)[None],
                    mask=labels_from_values(label, class_names, path, cfg.binary_threshold), spacing=(1.0, 1.0),
                    case=volume, position=index, thickness=1.0, split=split)  # no spacing: voxel units


def load_acdc(cfg: AcdcData) -> RawDataset:
    """Training slices from the slice folder, validation and test slices cut from the volume folder."""
    root = require_folder(Path(cfg.root), "ACDC folder",
                          f"set data.root to the folder holding {VOLUMES}/ (and {SLICES}/), as SSL4MIS prepares it")
    volume_dir = require_folder(root / VOLUMES, "ACDC volume folder", f"put the volume .h5 files in ROOT/{VOLUMES}/")
    slice_dir = root / SLICES
    class_names = cfg.default_class_names()
    slices: list[RawSlice] = []
    for path in sorted(volume_dir.glob("*.h5")):
        volume, patient, _ = _name_parts(path)
        split = acdc_split(patient)
        if split == "train" and slice_dir.is_dir():
            continue  # training slices come from the slice folder
        image, label = read_h5(path)
        check_pair_shapes(image.shape, label.shape, path, path)
        if image.ndim != 3:
            raise DataError(f"holds a {image.ndim}-D image {image.shape}; volumes are [D,H,W]", path,
                            f"put volumes in {VOLUMES}/ and single slices in {SLICES}/")
        for index in range(image.shape[0]):
            slices.append(_slice(image[index], label[index], path, cfg, class_names, f"{volume}_slice_{index}",
                                 volume, index, split))
    if slice_dir.is_dir():
        for path in sorted(slice_dir.glob("*.h5")):
            volume, patient, index = _name_parts(path)
            if acdc_split(patient) != "train":
                continue
            image, label = read_h5(path)
            check_pair_shapes(image.shape, label.shape, path, path)
            if image.ndim != 2:
                raise DataError(f"holds a {image.ndim}-D image {image.shape}; slice files are [H,W]", path,
                                f"put single slices in {SLICES}/ and volumes in {VOLUMES}/")
            slices.append(_slice(image, label, path, cfg, class_names, path.name[: -len(".h5")], volume, index,
                                 "train"))
    return RawDataset(name=f"acdc:{root.name}", slices=slices, class_names=class_names,
                      modality=cfg.resolved_modality(), source={"root": str(root.resolve())})
