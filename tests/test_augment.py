"""PairAugment: one geometric transform for both images and the mask, independent photometrics
from separate generators; GIN keeps the input's norm and is reproducible from its generator."""

from __future__ import annotations

import numpy as np
import pytest

from s2s2.stages.train.augment import PairAugment, apply_geometry, draw_geometry
from s2s2.pipeline.config.train import AugmentConfig
from test_store_support import CLASS_LEVELS, blob_masks


def pair(seed: int = 0, size: int = 32):
    rng = np.random.default_rng(seed)
    mask = blob_masks(1, size, rng)[0]
    original = CLASS_LEVELS[mask][None].astype(np.float32)
    stack_image = (1.0 - CLASS_LEVELS)[mask][None].astype(np.float32)  # other appearance, same layout
    return original, stack_image, mask


def test_geometry_is_shared_and_keeps_images_aligned_with_the_mask():
    original, stack_image, mask = pair()
    cfg = AugmentConfig(hflip_p=0.5, vflip_p=0.5, rot90_p=0.5, affine_p=1.0, photometric_p=0.0)
    for seed in range(10):
        out_o, out_s, out_m = PairAugment(cfg)(original, stack_image, mask, np.random.default_rng(seed),
                                               np.random.default_rng(seed + 100))
        assert out_o.shape == original.shape and out_m.shape == mask.shape and out_m.dtype == mask.dtype
        assert set(np.unique(out_m)) <= set(np.unique(mask))  # nearest: no new labels
        inside = out_m > 0
        # the pixels of each class carry that class's level in both images (bilinear blur at edges only)
        for c in range(1, 4):
            core = out_m == c
            if core.sum() > 20:
                assert abs(np.median(out_o[0][core]) - CLASS_LEVELS[c]) < 0.05
                assert abs(np.median(out_s[0][core]) - (1 - CLASS_LEVELS[c])) < 0.05
        assert inside.any()


def test_flips_and_rot90_are_exact():
    _, _, mask = pair()
    cfg = AugmentConfig(hflip_p=1.0, vflip_p=0.0, rot90_p=1.0, affine_p=0.0)
    geometry = draw_geometry(cfg, mask.shape, np.random.default_rng(0))
    expected = np.rot90(mask[:, ::-1], geometry.rot90)
    np.testing.assert_array_equal(apply_geometry(mask, geometry, order=0), expected)
    assert geometry.rot90 in (1, 2, 3)


def test_photometric_is_independent_per_image_and_stays_in_range():
    original, _, mask = pair()
    cfg = AugmentConfig(hflip_p=0, affine_p=0, photometric_p=1.0, brightness=0.2, contrast=0.3, gamma=0.3, noise_std=0.05)
    out_a, out_b, out_m = PairAugment(cfg)(original, original.copy(), mask, np.random.default_rng(4),
                                           np.random.default_rng(5))
    np.testing.assert_array_equal(out_m, mask)
    assert not np.allclose(out_a, out_b)  # same input, different jitter
    assert out_a.min() >= 0 and out_a.max() <= 1 and out_a.dtype == np.float32


def test_deterministic_given_the_rng_and_disabled_is_identity():
    original, stack_image, mask = pair()
    aug = PairAugment(AugmentConfig(vflip_p=0.5, rot90_p=0.5))
    first = aug(original, stack_image, mask, np.random.default_rng(7), np.random.default_rng(8))
    second = aug(original, stack_image, mask, np.random.default_rng(7), np.random.default_rng(8))
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    same = PairAugment(AugmentConfig(enabled=False))(original, stack_image, mask, np.random.default_rng(7),
                                                     np.random.default_rng(8))
    assert same[0] is original and same[1] is stack_image and same[2] is mask
    o, s, m = aug(original, None, mask, np.random.default_rng(7))  # baseline path: no stack image
    assert s is None and o.shape == original.shape


def test_stack_image_photometrics_come_from_its_own_generator():
    original, stack_image, mask = pair()
    aug = PairAugment(AugmentConfig(hflip_p=0.5, affine_p=1.0, photometric_p=1.0))
    a = aug(original, stack_image, mask, np.random.default_rng(1), np.random.default_rng(2))
    b = aug(original, stack_image, mask, np.random.default_rng(1), np.random.default_rng(3))
    np.testing.assert_array_equal(a[0], b[0])  # the original and the mask ignore the stack generator
    np.testing.assert_array_equal(a[2], b[2])
    assert not np.allclose(a[1], b[1])
    alone = aug(original, None, mask, np.random.default_rng(1))  # the baseline's visit
    np.testing.assert_array_equal(alone[0], a[0])
    geometry_only = PairAugment(aug.cfg.model_copy(update={"stack_photometric": False}))
    c = geometry_only(original, stack_image, mask, np.random.default_rng(1), np.random.default_rng(2))
    d = geometry_only(original, stack_image, mask, np.random.default_rng(1), np.random.default_rng(3))
    np.testing.assert_array_equal(c[1], d[1])  # warped only
    np.testing.assert_array_equal(c[0], a[0])


def test_gin_keeps_the_norm_and_shape_and_is_reproducible():
    from s2s2.stages.train.gin import gin_augment

    original, _, _ = pair()
    outs = [gin_augment(original, np.random.default_rng(seed)) for seed in range(6)]
    for out in outs:
        assert out.shape == original.shape and out.dtype == np.float32 and np.isfinite(out).all()
        assert np.linalg.norm(out) == pytest.approx(np.linalg.norm(original), rel=1e-4)
    np.testing.assert_array_equal(gin_augment(original, np.random.default_rng(3)), outs[3])
    # different draws give different intensity mappings of the same image
    assert min(np.abs(a - b).mean() for i, a in enumerate(outs) for b in outs[i + 1:]) > 1e-3


