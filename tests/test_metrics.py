"""Evaluator metrics against MONAI (Dice) and a brute-force scipy HD95, including empty masks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.spatial.distance import cdist

from s2s2.pipeline.metrics import case_metrics, diagonal_mm, dice, hd95, nanmean, stack_slices, summarise


def random_blob(rng: np.random.Generator, shape=(40, 48)) -> np.ndarray:
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    cy, cx, r = rng.uniform(10, 30), rng.uniform(10, 38), rng.uniform(4, 12)
    blob = np.hypot((yy - cy) * rng.uniform(0.7, 1.3), xx - cx) < r
    return blob | (rng.random(shape) < 0.01)  # a few stray pixels make the tails matter


def brute_force_hd95(a: np.ndarray, b: np.ndarray, spacing, percentile=95.0) -> float:
    """All surface-to-surface distances by cdist (surface = mask minus its erosion), in mm."""
    def surface_points(m):
        edge = m & ~ndimage.binary_erosion(m)
        return np.argwhere(edge) * np.asarray(spacing)
    pa, pb = surface_points(a), surface_points(b)
    d = cdist(pa, pb)
    return max(np.percentile(d.min(1), percentile), np.percentile(d.min(0), percentile))


def test_dice_matches_monai_on_random_masks():
    from monai.metrics import compute_dice

    rng = np.random.default_rng(0)
    for _ in range(10):
        a, b = random_blob(rng), random_blob(rng)
        want = compute_dice(torch.tensor(a[None, None]), torch.tensor(b[None, None]), include_background=True).item()
        assert dice(a, b) == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (0.7, 2.5)])
def test_hd95_matches_brute_force_scipy_reference(spacing):
    rng = np.random.default_rng(1)
    for _ in range(8):
        a, b = random_blob(rng), random_blob(rng)
        assert hd95(a, b, spacing) == pytest.approx(brute_force_hd95(a, b, spacing), rel=1e-4, abs=1e-4)


def test_hd_of_shifted_square_is_the_shift_in_mm():
    a = np.zeros((30, 30), bool)
    a[5:15, 5:15] = True
    b = np.roll(a, 3, axis=1)
    assert hd95(a, b, (1.0, 2.0), percentile=100) == pytest.approx(6.0)


def test_empty_mask_policy():
    empty = np.zeros((20, 30), bool)
    blob = np.zeros((20, 30), bool)
    blob[5:10, 5:10] = True
    # both empty: no evidence either way -> NaN, left out of means (never a free Dice 1)
    assert math.isnan(dice(empty, empty)) and math.isnan(hd95(empty, empty, (1.0, 1.0)))
    # false positive on an empty truth: Dice 0 and the largest possible distance
    assert dice(blob, empty) == 0.0
    assert hd95(blob, empty, (2.0, 1.0)) == pytest.approx(diagonal_mm((20, 30), (2.0, 1.0))) == pytest.approx(50.0)
    # missed structure: same
    assert dice(empty, blob) == 0.0 and hd95(empty, blob, (1.0, 1.0)) == pytest.approx(math.hypot(20, 30))


def test_monai_agrees_on_empty_cases():
    from monai.metrics import compute_dice

    empty = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    blob = empty.clone()
    blob[..., 2:4, 2:4] = True
    assert math.isnan(compute_dice(empty, empty, ignore_empty=True).item()) and math.isnan(dice(empty[0, 0].numpy(), empty[0, 0].numpy()))
    assert compute_dice(blob, empty, ignore_empty=False).item() == dice(blob[0, 0].numpy(), empty[0, 0].numpy()) == 0.0


def test_case_metrics_and_summary_skip_absent_classes():
    truth = np.zeros((16, 16), np.uint8)
    truth[2:8, 2:8] = 1
    prediction = truth.copy()
    prediction[10:12, 10:12] = 2  # class 2 absent from truth: a false positive
    case = case_metrics(prediction, truth, {"a": 1, "b": 2, "c": 3}, (1.0, 1.0))
    assert case["a"]["dice"] == 1.0 and case["a"]["hd95"] == 0.0
    assert case["b"]["dice"] == 0.0 and case["b"]["hd95"] == pytest.approx(math.hypot(16, 16))
    assert math.isnan(case["c"]["dice"])
    summary = summarise([case, case_metrics(truth, truth, {"a": 1, "b": 2, "c": 3}, (1.0, 1.0))])
    assert summary["dice"]["a"] == 1.0 and summary["dice"]["b"] == 0.0 and math.isnan(summary["dice"]["c"])
    assert summary["dice_mean"] == pytest.approx(0.5)
    assert math.isnan(nanmean([float("nan")]))


def test_volume_hd95_uses_the_slice_thickness():
    a = np.zeros((12, 20, 20), bool)
    a[3:8, 5:15, 5:15] = True
    b = np.roll(a, 1, axis=0)  # one slice further along the slice axis
    assert hd95(a, b, (2.5, 0.8, 0.8), percentile=100) == pytest.approx(2.5)
    rng = np.random.default_rng(3)
    c = a & (rng.random(a.shape) < 0.9)
    assert hd95(a, c, (2.5, 0.8, 0.8)) == pytest.approx(brute_force_hd95(a, c, (2.5, 0.8, 0.8)), rel=1e-4, abs=1e-4)


def test_stack_slices_puts_each_slice_at_its_position():
    slices = [np.full((2, 3), v, np.uint8) for v in (1, 2, 3)]
    volume = stack_slices(slices, [7, 4, 5])  # any order; position 6 has no slice (another split)
    assert volume.shape == (4, 2, 3)
    assert [int(volume[k, 0, 0]) for k in range(4)] == [2, 3, 0, 1]
