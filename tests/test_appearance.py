"""Appearance randomisation: seeded corruptions and SynthSeg-style labels-to-image (real MONAI transforms)."""

from __future__ import annotations

import numpy as np
import pytest

from s2s2.pipeline.appearance import corrupt, label_means, labels_to_image
from s2s2.pipeline.config.appearance import CorruptionConfig, LabelsToImageConfig
from s2s2.pipeline.config.base import load_config
from s2s2.pipeline.errors import ConfigError

OFF = CorruptionConfig(blur_p=0, bias_p=0, gamma_p=0, noise_p=0)
ALWAYS = CorruptionConfig(blur_p=1, bias_p=1, gamma_p=1, noise_p=1)


def _mask() -> np.ndarray:
    mask = np.zeros((32, 32), dtype=np.int64)
    mask[4:28, 4:28] = 1
    mask[8:24, 8:24] = 2
    mask[12:20, 12:20] = 3
    return mask


def test_same_seed_same_bytes_other_seed_other_image() -> None:
    cfg = LabelsToImageConfig(corruption=ALWAYS)
    first = labels_to_image(_mask(), 4, 1, np.random.default_rng(7), cfg)
    again = labels_to_image(_mask(), 4, 1, np.random.default_rng(7), cfg)
    other = labels_to_image(_mask(), 4, 1, np.random.default_rng(8), cfg)
    assert first.dtype == np.float32 and first.shape == (1, 32, 32)
    assert first.tobytes() == again.tobytes()
    assert not np.array_equal(first, other)
    assert 0.0 <= first.min() and first.max() <= 1.0


def test_without_corruption_each_label_is_its_own_gaussian() -> None:
    mask = _mask()
    cfg = LabelsToImageConfig(std=(0.0, 0.0), corruption=OFF)
    image = labels_to_image(mask, 4, 3, np.random.default_rng(1), cfg)
    means = label_means(4, 3, np.random.default_rng(1), cfg)  # the same first draws
    for label in range(4):
        pixels = image[:, mask == label]
        assert np.allclose(pixels, means[label][:, None], atol=1e-6)  # constant per label and channel


def test_separation_keeps_label_means_apart_for_any_number_of_labels() -> None:
    for labels, separation in ((4, 0.45), (9, 0.9), (2, 1.0)):
        cfg = LabelsToImageConfig(mean=(0.1, 0.9), separation=separation)
        wanted = separation * 0.8 / (labels - 1)
        for seed in range(30):
            means = label_means(labels, 2, np.random.default_rng(seed), cfg)
            gaps = np.diff(np.sort(means, axis=0), axis=0)
            assert gaps.min() >= wanted - 1e-9 and means.min() >= 0.1 - 1e-9 and means.max() <= 0.9 + 1e-9
    levels = label_means(4, 1, np.random.default_rng(0), LabelsToImageConfig(separation=1.0))[:, 0]
    np.testing.assert_allclose(np.sort(levels), [0, 1 / 3, 2 / 3, 1])  # evenly spaced, in shuffled order
    orders = {tuple(np.argsort(label_means(3, 1, np.random.default_rng(s), LabelsToImageConfig(separation=1.0))[:, 0]))
              for s in range(40)}
    assert len(orders) == 6  # every brightness order of three labels occurs


def test_corrupt_changes_intensities_only_and_off_is_identity() -> None:
    image = np.random.default_rng(0).uniform(0.2, 0.8, size=(1, 32, 32)).astype(np.float32)
    assert np.array_equal(corrupt(image, np.random.default_rng(0), OFF), image)
    changed = corrupt(image, np.random.default_rng(0), ALWAYS)
    assert changed.shape == image.shape and not np.allclose(changed, image)
    assert corrupt(image, np.random.default_rng(0), ALWAYS).tobytes() == changed.tobytes()


def test_bias_field_is_smooth_and_multiplicative() -> None:
    """Only the bias field on: log(output / input) is a polynomial of degree <= 3 per axis."""
    flat = np.full((1, 32, 32), 0.1, dtype=np.float32)
    only_bias = CorruptionConfig(blur_p=0, bias_p=1, bias_degree=3, bias_coeff=0.3, gamma_p=0, noise_p=0)
    log_field = np.log(corrupt(flat, np.random.default_rng(3), only_bias)[0] / 0.1)
    assert log_field.std() > 0.02  # a field, not a constant
    axis = np.linspace(-1, 1, 32)
    basis = np.stack([np.outer(axis ** i, axis ** j).ravel() for i in range(4) for j in range(4)], axis=1)
    _, residual, *_ = np.linalg.lstsq(basis, log_field.ravel(), rcond=None)
    assert residual[0] / log_field.size < 1e-8


@pytest.mark.parametrize("field, value", [
    ("corruption.noise_p", -0.1), ("corruption.bias_p", 1.5), ("corruption.noise_std", -0.01),
    ("corruption.bias_coeff", -1), ("corruption.gamma", [0.0, 1.0]), ("corruption.blur_sigma", [1.0, 0.5]),
    ("std", [-0.1, 0.1]), ("mean", [0.8, 0.2]), ("separation", -0.1), ("separation", 1.5),
])
def test_bad_values_are_config_errors_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field.split(".")[-1]):
        load_config(LabelsToImageConfig, dotted=[f"{field}={value}"])


def test_mask_outside_the_label_range_is_refused() -> None:
    with pytest.raises(ValueError, match="outside 0..3"):
        labels_to_image(_mask() + 1, 4, 1, np.random.default_rng(0), LabelsToImageConfig())
