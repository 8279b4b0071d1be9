"""`nnunet` adapter: an nnU-Net raw dataset (`dataset.json`, `imagesTr/`, `labelsTr/`).

2-D PNG cases are used as they are (no spacing: HD95 in pixels); 3-D NIfTI volumes are reoriented to
RAS, optionally moved by a fixed rigid perturbation (`data.perturb`, for out-of-domain test sets) and
cut into slices along `cfg.axis`, keeping the voxel spacing (for HD95 and per-volume metrics in mm).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from s2s2.pipeline.config.data import NnunetData
from s2s2.pipeline.data.geometry import robust_scale, slice_spacing, volume_slice
from s2s2.pipeline.data.pairing import match_by_key, require_folder
from s2s2.pipeline.data.raw import RawDataset, RawSlice
from s2s2.pipeline.data.readers import (NIFTI_SUFFIXES, check_pair_shapes, labels_from_values, mask_plane,
                                        picture_to_image, read_nifti_volume, read_picture, windowed)
from s2s2.pipeline.data.world import Grid, RigidPerturbation, draw_perturbation, resample
from s2s2.pipeline.errors import DataError

_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class DatasetJson:
    """The parts of `dataset.json` this adapter uses."""

    class_names: tuple[str, ...]
    channel_names: tuple[str, ...]
    file_ending: str


def _malformed(path: Path, problem: str) -> DataError:
    """The error for a dataset.json that does not follow the nnU-Net v2 format, with an example."""
    return DataError(f"malformed dataset.json: {problem}", path,
                     'follow the nnU-Net v2 format: {"channel_names": {"0": "CT"}, "labels": '
                     '{"background": 0, "organ": 1}, "numTraining": N, "file_ending": ".nii.gz"}')


def parse_dataset_json(path: Path) -> DatasetJson:
    """Read and check `dataset.json`: labels must map names to the consecutive ids 0..n-1."""
    if not path.is_file():
        raise DataError("dataset.json is missing", path, "an nnU-Net raw dataset needs ROOT/dataset.json")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise _malformed(path, f"not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise _malformed(path, f"the top level is a {type(meta).__name__}, not an object")
    labels = meta.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise _malformed(path, f'"labels" must be a non-empty object, got {labels!r}')
    if all(isinstance(k, str) and k.isdigit() for k in labels) and all(isinstance(v, str) for v in labels.values()):
        labels = {name: int(key) for key, name in labels.items()}  # nnU-Net v1: {"0": "background"}
    bad = {name: value for name, value in labels.items() if not isinstance(value, int) or isinstance(value, bool)}
    if bad:
        raise _malformed(path, f'"labels" values must be integer class ids, got {bad} '
                         "(region-based labels are not supported)")
    ids = sorted(labels.values())
    if ids != list(range(len(ids))):
        raise _malformed(path, f'"labels" ids must be 0..{len(ids) - 1} without gaps, got {ids}')
    channels = meta.get("channel_names", meta.get("modality"))
    if not isinstance(channels, dict) or not channels:
        raise _malformed(path, f'"channel_names" must be a non-empty object, got {channels!r}')
    ending = meta.get("file_ending", ".nii.gz")
    if not isinstance(ending, str) or not ending.startswith("."):
        raise _malformed(path, f'"file_ending" must be a string such as ".nii.gz" or ".png", got {ending!r}')
    by_id = {value: name for name, value in labels.items()}
    return DatasetJson(class_names=tuple(by_id[i] for i in ids),
                       channel_names=tuple(str(channels[k]) for k in sorted(channels, key=str)),
                       file_ending=ending)


def _case_files(folder: Path, ending: str) -> dict[str, list[Path]]:
    """Case id -> its channel files `<case>_XXXX<ending>` in channel order."""
    cases: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if not path.name.endswith(ending) or path.name.startswith("."):
            continue
        match = _CHANNEL_FILE.match(path.name[: -len(ending)])
        if match is None:
            raise DataError(f"is not named <case>_XXXX{ending} (XXXX = channel number)", path,
                            "rename it, e.g. case001_0000" + ending)
        cases.setdefault(match["case"], []).append(path)
    return cases


def _picture_case(case: str, image_paths: list[Path], label_path: Path, class_names: tuple[str, ...],
                  cfg: NnunetData) -> list[RawSlice]:
    """One 2-D case: its channel pictures stacked into [C,H,W], its label picture as class ids."""
    pictures = [read_picture(path) for path in image_paths]
    label = read_picture(label_path, is_mask=True)
    for path, picture in zip(image_paths, pictures):
        check_pair_shapes(picture.shape[:2], label.shape[:2], path, label_path)
    image = np.concatenate([picture_to_image(p, path) for p, path in zip(pictures, image_paths)], axis=0)
    if image.shape[0] not in (1, 3):
        raise DataError(f"case has {image.shape[0]} image channels; s2s2 handles 1 (grey) or 3 (RGB)",
                        image_paths[0], "keep one channel file per case (or three for RGB)")
    mask = labels_from_values(mask_plane(label), class_names, label_path, cfg.binary_threshold)
    return [RawSlice(id=case, image=image, mask=mask, spacing=(1.0, 1.0), case=case)]


def volume_perturbation(cfg: NnunetData, case: str, grid: Grid) -> RigidPerturbation | None:
    """The fixed rigid perturbation of one case (None when `data.perturb` is off): turns about the
    volume's centre, shifts by up to a fraction of its extent."""
    if not cfg.perturbed():
        return None
    corners = np.stack([grid.world(np.zeros(3)), grid.world(np.asarray(grid.shape) - 1)])
    extent = tuple(float(n * z) for n, z in zip(grid.shape, grid.zooms))
    return draw_perturbation(cfg.perturb.seed, case, cfg.perturb.max_rotate_deg, cfg.perturb.max_shift_fraction,
                             extent, tuple(float(v) for v in corners.mean(axis=0)))


