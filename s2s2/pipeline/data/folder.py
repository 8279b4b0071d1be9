"""`folder` adapter: `images/` + `masks/` matched by file stem (Kvasir-SEG / CVC-ClinicDB style)."""

from __future__ import annotations

from pathlib import Path

from s2s2.pipeline.config.data import FolderData
from s2s2.pipeline.data.pairing import case_of, match_by_key, require_folder
from s2s2.pipeline.data.raw import RawDataset, RawSlice
from s2s2.pipeline.data.readers import (IMAGE_SUFFIXES, check_pair_shapes, file_stem, labels_from_values,
                                        mask_plane, picture_to_image, read_picture)
from s2s2.pipeline.data.split import fcbformer_split
from s2s2.pipeline.errors import DataError


def picture_files(folder: Path) -> dict[str, Path]:
    """Stem -> path of every picture in `folder` (other files, e.g. notes or thumbnails, are ignored)."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        stem = file_stem(path)
        if stem in found:
            raise DataError(f"two files share the name stem {stem!r}: {found[stem].name} and {path.name}", folder,
                            "keep one file per image (images and masks are matched by stem)")
        found[stem] = path
    return found


def load_folder(cfg: FolderData) -> RawDataset:
    """Read every image/mask pair; binary masks are thresholded, multi-class masks hold class ids.

    With `split_rule: fcbformer` every slice carries FCBFormer's split of the images sorted by file name.
    """
    root = require_folder(Path(cfg.root), "dataset folder",
                          f"set data.root to a folder holding {cfg.image_dir}/ and {cfg.mask_dir}/")
    image_dir = require_folder(root / cfg.image_dir, "image folder",
                               f"put the images in ROOT/{cfg.image_dir}/ (or set data.image_dir)")
    mask_dir = require_folder(root / cfg.mask_dir, "mask folder",
                              f"put the masks in ROOT/{cfg.mask_dir}/ with the images' file stems (or set data.mask_dir)")
    class_names = cfg.default_class_names()
    pairs = match_by_key(picture_files(image_dir), picture_files(mask_dir), image_dir, mask_dir)
    splits: list[str | None] = [None] * len(pairs)
    if cfg.split_rule == "fcbformer":
        by_name = sorted(range(len(pairs)), key=lambda i: pairs[i][1].name)
        for index, label in zip(by_name, fcbformer_split(len(pairs))):
            splits[index] = label
    slices = []
    for (key, image_path, mask_path), split in zip(pairs, splits):
        picture = read_picture(image_path)
        mask_values = read_picture(mask_path, is_mask=True)
        check_pair_shapes(picture.shape[:2], mask_values.shape[:2], image_path, mask_path)
        slices.append(RawSlice(
            id=key, image=picture_to_image(picture, image_path),
            mask=labels_from_values(mask_plane(mask_values), class_names, mask_path, cfg.binary_threshold),
            spacing=(1.0, 1.0), case=case_of(key, cfg.group_regex), split=split))
    return RawDataset(name=f"folder:{root.name}", slices=slices, class_names=class_names,
                      modality=cfg.resolved_modality(), source={"root": str(root.resolve())})
