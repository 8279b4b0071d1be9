"""Mask fidelity on synthetic stacks: images that follow their masks score high, others at chance."""

from __future__ import annotations

import numpy as np
import pytest

from s2s2.store.fidelity import class_means, derangement, dice_per_class, mask_fidelity
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
