"""Segment new scans with a trained model (`s2s2 predict`) and export model folders (`s2s2 export`).

`predict` takes a model folder (config.json + model.safetensors) or a run folder of `s2s2 train`,
and a file or a folder of NIfTI volumes (`.nii`/`.nii.gz`; nnU-Net `<case>_0000` channel files are
grouped into one case), 2-D pictures (PNG/JPEG/BMP/TIFF) or npz slices (`image`). Each input is
prepared exactly as the training data was (the model folder's `preprocessing`), volumes slice by
slice along the training axis in batches, and each mask is written in the input's format and
geometry: NIfTI with the input's affine, header and shape; pictures as PNG at their own size
(masks must be lossless, so JPEG inputs get PNG masks); npz with a `label` array. Values are those
of the training masks (class ids, or 0/255 for two-class 0/255 picture masks). Outputs that exist
are skipped unless `overwrite`, so a folder run is resumable; every file appears whole or not at all.
"""

from __future__ import annotations

import gzip
import io
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from s2s2.pipeline.atomic import atomic_path
from s2s2.pipeline.data.readers import IMAGE_SUFFIXES, NIFTI_SUFFIXES
from s2s2.pipeline.errors import DataError, S2S2Error
from s2s2.pipeline.preprocessing import (Preprocessing, model_to_plane, place_plane, plane_to_model, preprocessing_for,
                                         scale_volume, volume_planes)
from s2s2.pipeline.segmenters import (ACTIVATION, ModelCard, build_segmenter, from_pretrained, is_model_folder,
                                      load_weights, model_identity, predict_with_probabilities, save_pretrained)
from s2s2.pipeline.segmenters.predict import scores_to_labels

log = logging.getLogger(__name__)

CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


# --- model folders ----------------------------------------------------------------------------


def card_from_run(run: Path, checkpoint: str = "model.safetensors") -> ModelCard:
    """The model card of a run folder: its config.yaml (architecture, loss, data preprocessing), the
    checkpoint's recorded shape, and the training data's class names."""
    from s2s2.pipeline.checkpoint import read_metadata
    from s2s2.pipeline.config.base import load_config
    from s2s2.pipeline.config.project import ProjectConfig
    from s2s2.pipeline.data.prepare import prepare_dataset
    from s2s2.pipeline.segmenters.normalization import input_normalization

    config, weights = run / "config.yaml", run / checkpoint
    for needed in (config, weights):
        if not needed.is_file():
            raise S2S2Error(f"{run} is neither a model folder (config.json) nor a finished run folder: {needed.name} "
                            "is missing; fix: pass the run folder `s2s2 train` wrote (RUN_DIR/train/NAME) or a "
                            "folder written by `s2s2 export`")
    cfg = load_config(ProjectConfig, config)
    identity = read_metadata(weights, "fix: train again (`s2s2 train`)")
    try:
        in_channels, num_classes, size = (int(identity[k]) for k in ("in_channels", "num_classes", "image_size"))
    except (KeyError, ValueError):
        raise S2S2Error(f"{weights} does not record its input shape (not written by `s2s2 train`); fix: train "
                        "again") from None
    dataset = prepare_dataset(cfg.data)
    return ModelCard(label_values=training_label_values(cfg.data, num_classes), model=cfg.model, in_channels=in_channels, num_classes=num_classes,
                     class_names=dataset.class_names, image_size=size, loss=cfg.train.loss.seg,
                     activation=ACTIVATION[cfg.train.loss.seg], normalization=input_normalization(cfg.model, in_channels),
                     preprocessing=preprocessing_for(cfg.data, in_channels),
                     source={"run": str(run), "checkpoint": checkpoint})


def training_label_values(data: object, num_classes: int) -> list[int] | None:
    """The stored value of each class in the training masks when it is not the class id: two-class
    picture masks stored as 0/255 (read from the first mask file); None otherwise."""
    if data.adapter != "folder" or num_classes != 2:
        return None
    from s2s2.pipeline.data.folder import picture_files
    from s2s2.pipeline.data.readers import read_picture

    masks = picture_files(Path(data.root) / data.mask_dir)
    if not masks:
        return None
    values = read_picture(masks[sorted(masks)[0]], is_mask=True)
    if np.issubdtype(values.dtype, np.integer) and values.max() > 1:
        return [0, int(np.iinfo(values.dtype).max)]
    return None


