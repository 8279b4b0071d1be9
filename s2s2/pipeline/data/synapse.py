"""`synapse` adapter: the Synapse multi-organ CT data as TransUNet releases it.

    ROOT/train_npz/case0005_slice000.npz   one 512x512 slice per file: `image` in [0,1], `label` 0..8
    ROOT/test_vol_h5/case0001.npy.h5       one volume per file: `image` and `label` [D,512,512]
    ROOT/lists_Synapse/train.txt           slice names of the training split (optional; also
    ROOT/lists_Synapse/test_vol.txt        accepted under ROOT/lists/lists_Synapse/)

Training slices are the train split, every slice of every test volume the test split (TransUNet
has no validation split). Every slice is kept, empty ones included, as the authors' loaders do.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from s2s2.pipeline.config.data import SynapseData
from s2s2.pipeline.data.pairing import require_folder
from s2s2.pipeline.data.raw import RawDataset, RawSlice
from s2s2.pipeline.data.readers import check_pair_shapes, labels_from_values, read_h5, read_npz, unit_intensities
from s2s2.pipeline.errors import DataError

_SLICE_NAME = re.compile(r"^(?P<case>.+?)_slice_?(?P<index>\d+)$")
TEST_SUFFIX = ".npy.h5"


def list_file(root: Path, name: str) -> Path | None:
    """`lists_Synapse/<name>` under ROOT or ROOT/lists, if present."""
    for folder in (root / "lists_Synapse", root / "lists" / "lists_Synapse"):
        if (folder / name).is_file():
            return folder / name
    return None


def listed_names(root: Path, name: str, available: dict[str, Path], folder: Path) -> list[str]:
    """The names of list file `name` (all available files when there is no list), each checked to exist."""
    path = list_file(root, name)
    if path is None:
        return sorted(available)
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    missing = [n for n in names if n not in available]
    if missing:
        raise DataError(f"lists {len(missing)} file(s) that {folder} lacks, e.g. {missing[:3]}", path,
                        f"put every listed file into {folder} or remove the list to use all files")
    return names


def load_synapse(cfg: SynapseData) -> RawDataset:
    """Training slices from train_npz/ and every slice of the test volumes in test_vol_h5/."""
    root = require_folder(Path(cfg.root), "Synapse folder",
                          "set data.root to the folder holding train_npz/ and test_vol_h5/ (TransUNet's release)")
    train_dir = require_folder(root / "train_npz", "training slice folder", "put the .npz slices in ROOT/train_npz/")
    test_dir = require_folder(root / "test_vol_h5", "test volume folder", "put the .npy.h5 volumes in ROOT/test_vol_h5/")
    class_names = cfg.default_class_names()
    slices: list[RawSlice] = []
    train_files = {p.stem: p for p in train_dir.glob("*.npz")}
    for name in listed_names(root, "train.txt", train_files, train_dir):
        path = train_files[name]
        image, label = read_npz(path)
        check_pair_shapes(image.shape, label.shape, path, path)
        match = _SLICE_NAME.match(name)
        slices.append(RawSlice(id=name, image=unit_intensities(image, path, cfg.intensity_window)[None],
                               mask=labels_from_values(label, class_names, path, cfg.binary_threshold),
                               spacing=(1.0, 1.0), case=match["case"] if match else name,
                               position=int(match["index"]) if match else 0, split="train"))
    test_files = {p.name[: -len(TEST_SUFFIX)]: p for p in test_dir.glob("*" + TEST_SUFFIX)}
    for name in listed_names(root, "test_vol.txt", test_files, test_dir):
        path = test_files[name]
        volume, labels = read_h5(path)
        check_pair_shapes(volume.shape, labels.shape, path, path)
        if volume.ndim != 3:
            raise DataError(f"holds a {volume.ndim}-D image {volume.shape}; test volumes are [D,H,W]", path,
                            "use TransUNet's test_vol_h5 files (one volume per file)")
        volume = unit_intensities(volume, path, cfg.intensity_window)
        labels = labels_from_values(labels, class_names, path, cfg.binary_threshold)
        for index in range(volume.shape[0]):
            slices.append(RawSlice(id=f"{name}_slice{index:03d}", image=np.ascontiguousarray(volume[index][None]),
                                   mask=np.ascontiguousarray(labels[index]), spacing=(1.0, 1.0), case=name,
                                   position=index, thickness=1.0, split="test"))  # no spacing: voxel units
    return RawDataset(name=f"synapse:{root.name}", slices=slices, class_names=class_names,
                      modality=cfg.resolved_modality(), source={"root": str(root.resolve())})
