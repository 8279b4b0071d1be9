"""Mask fidelity on synthetic stacks: images that follow their masks score high, others at chance."""

from __future__ import annotations

import numpy as np
import pytest

from s2s2.store.fidelity import (
    class_means,
    derangement,
    dice_per_class,
    mask_fidelity,
    normalised_fidelity,
    stack_appearance,
)
from test_store_support import CLASS_LEVELS, blob_masks


def test_derangement_has_no_fixed_points_and_is_seeded():
    for n in (2, 3, 10):
        perm = derangement(n, np.random.default_rng(n))
        assert sorted(perm) == list(range(n)) and not np.any(perm == np.arange(n))
    np.testing.assert_array_equal(derangement(9, np.random.default_rng(1)), derangement(9, np.random.default_rng(1)))
    with pytest.raises(ValueError):
        derangement(1, np.random.default_rng(0))


def test_dice_and_class_means_on_hand_made_maps():
    truth = np.array([[0, 1], [2, 2]])
    assert np.allclose(dice_per_class(truth, truth, 3), [1.0, 1.0])
    pred = np.array([[0, 1], [1, 2]])
    np.testing.assert_allclose(dice_per_class(pred, truth, 4), [2 / 3, 2 / 3, np.nan])
    images = np.array([[[[0.0, 1.0], [0.5, 0.7]]]])
    np.testing.assert_allclose(class_means(images, truth[None], 4), [0.0, 1.0, 0.6, np.nan])


def make_stack(masks: np.ndarray, k: int, rng: np.random.Generator, follow: bool) -> np.ndarray:
    n = len(masks)
    source = masks if follow else masks[rng.permutation(n)][:, ::-1]
    images = CLASS_LEVELS[source][:, None, None] + rng.normal(0, 0.05, size=(n, k, 1, *masks.shape[1:]))
    return np.clip(images, 0, 1).astype(np.float32)


def test_images_that_follow_their_masks_score_high_and_unrelated_ones_at_chance():
    rng = np.random.default_rng(0)
    masks = blob_masks(16, 32, rng)
    originals = make_stack(masks, 1, rng, follow=True)[:, 0]
    good = mask_fidelity(originals, masks, make_stack(masks, 3, rng, follow=True), np.random.default_rng(1), 4)
    bad = mask_fidelity(originals, masks, make_stack(masks, 3, rng, follow=False), np.random.default_rng(1), 4)
    assert good["dice_own"] > 0.9 and good["dice_own_adaptive"] > 0.9
    assert good["dice_chance"] < good["dice_own"] - 0.3
    assert abs(bad["dice_own"] - bad["dice_chance"]) < 0.15
    assert bad["dice_own"] < 0.6 and bad["dice_own_adaptive"] < 0.6
    assert set(good["per_class"]) == {1, 2, 3} and good["n_images"] == 48


def test_contrast_inversion_fails_global_means_but_passes_adaptive_ones():
    rng = np.random.default_rng(2)
    masks = blob_masks(12, 32, rng)
    originals = make_stack(masks, 1, rng, follow=True)[:, 0]
    inverted = 1.0 - make_stack(masks, 2, rng, follow=True)
    scores = mask_fidelity(originals, masks, inverted, np.random.default_rng(0), 4)
    assert scores["dice_own"] < 0.6 and scores["dice_own_adaptive"] > 0.9
    assert scores["dice_chance_adaptive"] < scores["dice_own_adaptive"] - 0.3


def test_uint8_inputs_give_the_same_scores_as_floats():
    rng = np.random.default_rng(3)
    masks = blob_masks(6, 16, rng)
    originals = make_stack(masks, 1, rng, follow=True)[:, 0]
    stack = make_stack(masks, 2, rng, follow=True)
    as_float = mask_fidelity(originals, masks, stack, np.random.default_rng(0), 4)
    as_uint8 = mask_fidelity(np.rint(originals * 255).astype(np.uint8), masks,
                             np.rint(stack * 255).astype(np.uint8), np.random.default_rng(0), 4)
    assert abs(as_float["dice_own"] - as_uint8["dice_own"]) < 0.02


def test_normalised_fidelity_reads_the_stack_against_the_originals():
    rng = np.random.default_rng(4)
    masks = blob_masks(12, 32, rng)
    originals = make_stack(masks, 1, rng, follow=True)[:, 0]
    ceiling = mask_fidelity(originals, masks, originals[:, None], np.random.default_rng(0), 4)
    itself = normalised_fidelity(ceiling, ceiling)
    assert itself == {"global": 1.0, "adaptive": 1.0}
    unrelated = mask_fidelity(originals, masks, make_stack(masks, 2, rng, follow=False), np.random.default_rng(0), 4)
    assert abs(normalised_fidelity(unrelated, ceiling)["adaptive"]) < 0.2
    flat = {**ceiling, "dice_chance": ceiling["dice_own"]}  # originals no better than chance: no ceiling
    assert normalised_fidelity(unrelated, flat)["global"] is None


def test_stack_appearance_spread_and_order_against_the_original():
    masks = np.zeros((1, 4, 4), np.uint8)
    masks[0, :, :2], masks[0, :, 2:] = 2, 3  # grey matter left, white matter right
    original = np.zeros((1, 1, 4, 4), np.float32)
    original[0, 0, :, :2], original[0, 0, :, 2:] = 0.3, 0.7  # T1 order: WM brighter
    stack = np.zeros((1, 2, 1, 4, 4), np.float32)
    stack[0, 0, 0, :, :2], stack[0, 0, 0, :, 2:] = 0.4, 0.8  # T1 order kept
    stack[0, 1, 0, :, :2], stack[0, 1, 0, :, 2:] = 0.6, 0.2  # flipped, as in T2
    got = stack_appearance(original, stack, masks, num_classes=4)
    assert got["order_changed_fraction"] == pytest.approx(0.5) and got["n_images"] == 2
    assert got["class_mean_spread_across_k"] == pytest.approx((0.1 + 0.3) / 2)
    assert got["class_mean_gap"] == pytest.approx(0.0, abs=1e-6)  # mean GM 0.5, mean WM 0.5
    all_flipped = stack_appearance(original, np.repeat(stack[:, 1:], 3, axis=1), masks, num_classes=4)
    assert all_flipped["order_changed_fraction"] == 1.0  # the reference is the original, not the majority
    assert all_flipped["class_mean_spread_across_k"] == pytest.approx(0.0, abs=1e-6)
    as_uint8 = stack_appearance(np.rint(original * 255).astype(np.uint8), np.rint(stack * 255).astype(np.uint8),
                                masks, num_classes=4)
    assert as_uint8["order_changed_fraction"] == pytest.approx(0.5)
    one_tissue = stack_appearance(original, stack, np.full((1, 4, 4), 2, np.uint8), num_classes=4)
    assert one_tissue["n_images"] == 0 and one_tissue["order_changed_fraction"] is None