def load_any(path: Path) -> tuple[nn.Module, ModelCard]:
    """The model and card of a model folder, or of a run folder's best checkpoint (exported in memory)."""
    path = Path(path)
    if not path.is_dir():
        raise S2S2Error(f"--model {path}: no such folder; fix: pass a model folder (`s2s2 export`) or a run folder")
    if is_model_folder(path):
        return from_pretrained(path)
    card = card_from_run(path)
    model = build_segmenter(card.model.model_copy(update={"pretrained": False}), card.in_channels, card.num_classes,
                            card.image_size)
    if card.normalization is not None:
        from s2s2.pipeline.segmenters.normalization import InputNormalization

        model.normalize = InputNormalization(card.normalization.mean, card.normalization.std)
    load_weights(model, path / "model.safetensors",
                 model_identity(card.model, card.in_channels, card.num_classes, card.image_size))
    return model, card


def run_export(run: Path, out: Path) -> Path:
    """Write the run's best model as a self-describing model folder `out` (with the run's config.yaml as
    training_config.yaml, which `s2s2 evaluate --model` reads)."""
    import shutil

    if is_model_folder(run):
        raise S2S2Error(f"{run} is already a model folder; fix: copy it, or pass the run folder of `s2s2 train`")
    model, card = load_any(run)
    save_pretrained(model, card, out)
    with atomic_path(Path(out) / "training_config.yaml") as tmp:
        shutil.copyfile(Path(run) / "config.yaml", tmp)
    return Path(out)


# --- inputs -----------------------------------------------------------------------------------


@dataclass
class Case:
    """One input to segment: its files (one per channel), its kind and the output name."""

    name: str
    files: list[Path]
    kind: str  # volume | picture | npz
    suffix: str  # of the output


def _split_suffix(path: Path) -> tuple[str, str, str] | None:
    """(stem, suffix, kind) of a supported input file, else None."""
    lower = path.name.lower()
    for suffix in NIFTI_SUFFIXES:
        if lower.endswith(suffix):
            return path.name[:-len(suffix)], path.name[-len(suffix):], "volume"
    if lower.endswith(IMAGE_SUFFIXES):
        return path.stem, ".png", "picture"
    if lower.endswith(".npz"):
        return path.stem, ".npz", "npz"
    return None


def find_cases(source: Path) -> list[Case]:
    """The cases of a file or folder; nnU-Net channel files `<case>_XXXX` of one case are grouped."""
    if not source.exists():
        raise S2S2Error(f"input {source} does not exist; fix: pass a file or a folder of NIfTI, PNG/JPEG/TIFF or npz")
    files = [source] if source.is_file() else sorted(p for p in source.iterdir() if p.is_file()
                                                     and not p.name.startswith("."))
    cases: dict[str, Case] = {}
    for path in files:
        parts = _split_suffix(path)
        if parts is None:
            if source.is_file():
                raise S2S2Error(f"{path}: unsupported file type; fix: pass NIfTI (.nii/.nii.gz), PNG/JPEG/BMP/TIFF "
                                "or .npz")
            continue
        stem, suffix, kind = parts
        match = CHANNEL_FILE.match(stem)
        name = match["case"] if match and kind != "npz" else stem
        case = cases.setdefault(name, Case(name, [], kind, suffix))
        if case.kind != kind:
            raise S2S2Error(f"{path}: case {name} mixes file types; fix: keep one format per case")
        case.files.append(path)
    if not cases:
        raise S2S2Error(f"{source}: no NIfTI, PNG/JPEG/BMP/TIFF or npz files found; fix: point --input at the scans")
    return list(cases.values())


def _check_channels(case: Case, card: ModelCard) -> None:
    if case.kind == "volume" and len(case.files) != card.in_channels:
        raise DataError(f"case {case.name} has {len(case.files)} channel file(s), the model takes {card.in_channels}",
                        case.files[0], f"give each case {card.in_channels} file(s) <case>_0000..., one per channel")
    if case.kind != "volume" and len(case.files) != 1:
        raise DataError(f"case {case.name} has {len(case.files)} files", case.files[0],
                        "give 2-D images one file each (colour images as one RGB file)")


# --- segmenting one input ---------------------------------------------------------------------


@dataclass
class Segmented:
    """A prediction: class ids in the input's geometry, optional probabilities [K, ...] there, and
    the class ids on the model's own grid (one per slice), as evaluation sees them."""

    labels: np.ndarray
    probabilities: np.ndarray | None
    model_labels: np.ndarray


