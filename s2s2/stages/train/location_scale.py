"""SLAug-style global location-scale augmentation (GLA): a random monotone Bezier intensity remap,
then a random scale and shift. Applied to the original image only, to show S2S2 composes with it.

Follows SLAug's `Global_Location_Scale_Augmentation` (Su et al., AAAI 2023): 4 control points between
the image's min and max, scale ~ N(1, 0.1) clipped to [0.9, 1.1], location ~ N(0, 0.5) clipped so that
the 20th..80th percentiles stay inside [0, 1].
"""

from __future__ import annotations

from math import comb

import numpy as np


def bezier_curve(points: np.ndarray, samples: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Points on the Bezier curve of control `points` [P,2], as (x, y) arrays of length `samples`."""
    t = np.linspace(0.0, 1.0, samples)
    degree = len(points) - 1
    basis = np.stack([comb(degree, i) * t ** (degree - i) * (1 - t) ** i for i in range(degree + 1)])
    return basis.T @ points[:, 0], basis.T @ points[:, 1]


def bezier_remap(image: np.ndarray, rng: np.random.Generator, control_points: int = 4,
                 inverse_prob: float = 0.0) -> np.ndarray:
    """Monotone random intensity remap through a Bezier curve from (min, min) to (max, max).

    With probability `inverse_prob` the curve is made decreasing (contrast inversion).
    """
    low, high = float(image.min()), float(image.max())
    if high <= low:
        return image.copy()
    inner = np.sort(rng.uniform(low, high, size=(control_points - 2, 2)), axis=0)
    points = np.vstack([[low, low], inner, [high, high]])
    xs, ys = bezier_curve(points)
    order = np.argsort(xs)
    ys = np.sort(ys)
    if rng.random() < inverse_prob:
        ys = ys[::-1]
    return np.interp(image, xs[order], ys).astype(image.dtype)


def location_scale(image: np.ndarray, rng: np.random.Generator, slide_limit: float = 20.0) -> np.ndarray:
    """Random global scale and shift, clipped to [0, 1], keeping the central percentiles in range."""
    scale = float(np.clip(rng.normal(1.0, 0.1), 0.9, 1.1))
    low, high = np.percentile(image, [slide_limit, 100.0 - slide_limit])
    location = float(np.clip(rng.normal(0.0, 0.5), 0.0 - low, 1.0 - high))
    return np.clip(image * scale + location, 0.0, 1.0).astype(image.dtype)


def global_location_scale(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """GLA on one image [C,H,W] in [0,1]: Bezier remap, then location-scale."""
    return location_scale(bezier_remap(image, rng), rng)