def test_gin_matches_a_hand_written_network():
    """The same draws, replayed by hand with numpy: 1x1/3x3 convolutions, LeakyReLU, blend, norm."""
    from scipy import ndimage

    from s2s2.stages.train.gin import LAYERS, WIDTH, gin_augment

    original, _, _ = pair(size=12)
    rng = np.random.default_rng(11)
    x = original.astype(np.float64)
    widths = [1, *([WIDTH] * (LAYERS - 1)), 1]
    out = x
    for layer in range(LAYERS):
        k = int(rng.choice((1, 3)))
        weight = rng.standard_normal((widths[layer + 1], widths[layer], k, k)).astype(np.float32)
        bias = rng.standard_normal(widths[layer + 1]).astype(np.float32)
        out = np.stack([sum(ndimage.correlate(out[i], weight[o, i].astype(np.float64), mode="constant")
                            for i in range(widths[layer])) + bias[o] for o in range(widths[layer + 1])])
        if layer < LAYERS - 1:
            out = np.where(out > 0, out, 0.01 * out)
    alpha = rng.uniform(0.0, 1.0)
    mixed = alpha * out + (1 - alpha) * x
    want = mixed * np.linalg.norm(x) / (np.linalg.norm(mixed) + 1e-5)
    np.testing.assert_allclose(gin_augment(original, np.random.default_rng(11)), want, rtol=1e-4, atol=1e-5)


def _stored_pair(seed: int, size: int = 32):
    """A float original and a uint8 stack image (as the store holds it) with its mask."""
    rng = np.random.default_rng(seed)
    original, _, mask = pair(seed, size)
    original = np.clip(original + rng.normal(0, 0.05, original.shape), 0, 1).astype(np.float32)
    stack_uint8 = rng.integers(0, 256, (3, size, size), dtype=np.uint8)
    return original, stack_uint8, mask


def _both_paths(cfg: AugmentConfig, seed: int):
    """Today's path (everything in the dataset, float) and the deferred one (geometry in the dataset
    on the stored dtypes, photometrics on the trainer's device) for one visit."""
    import torch

    from s2s2.stages.train.augment import device_images

    original, stack_uint8, mask = _stored_pair(seed)
    aug = PairAugment(cfg)
    old = aug(original, stack_uint8.astype(np.float32) * np.float32(1 / 255), mask, np.random.default_rng(seed),
              np.random.default_rng(seed + 1))
    o, s, m, draw, stack_draw = aug.defer(original, stack_uint8, mask, np.random.default_rng(seed),
                                          np.random.default_rng(seed + 1))
    assert s.dtype == np.uint8 and o.dtype == np.float32  # handed over in the stored dtypes
    batch = {"original": torch.from_numpy(o)[None], "stack_image": torch.from_numpy(s)[None],
             "original_photometric": [draw], "stack_image_photometric": [stack_draw]}
    new = (device_images(batch, "original", torch.device("cpu"))[0].numpy(),
           device_images(batch, "stack_image", torch.device("cpu"))[0].numpy(), m)
    return old, new


def test_deferred_photometrics_on_the_device_equal_the_dataset_path_without_noise():
    """Same generators, same draws: without the noise field and without an affine warp the trainer
    receives the same pixels (float rounding aside) as when the dataset augmented in float."""
    cfg = AugmentConfig(hflip_p=0.5, vflip_p=0.5, rot90_p=0.5, affine_p=0.0, photometric_p=0.7, noise_std=0.0)
    for seed in range(12):
        (oo, os_, om), (no, ns, nm) = _both_paths(cfg, seed)
        np.testing.assert_allclose(no, oo, atol=2e-6)
        np.testing.assert_allclose(ns, os_, atol=2e-6)
        np.testing.assert_array_equal(nm, om)


def test_an_affine_warp_of_a_uint8_image_is_within_half_a_grey_level():
    """The one rounding of the deferred path: a uint8 image warped in the dataset stays uint8."""
    cfg = AugmentConfig(affine_p=1.0, photometric_p=0.0)
    for seed in range(6):
        (oo, os_, om), (no, ns, nm) = _both_paths(cfg, seed)
        np.testing.assert_allclose(no, oo, atol=1e-6)  # the float original is warped in float as before
        assert np.abs(ns - os_).max() <= 0.5 / 255 + 1e-6
        np.testing.assert_array_equal(nm, om)


def test_device_noise_has_the_drawn_sigma_and_is_reproducible():
    """The noise field is another realisation with the same sigma, the same for the same visit."""
    cfg = AugmentConfig(hflip_p=0.0, vflip_p=0.0, rot90_p=0.0, affine_p=0.0, photometric_p=1.0, brightness=0.0,
                        contrast=0.0, gamma=0.0, noise_std=0.05)
    from s2s2.stages.train.augment import draw_photometric

    for seed in range(4):
        (oo, _, _), (no, _, _) = _both_paths(cfg, seed)
        assert np.array_equal(_both_paths(cfg, seed)[1][0], no)
        original, _, mask = _stored_pair(seed)
        rng = np.random.default_rng(seed)
        draw_geometry(cfg, mask.shape, rng)  # the visit draws its geometry first
        sigma = draw_photometric(cfg, rng).sigma
        inside = (original > 0.2) & (original < 0.8)  # away from the clipping at 0 and 1
        for jittered in (oo, no):
            assert abs(float((jittered - original)[inside].std()) - sigma) < 0.15 * sigma
        assert not np.allclose(no, oo)