def segment_planes(model: nn.Module, card: ModelCard, planes: list[np.ndarray], device: torch.device, tta: bool,
                   batch_size: int, keep_probabilities: bool) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Per plane [C,H,W] (scaled to [0,1]): class ids [H,W] and probabilities [K,H,W] at the plane's own
    size, and the class ids on the model's grid [N,size,size]."""
    prep = card.preprocessing
    inputs = np.stack([plane_to_model(plane, prep) for plane in planes])
    model_labels, probs = predict_with_probabilities(model, inputs, device, batch_size, card.activation, tta)
    labels, kept = [], []
    for plane, p in zip(planes, probs):
        native = model_to_plane(p, plane.shape[-2:], prep)
        labels.append(scores_to_labels(torch.from_numpy(native)[None], card.activation, are_logits=False)[0].numpy())
        if keep_probabilities:
            kept.append(native)
    return labels, kept, model_labels


def segment_volume(model: nn.Module, card: ModelCard, files: list[Path], device: torch.device, tta: bool = False,
                   batch_size: int = 16, keep_probabilities: bool = False) -> tuple[Segmented, "object"]:
    """Segment one NIfTI case slice by slice; returns the prediction in the input's array order and the
    first channel's image (for its affine and header)."""
    import nibabel as nib

    from s2s2.pipeline.data.world import Grid, resample

    prep = card.preprocessing
    if prep.kind != "volume":
        raise DataError(f"is a NIfTI volume, but the model was trained on 2-D {prep.kind} inputs", files[0],
                        "pass the kind of input the model was trained on")
    images = []
    for path in files:
        try:
            images.append(nib.load(str(path)))
            data = np.asarray(images[-1].dataobj)
        except Exception as err:  # nibabel raises many types for corrupt files
            raise DataError(f"is not a readable NIfTI file ({err.__class__.__name__}: {err})", path,
                            "replace or remove the file") from None
        if data.ndim != 3:
            raise DataError(f"is a {data.ndim}-D volume {data.shape}; predict takes 3-D volumes", path,
                            "split 4-D series into one 3-D file per channel (<case>_0000, <case>_0001, ...)")
    first = images[0]
    if any(image.shape != first.shape for image in images):
        raise DataError(f"channel files differ in shape {[image.shape for image in images]}", files[0],
                        "give every channel of a case the same grid")
    canonical = [nib.as_closest_canonical(image) for image in images]
    ras_affine = np.asarray(canonical[0].affine, dtype=np.float64)
    volumes = [np.asarray(image.dataobj, dtype=np.float32) for image in canonical]
    for path, volume in zip(files, volumes):
        if not np.isfinite(volume).all():
            raise DataError("holds NaN or infinite values", path, "replace them (e.g. with 0) and try again")
    grid = Grid(shape=tuple(prep.grid_shape), affine=np.asarray(prep.grid_affine)) if prep.grid_shape else None
    if grid is not None:
        volumes = [resample(volume, ras_affine, grid, order=1) for volume in volumes]
    stack = np.stack([scale_volume(volume, prep) for volume in volumes])
    planes = volume_planes(stack, prep.axis)
    labels, probs, model_labels = segment_planes(model, card, planes, device, tta, batch_size, keep_probabilities)
    label_volume = np.zeros(stack.shape[1:], np.uint8)
    prob_volume = np.zeros((card.num_classes, *stack.shape[1:]), np.float32) if keep_probabilities else None
    for index, plane in enumerate(labels):
        place_plane(label_volume, prep.axis, index, plane)
        if prob_volume is not None:
            place_plane(prob_volume, prep.axis, index, probs[index])
    if grid is not None:  # back from the training grid to the input's (RAS) grid
        target = Grid(shape=tuple(canonical[0].shape), affine=ras_affine)
        label_volume = resample(label_volume, grid.affine, target, order=0).astype(np.uint8)
        if prob_volume is not None:
            prob_volume = np.stack([resample(p, grid.affine, target, order=1) for p in prob_volume])
    # from RAS back to the input's own array order
    back = nib.orientations.ornt_transform(nib.orientations.io_orientation(ras_affine),
                                           nib.orientations.io_orientation(first.affine))
    label_volume = nib.orientations.apply_orientation(label_volume, back).astype(np.uint8)
    if prob_volume is not None:
        prob_volume = np.stack([nib.orientations.apply_orientation(p, back) for p in prob_volume]).astype(np.float32)
    return Segmented(np.ascontiguousarray(label_volume), prob_volume, model_labels), first


