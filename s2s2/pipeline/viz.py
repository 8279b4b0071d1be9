"""Pictures for humans: images as RGB, masks drawn over them, and labelled PNG grids (PIL only).

Every PNG the project writes (data show, stack inspect, generated samples) goes through here, so
colours (the VOC palette) and layout are the same everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from s2s2.pipeline.atomic import atomic_path
from s2s2.pipeline.palette import mask_to_rgb, voc_color

_PAD = 4  # pixels between tiles
_BACKGROUND = (255, 255, 255)
_TEXT = (0, 0, 0)


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Turn a float image [C,H,W] in [0,1] (C = 1 or 3) into uint8 [H,W,3]; values are clipped."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected an image [C,H,W] with C = 1 or 3, got shape {image.shape}")
    rgb = np.repeat(image, 3, axis=0) if image.shape[0] == 1 else image
    rgb = np.nan_to_num(rgb, nan=0.0, posinf=1.0, neginf=0.0)
    return (np.clip(rgb, 0.0, 1.0).transpose(1, 2, 0) * 255.0 + 0.5).astype(np.uint8)


def overlay_mask(image: np.ndarray, mask: np.ndarray, num_classes: int, alpha: float = 0.4) -> np.ndarray:
    """Blend the palette colours of `mask` [H,W] over `image` [C,H,W]; background (0) stays untouched."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = to_rgb_uint8(image).astype(np.float32)
    mask = np.asarray(mask)
    if mask.shape != rgb.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match image size {rgb.shape[:2]}")
    colours = mask_to_rgb(mask, num_classes).astype(np.float32)
    foreground = (mask > 0)[..., None]
    blended = np.where(foreground, (1.0 - alpha) * rgb + alpha * colours, rgb)
    return (blended + 0.5).astype(np.uint8)


def _text_size(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def save_grid(
    rows: Sequence[Sequence[np.ndarray]],
    path: str | Path,
    row_titles: Sequence[str] | None = None,
    col_titles: Sequence[str] | None = None,
    scale: int = 2,
    legend: Sequence[str] | None = None,
) -> Path:
    """Write tiles (uint8 [H,W,3]) as a PNG grid, each enlarged `scale` times (nearest); atomic write.

    Rows may have different lengths; tiles of different sizes are placed top-left in their cell.
    Titles are drawn with PIL's default font left of each row and above each column. `legend`
    (class names, class 0 first) adds a line of palette swatches under the grid.
    """
    if not rows or not any(len(row) for row in rows):
        raise ValueError("save_grid needs at least one tile")
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    if row_titles is not None and len(row_titles) != len(rows):
        raise ValueError(f"{len(row_titles)} row titles for {len(rows)} rows")
    n_cols = max(len(row) for row in rows)
    if col_titles is not None and len(col_titles) > n_cols:
        raise ValueError(f"{len(col_titles)} column titles for {n_cols} columns")
    tiles = [[np.asarray(tile) for tile in row] for row in rows]
    for row in tiles:
        for tile in row:
            if tile.dtype != np.uint8 or tile.ndim != 3 or tile.shape[2] != 3:
                raise ValueError(f"tiles must be uint8 [H,W,3], got {tile.dtype} {tile.shape}")
    cell_h = max(tile.shape[0] for row in tiles for tile in row) * scale
    cell_w = max(tile.shape[1] for row in tiles for tile in row) * scale

    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left = 0
    if row_titles:
        left = max(_text_size(probe, title, font)[0] for title in row_titles) + 2 * _PAD
    top = 0
    if col_titles:
        top = max(_text_size(probe, title, font)[1] for title in col_titles) + 2 * _PAD

    line_h = _text_size(probe, "Ag", font)[1] + 2 * _PAD
    legend_items = [f"{i} {name}" for i, name in enumerate(legend or [])]
    legend_w = sum(line_h + _text_size(probe, item, font)[0] + 3 * _PAD for item in legend_items)
    width = max(left + n_cols * (cell_w + _PAD) + _PAD, legend_w + _PAD)
    grid_h = top + len(tiles) * (cell_h + _PAD) + _PAD
    height = grid_h + (line_h + _PAD if legend_items else 0)
    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(tiles):
        y = top + _PAD + r * (cell_h + _PAD)
        if row_titles:
            text_h = _text_size(draw, row_titles[r], font)[1]
            draw.text((_PAD, y + (cell_h - text_h) // 2), row_titles[r], fill=_TEXT, font=font)
        for c, tile in enumerate(row):
            x = left + _PAD + c * (cell_w + _PAD)
            image = Image.fromarray(tile, "RGB")
            if scale != 1:
                image = image.resize((tile.shape[1] * scale, tile.shape[0] * scale), Image.Resampling.NEAREST)
            canvas.paste(image, (x, y))
    for c, title in enumerate(col_titles or []):
        x = left + _PAD + c * (cell_w + _PAD)
        draw.text((x, _PAD), title, fill=_TEXT, font=font)
    x = _PAD
    for i, item in enumerate(legend_items):
        swatch = line_h - 2 * _PAD
        draw.rectangle((x, grid_h + _PAD, x + swatch, grid_h + _PAD + swatch), fill=voc_color(i), outline=_TEXT)
        draw.text((x + swatch + _PAD, grid_h + _PAD), item, fill=_TEXT, font=font)
        x += line_h + _text_size(draw, item, font)[0] + 3 * _PAD

    path = Path(path)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path