def _volume_case(case: str, image_paths: list[Path], label_path: Path, class_names: tuple[str, ...],
                 cfg: NnunetData) -> tuple[list[RawSlice], RigidPerturbation | None]:
    """One 3-D case: volumes scaled per channel (data.intensity_window, else 0.5-99.5 %), moved by the case's
    rigid perturbation if `data.perturb` asks for one, cut along `cfg.axis`, nearly empty slices skipped."""
    volumes = [(path, *read_nifti_volume(path)) for path in image_paths]
    label, label_affine = read_nifti_volume(label_path)
    for path, data, _ in volumes:
        check_pair_shapes(data.shape, label.shape, path, label_path)
    if label.ndim != 3:
        raise DataError(f"is a {label.ndim}-D volume {label.shape}; NIfTI cases must be 3-D", label_path,
                        "save 3-D volumes (or use PNG files for 2-D data)")
    grid = Grid(shape=tuple(int(s) for s in label.shape), affine=label_affine)
    perturbation = volume_perturbation(cfg, case, grid)
    transform = None if perturbation is None else perturbation.matrix()
    mask_volume = labels_from_values(label, class_names, label_path, cfg.binary_threshold)
    if transform is not None:
        mask_volume = resample(mask_volume, label_affine, grid, order=0, transform=transform).astype(np.uint8)
    # scaled before they move, so what moves in from outside the volume is the darkest value (0)
    image_volume = np.stack([resample(windowed(data, cfg.intensity_window, path) if cfg.intensity_window
                                      else robust_scale(data, low_pct=0.5, high_pct=99.5), affine, grid, order=1,
                                      transform=transform) for path, data, affine in volumes])
    if image_volume.shape[0] not in (1, 3):
        raise DataError(f"case has {image_volume.shape[0]} image channels; s2s2 handles 1 (grey) or 3 (RGB)",
                        image_paths[0], "keep one channel file per case (or three for RGB)")
    spacing = slice_spacing(grid.zooms, cfg.axis)
    slices = []
    for index in range(label.shape[cfg.axis]):
        mask = volume_slice(mask_volume, cfg.axis, index)
        if (mask > 0).mean() <= cfg.min_foreground_fraction:
            continue
        image = np.stack([volume_slice(channel, cfg.axis, index) for channel in image_volume])
        slices.append(RawSlice(id=f"{case}-a{cfg.axis}s{index:03d}", image=np.ascontiguousarray(image),
                               mask=np.ascontiguousarray(mask), spacing=spacing, case=case, position=index,
                               thickness=grid.zooms[cfg.axis]))
    return slices, perturbation


def load_nnunet(cfg: NnunetData) -> RawDataset:
    """Read every training case of an nnU-Net raw dataset as 2-D slices."""
    root = require_folder(Path(cfg.root), "nnU-Net dataset folder",
                          "set data.root to a folder holding dataset.json, imagesTr/ and labelsTr/")
    meta = parse_dataset_json(root / "dataset.json")
    class_names = cfg.class_names or meta.class_names
    image_dir = require_folder(root / "imagesTr", "image folder", "put the images in ROOT/imagesTr/")
    label_dir = require_folder(root / "labelsTr", "label folder", "put the labels in ROOT/labelsTr/")
    ending = meta.file_ending
    images = _case_files(image_dir, ending)
    labels = {path.name[: -len(ending)]: path for path in sorted(label_dir.iterdir())
              if path.name.endswith(ending) and not path.name.startswith(".")}
    volumetric = ending.lower() in NIFTI_SUFFIXES
    if cfg.perturb.enabled and not volumetric:
        raise DataError(f"data.perturb moves 3-D volumes, but this dataset holds 2-D {ending} cases", root,
                        "set data.perturb.enabled=false")
    slices, perturbations = [], {}
    for case, _, label_path in match_by_key({c: paths[0] for c, paths in images.items()}, labels,
                                            image_dir, label_dir):
        if volumetric:
            case_slices, perturbation = _volume_case(case, images[case], label_path, class_names, cfg)
            if perturbation is not None:
                perturbations[case] = perturbation.as_dict()
        else:
            case_slices = _picture_case(case, images[case], label_path, class_names, cfg)
        slices.extend(case_slices)
    modality = meta.channel_names[0] if len(meta.channel_names) == 1 else "/".join(meta.channel_names)
    return RawDataset(name=f"nnunet:{root.name}", slices=slices, class_names=class_names,
                      modality=cfg.resolved_modality(f"{modality} image"), source={"root": str(root.resolve())},
                      spacing_unit="mm" if volumetric else "px", perturbations=perturbations)
