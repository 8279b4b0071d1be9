"""Pictures: grey to RGB, mask overlays in palette colours, labelled PNG grids written atomically."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from s2s2.pipeline.palette import voc_color
from s2s2.pipeline.viz import overlay_mask, save_grid, to_rgb_uint8


def test_to_rgb_uint8_grey_and_colour() -> None:
    grey = np.array([[[0.0, 0.5], [1.0, 2.0]]], dtype=np.float32)
    rgb = to_rgb_uint8(grey)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [0, 0, 0]
    assert rgb[0, 1].tolist() == [128, 128, 128]
    assert rgb[1, 1].tolist() == [255, 255, 255]  # clipped
    colour = np.zeros((3, 1, 1), np.float32)
    colour[1] = 1.0
    assert to_rgb_uint8(colour)[0, 0].tolist() == [0, 255, 0]
    with pytest.raises(ValueError, match="C = 1 or 3"):
        to_rgb_uint8(np.zeros((2, 4, 4), np.float32))


def test_overlay_mask_colours_foreground_only() -> None:
    image = np.full((1, 4, 4), 0.5, np.float32)
    mask = np.zeros((4, 4), np.int64)
    mask[0, 0] = 1
    mask[3, 3] = 3
    out = overlay_mask(image, mask, num_classes=4, alpha=1.0)
    assert out[0, 0].tolist() == list(voc_color(1))
    assert out[3, 3].tolist() == list(voc_color(3))
    assert out[1, 1].tolist() == [128, 128, 128]  # background untouched
    half = overlay_mask(image, mask, num_classes=4, alpha=0.5)
    assert half[0, 0].tolist() == [128, 64, 64]
    with pytest.raises(ValueError, match="outside the declared"):
        overlay_mask(image, mask, num_classes=2)


def test_save_grid_size_titles_and_atomic(tmp_path) -> None:
    tile = np.zeros((10, 12, 3), np.uint8)
    tile[:, :, 0] = 200
    path = tmp_path / "sub" / "grid.png"
    save_grid([[tile, tile, tile], [tile]], path, row_titles=["a", "b"], col_titles=["x", "y", "z"], scale=3)
    picture = np.asarray(Image.open(path).convert("RGB"))
    assert picture.shape[0] > 2 * 30 and picture.shape[1] > 3 * 36
    assert (picture == [200, 0, 0]).all(axis=-1).sum() == 4 * 30 * 36  # four tiles, 3x enlarged
    assert [p.name for p in path.parent.iterdir()] == ["grid.png"]  # no temporary left
    with pytest.raises(ValueError, match="uint8"):
        save_grid([[tile.astype(np.float32)]], tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_save_grid_legend_draws_palette_swatches(tmp_path) -> None:
    tile = np.full((8, 8, 3), 255, np.uint8)
    plain = tmp_path / "plain.png"
    legend = tmp_path / "legend.png"
    save_grid([[tile]], plain, scale=1)
    save_grid([[tile]], legend, scale=1, legend=["background", "csf", "grey matter"])
    without, with_legend = (np.asarray(Image.open(p).convert("RGB")) for p in (plain, legend))
    assert with_legend.shape[0] > without.shape[0]
    for i in (1, 2):
        assert (with_legend == list(voc_color(i))).all(axis=-1).sum() > 4
    assert not (without == list(voc_color(1))).all(axis=-1).any()