def read_plane(case: Case) -> np.ndarray:
    """The [C,H,W] image in [0,1] of a picture or npz case, scaled as the data pipeline scales it."""
    path = case.files[0]
    if case.kind == "picture":
        from s2s2.pipeline.data.readers import picture_to_image, read_picture

        return picture_to_image(read_picture(path), path)
    from s2s2.pipeline.data.npz import npz_image

    try:
        with np.load(path) as archive:
            if "image" not in archive:
                raise DataError(f"holds {sorted(archive.files)}, no `image` array", path, "store the slice as `image`")
            image = archive["image"]
    except (OSError, ValueError) as err:
        raise DataError(f"is not a readable npz file ({err})", path, "replace or remove the file") from None
    return npz_image(image, path, None)


def _check_kind(case: Case, prep: Preprocessing) -> None:
    if case.kind != "volume" and prep.kind == "volume":
        raise DataError(f"is a 2-D {case.kind} input, but the model was trained on slices of 3-D volumes",
                        case.files[0], "pass NIfTI volumes (.nii/.nii.gz)")


# --- writing ----------------------------------------------------------------------------------


def write_nifti(labels: np.ndarray, like: "object", path: Path) -> None:
    """`labels` as a NIfTI with the affine and header of `like` (their integer type, no intensity scaling),
    atomically."""
    import nibabel as nib

    header = like.header.copy()
    header.set_data_dtype(labels.dtype)
    image = type(like)(labels, like.affine, header)
    image.header.set_slope_inter(1, 0)
    data = image.to_bytes()
    with atomic_path(path) as tmp:
        tmp.write_bytes(gzip.compress(data, mtime=0) if path.name.lower().endswith(".gz") else data)


def write_png(labels: np.ndarray, path: Path) -> None:
    """`labels` (uint8 or uint16) as a lossless PNG, atomically."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(labels).save(tmp, format="PNG")


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    """The arrays as a compressed npz, atomically."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def resolve_device(device: str) -> torch.device:
    """auto: CUDA when available, else the CPU; cuda without a GPU is a user error."""
    if device == "cuda" and not torch.cuda.is_available():
        raise S2S2Error("--device cuda: no CUDA device is available here; fix: --device cpu (or auto)")
    return torch.device("cuda" if device != "cpu" and torch.cuda.is_available() else "cpu")


def output_paths(cases: list[Case], source: Path, output: Path) -> dict[str, Path]:
    """Where each case's mask goes: OUTPUT itself for one input file when OUTPUT names a mask file
    (.nii.gz, .png, ...), else OUTPUT/<case><suffix>."""
    if source.is_file() and not output.is_dir() and _split_suffix(output) is not None:
        return {cases[0].name: output}
    return {case.name: output / f"{case.name}{case.suffix}" for case in cases}


def run_predict(model_path: Path, source: Path, output: Path, device: str = "auto", tta: bool = False,
                save_probabilities: bool = False, overwrite: bool = False, batch_size: int = 16) -> list[Path]:
    """Segment every case of `source` with the model of `model_path`; returns the masks written."""
    model, card = load_any(model_path)
    cases = find_cases(source)
    for case in cases:
        _check_channels(case, card)
        _check_kind(case, card.preprocessing)
    targets = output_paths(cases, source, output)
    torch_device = resolve_device(device)
    model.to(torch_device)
    written = []
    todo = [case for case in cases if overwrite or not targets[case.name].exists()]
    if len(todo) < len(cases):
        log.info("predict: %d of %d outputs exist and are kept (--overwrite redoes them)", len(cases) - len(todo),
                 len(cases))
    values = np.asarray(card.label_values or range(card.num_classes), dtype=np.uint16)
    stored = np.uint8 if values.max() < 256 else np.uint16
    for case in tqdm(todo, desc="predict", unit="case", disable=None):
        target = targets[case.name]
        if case.kind == "volume":
            result, like = segment_volume(model, card, case.files, torch_device, tta, batch_size, save_probabilities)
            write_nifti(values[result.labels].astype(stored), like, target)
            probs = result.probabilities
        else:
            plane = read_plane(case)
            labels, probs_list, _ = segment_planes(model, card, [plane], torch_device, tta, batch_size,
                                                   save_probabilities)
            probs = probs_list[0] if probs_list else None
            if case.kind == "picture":
                write_png(values[labels[0]].astype(stored), target)
            else:
                write_npz(target, label=values[labels[0]].astype(stored))
        if save_probabilities:
            write_npz(target.with_name(f"{case.name}_probabilities.npz"), probabilities=probs.astype(np.float32),
                      class_names=np.asarray(card.class_names))
        written.append(target)
    return written
