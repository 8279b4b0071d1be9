"""Match image files to mask files by name and find which case a slice file belongs to."""

from __future__ import annotations

import re
from pathlib import Path

from s2s2.pipeline.errors import DataError


def require_folder(path: Path, what: str, fix: str) -> Path:
    """Return `path` if it is a folder, else a DataError saying what was expected there."""
    if not path.is_dir():
        state = "is not a folder" if path.exists() else "does not exist"
        raise DataError(f"{what} {state}", path, fix)
    return path


def match_by_key(images: dict[str, Path], masks: dict[str, Path], image_dir: Path,
                 mask_dir: Path) -> list[tuple[str, Path, Path]]:
    """(key, image, mask) for every key; an image without mask or a mask without image is an error."""
    lonely_images = sorted(set(images) - set(masks))
    lonely_masks = sorted(set(masks) - set(images))
    if lonely_images:
        shown = ", ".join(images[k].name for k in lonely_images[:5])
        raise DataError(f"{len(lonely_images)} image(s) have no mask in {mask_dir}: {shown}"
                        + (" ..." if len(lonely_images) > 5 else ""), image_dir,
                        "add the missing masks (same file name stem) or remove those images")
    if lonely_masks:
        shown = ", ".join(masks[k].name for k in lonely_masks[:5])
        raise DataError(f"{len(lonely_masks)} mask(s) have no image in {image_dir}: {shown}"
                        + (" ..." if len(lonely_masks) > 5 else ""), mask_dir,
                        "add the missing images (same file name stem) or remove those masks")
    return [(key, images[key], masks[key]) for key in sorted(images)]


def case_of(stem: str, group_regex: str) -> str:
    """The case a slice file belongs to: the regex's first group if it matches, else the stem itself."""
    match = re.match(group_regex, stem)
    return match.group(1) if match and match.groups() else stem
