"""PASCAL-VOC colour palette: how a mask is drawn as a ControlNet control image and in overlays."""

from __future__ import annotations

import numpy as np


def voc_color(index: int) -> tuple[int, int, int]:
    """RGB colour of class `index` in the PASCAL-VOC palette (0 black, 1 (128,0,0), 2 (0,128,0), ...).

    Bits of the index are spread over the high bits of the three channels, as in the VOC devkit.
    """
    if index < 0:
        raise ValueError(f"class index must be >= 0, got {index}")
    red = green = blue = 0
    shift = 7
    while index:
        red |= ((index >> 0) & 1) << shift
        green |= ((index >> 1) & 1) << shift
        blue |= ((index >> 2) & 1) << shift
        index >>= 3
        shift -= 1
    return red, green, blue


def voc_palette(num_classes: int = 256) -> np.ndarray:
    """uint8 [num_classes, 3] table of VOC colours."""
    if not 1 <= num_classes <= 256:
        raise ValueError(f"the VOC palette has 1..256 colours, asked for {num_classes}")
    return np.array([voc_color(i) for i in range(num_classes)], dtype=np.uint8)


def mask_to_rgb(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """Draw an integer mask [H,W] as uint8 RGB [H,W,3]; ids outside 0..num_classes-1 are an error."""
    mask = np.asarray(mask)
    if mask.size and (mask.min() < 0 or mask.max() >= num_classes):
        raise ValueError(f"mask holds class ids {int(mask.min())}..{int(mask.max())}, "
                         f"outside the declared 0..{num_classes - 1}")
    return voc_palette(num_classes)[mask.astype(np.int64)]
