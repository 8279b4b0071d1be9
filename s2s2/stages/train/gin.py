"""GIN: global intensity non-linear augmentation (Ouyang et al., "Causality-inspired single-source
domain generalization for medical image segmentation", TMI 2022).

A freshly drawn random shallow convolution network (4 layers, 1x1 or 3x3 kernels chosen per layer,
Gaussian weights and biases, LeakyReLU between layers, 2 intermediate channels) remaps the image's
intensities and local texture; its output is blended with the input by alpha ~ U(0, 1) and rescaled
to the input's Frobenius norm, as the authors' `GINGroupConv` does. The result is not clipped to
[0, 1] (nor is it in the reference). Every draw comes from the given numpy generator, so a visit's
augmentation is reproducible from (seed, epoch, index).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

LAYERS = 4
WIDTH = 2  # intermediate channels
KERNEL_SIZES = (1, 3)


def gin_augment(image: np.ndarray, rng: np.random.Generator, layers: int = LAYERS, width: int = WIDTH,
                kernel_sizes: tuple[int, ...] = KERNEL_SIZES) -> np.ndarray:
    """One GIN draw applied to a float image [C,H,W]; returns float32 [C,H,W] with the input's norm."""
    channels = image.shape[0]
    widths = [channels, *([width] * (layers - 1)), channels]
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    out = x
    with torch.no_grad():
        for layer in range(layers):
            k = int(rng.choice(kernel_sizes))
            weight = rng.standard_normal((widths[layer + 1], widths[layer], k, k)).astype(np.float32)
            bias = rng.standard_normal(widths[layer + 1]).astype(np.float32)
            out = F.conv2d(out, torch.from_numpy(weight), torch.from_numpy(bias), padding=k // 2)
            if layer < layers - 1:  # the last layer is linear, as in the reference
                out = F.leaky_relu(out)
        alpha = float(rng.uniform(0.0, 1.0))
        mixed = alpha * out + (1.0 - alpha) * x
        mixed = mixed * (x.norm() / (mixed.norm() + 1e-5))
    return mixed[0].numpy().astype(np.float32)
