"""Tiny fake copies of the paper's datasets, each in the layout of its public release (written into tmp_path)."""

from __future__ import annotations

from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
from PIL import Image


def organ_slice(seed: int, shape: tuple[int, int], classes: int, empty: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(float32 image in [0,1], uint8 label): one box per class, brighter with the class id."""
    rng = np.random.default_rng(seed)
    image = rng.uniform(0.0, 0.15, shape).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    if not empty:
        rows, cols = shape
        for c in range(1, classes):
            top, left = (2 + 3 * c + seed % 3) % (rows - 6), (2 + 5 * c) % (cols - 6)
            label[top:top + 5, left:left + 5] = c
        image[label > 0] = 0.3 + 0.6 * label[label > 0] / classes
    return image, label


def write_synapse(root: Path) -> Path:
    """TransUNet's layout: train_npz/ slices, test_vol_h5/ volumes, lists_Synapse/ (one slice left unlisted)."""
    (root / "train_npz").mkdir(parents=True)
    (root / "test_vol_h5").mkdir()
    (root / "lists_Synapse").mkdir()
    names = []
    for case in (5, 6, 7):
        for index in range(2):
            name = f"case{case:04d}_slice{index:03d}"
            image, label = organ_slice(10 * case + index, (40, 40), 9)
            np.savez(root / "train_npz" / f"{name}.npz", image=image, label=label.astype(np.float32))
            names.append(name)
    (root / "lists_Synapse" / "train.txt").write_text("\n".join(names[:-1]) + "\n")  # the last slice is not listed
    for case in (1, 2):
        pairs = [organ_slice(100 + 10 * case + z, (40, 40), 9, empty=z == 0) for z in range(3)]
        with h5py.File(root / "test_vol_h5" / f"case{case:04d}.npy.h5", "w") as handle:
            handle["image"] = np.stack([p[0] for p in pairs])
            handle["label"] = np.stack([p[1] for p in pairs]).astype(np.float32)
    (root / "lists_Synapse" / "test_vol.txt").write_text("case0001\ncase0002\n")
    return root


def write_acdc(root: Path) -> Path:
    """SSL4MIS's layout: ACDC_training_volumes/ for every patient, ACDC_training_slices/ (any patient)."""
    (root / "ACDC_training_volumes").mkdir(parents=True)
    (root / "ACDC_training_slices").mkdir()
    for patient in (1, 2, 21, 31, 32, 33):
        pairs = [organ_slice(patient * 10 + z, (36, 40), 4) for z in range(3)]
        name = f"patient{patient:03d}_frame01"
        with h5py.File(root / "ACDC_training_volumes" / f"{name}.h5", "w") as handle:
            handle["image"] = np.stack([p[0] for p in pairs])
            handle["label"] = np.stack([p[1] for p in pairs])
        for z, (image, label) in enumerate(pairs):
            with h5py.File(root / "ACDC_training_slices" / f"{name}_slice_{z}.h5", "w") as handle:
                handle["image"], handle["label"] = image, label
    return root


def write_polyps(root: Path, image_dir: str, mask_dir: str, suffix: str, n: int = 12) -> Path:
    """Kvasir-SEG (images/, masks/, .jpg) or CVC-ClinicDB (Original/, Ground Truth/, .tif): RGB + 0/255 masks."""
    (root / image_dir).mkdir(parents=True)
    (root / mask_dir).mkdir()
    rng = np.random.default_rng(len(suffix))
    for i in range(n):
        height, width = 30 + 2 * (i % 3), 36
        yy, xx = np.mgrid[:height, :width]
        polyp = np.hypot(yy - rng.uniform(10, 20), xx - rng.uniform(12, 24)) < rng.uniform(5, 8)
        image = np.empty((height, width, 3), np.float32)
        image[:] = (200, 120, 120)
        image[polyp] = (140, 40, 50)
        image += rng.normal(0, 6, image.shape)
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / image_dir / f"{i + 1}{suffix}")
        Image.fromarray((polyp * 255).astype(np.uint8)).save(root / mask_dir / f"{i + 1}{suffix}")
    return root


def write_kvasir(root: Path) -> Path:
    return write_polyps(root, "images", "masks", ".jpg")


def write_cvc(root: Path) -> Path:
    return write_polyps(root, "Original", "Ground Truth", ".tif")


def write_slaug_domain(root: Path, domain: str, scans: list[int], classes: int, low: float, high: float,
                       shape: tuple[int, int, int] = (32, 28, 3)) -> Path:
    """SLAug's processed layout: <domain>/processed/ (abdominal) or <domain>/ (cardiac) image_/label_<id>.nii.gz,
    intensities stored in [low, high] (CT: the HU window; MRI: raw values)."""
    folder = root / domain / ("processed" if domain in ("SABSCT", "CHAOST2") else "")
    folder.mkdir(parents=True, exist_ok=True)
    for scan in scans:
        pairs = [organ_slice(scan * 10 + z, shape[:2], classes) for z in range(shape[2])]
        volume = np.stack([p[0] for p in pairs], axis=-1) * (high - low) + low  # [x, y, z]
        labels = np.stack([p[1] for p in pairs], axis=-1)
        nib.save(nib.Nifti1Image(volume.astype(np.float32), np.diag([1.25, 1.25, 7.7, 1.0])),
                 folder / f"image_{scan}.nii.gz")
        nib.save(nib.Nifti1Image(labels, np.diag([1.25, 1.25, 7.7, 1.0])), folder / f"label_{scan}.nii.gz")
    return root


def write_slaug_abdominal(root: Path) -> Path:
    """SABSCT (HU clipped to [-125, 275]) and CHAOST2 (MRI values 0-900), 10 scans each."""
    write_slaug_domain(root, "SABSCT", list(range(1, 11)), 5, -125.0, 275.0)
    return write_slaug_domain(root, "CHAOST2", list(range(1, 11)), 5, 0.0, 900.0)


def write_slaug_cardiac(root: Path) -> Path:
    """bSSFP scans 1, 2 (train) and 36 (held out); LGE scans 1 (held out), 6, 7 (train)."""
    write_slaug_domain(root, "bSSFP", [1, 2, 36], 4, 0.0, 700.0)
    return write_slaug_domain(root, "LGE", [1, 6, 7], 4, 0.0, 500.0)


# dataset name (as in s2s2.stages.paper.DATASETS) -> (writer, sub-folder it writes)
WRITERS = {
    "Synapse": (write_synapse, "Synapse"),
    "ACDC": (write_acdc, "ACDC"),
    "Kvasir-SEG": (write_kvasir, "Kvasir-SEG"),
    "CVC-ClinicDB": (write_cvc, "CVC-ClinicDB"),
    "SABSCT": (write_slaug_abdominal, "abdominal"),
    "CHAOST2": (write_slaug_abdominal, "abdominal"),
    "bSSFP": (write_slaug_cardiac, "cardiac"),
    "LGE": (write_slaug_cardiac, "cardiac"),
}


def write_dataset(name: str, base: Path) -> Path:
    """Write the fake copy of dataset `name` under `base` once; returns the folder a config's root names."""
    writer, folder = WRITERS[name]
    root = base / folder
    if not root.exists():
        writer(root)
    return root
