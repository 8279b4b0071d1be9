"""Small on-disk datasets for the data tests, one writer per adapter layout (written into tmp_path)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image


def blob_pair(index: int, height: int = 24, width: int = 20, classes: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 image [H,W], uint8 label [H,W]): a bright rectangle per class on a dark background."""
    rng = np.random.default_rng(index)
    image = rng.integers(0, 40, size=(height, width)).astype(np.uint8)
    label = np.zeros((height, width), np.uint8)
    for c in range(1, classes):
        top, left = 2 + 4 * c + index % 3, 2 + 3 * c
        label[top:top + 6, left:left + 7] = c
        image[label == c] = 90 + 60 * c
    return image, label


def write_folder_dataset(root: Path, n: int = 6, colour: bool = False) -> Path:
    """`root/images/*.png` and `root/masks/*.png` with 0/255 binary masks (Kvasir style)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        image, label = blob_pair(i)
        picture = np.stack([image, image // 2, image], axis=-1) if colour else image
        Image.fromarray(picture).save(root / "images" / f"img{i}.png")
        Image.fromarray((label * 255).astype(np.uint8)).save(root / "masks" / f"img{i}.png")
    return root


def write_dataset_json(root: Path, labels: dict[str, int], ending: str, channel: str = "CT") -> None:
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": channel}, "labels": labels, "numTraining": 0, "file_ending": ending}))


def nifti_case(index: int, shape: tuple[int, int, int] = (16, 18, 10)) -> tuple[np.ndarray, np.ndarray]:
    """(float32 volume, uint8 labels 0..2): two nested boxes spanning most slices."""
    volume = np.random.default_rng(index).normal(100.0, 5.0, size=shape).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    label[3:13, 3:15, 1:9] = 1
    label[6:10, 6:11, 3:7] = 2
    volume[label == 1] += 200.0
    volume[label == 2] += 400.0
    return volume, label


def write_nnunet_nifti(root: Path, cases: int = 3, zooms: tuple[float, float, float] = (0.8, 0.9, 2.5)) -> Path:
    """An nnU-Net raw dataset of 3-D NIfTI volumes with 3 classes."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    write_dataset_json(root, {"background": 0, "organ": 1, "lesion": 2}, ".nii.gz")
    affine = np.diag([*zooms, 1.0])
    for i in range(cases):
        volume, label = nifti_case(i)
        nib.save(nib.Nifti1Image(volume, affine), root / "imagesTr" / f"case{i:03d}_0000.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"case{i:03d}.nii.gz")
    return root


def write_nnunet_png(root: Path, cases: int = 5) -> Path:
    """An nnU-Net raw dataset of 2-D PNG cases with 3 classes (label values 0, 1, 2)."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    write_dataset_json(root, {"background": 0, "polyp": 1, "tool": 2}, ".png", channel="endoscopy")
    for i in range(cases):
        image, label = blob_pair(i, classes=3)
        Image.fromarray(image).save(root / "imagesTr" / f"case{i:03d}_0000.png")
        Image.fromarray(label).save(root / "labelsTr" / f"case{i:03d}.png")
    return root


def write_npz_dataset(root: Path, cases: int = 3, slices: int = 4) -> Path:
    """Synapse-style `case0001_slice000.npz` files with float images in [0,1] and labels 0..1."""
    root.mkdir(parents=True)
    for case in range(cases):
        for s in range(slices):
            image, label = blob_pair(10 * case + s)
            np.savez(root / f"case{case:04d}_slice{s:03d}.npz", image=image.astype(np.float32) / 255.0,
                     label=label)
    return root
