"""The S2S2 objective against float64 references, and the 2B batched step against two forwards."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from s2s2.pipeline.config.train import LossConfig, ModelConfig
from s2s2.pipeline.losses import build_seg_loss, class_frequency_weights, consistency_loss, s2s2_loss, split_output
from s2s2.pipeline.segmenters import build_segmenter


def reference_distance(u: np.ndarray, v: np.ndarray, axis: int, distance: str) -> np.ndarray:
    """Per-position distance in float64, written out from the definition."""
    if distance == "cosine":
        dot = (u * v).sum(axis)
        norms = np.maximum(np.linalg.norm(u, axis=axis) * np.linalg.norm(v, axis=axis), 1e-8)
        return 1.0 - dot / norms
    return np.abs(u - v).mean(axis)


@pytest.mark.parametrize("distance", ["cosine", "l1"])
@pytest.mark.parametrize("shape,axis", [((3, 7, 5, 6), 1), ((3, 12, 9), -1)])
def test_consistency_matches_float64_reference(distance, shape, axis):
    rng = np.random.default_rng(0)
    u, v = rng.normal(size=shape), rng.normal(size=shape)
    got = consistency_loss(torch.tensor(u, dtype=torch.float32), torch.tensor(v, dtype=torch.float32), distance)
    want = reference_distance(u, v, axis, distance).mean()
    assert got.item() == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_identical_features_have_zero_loss_and_opposite_ones_two():
    u = torch.randn(2, 4, 3, 3)
    assert consistency_loss(u, u).item() == pytest.approx(0.0, abs=1e-6)
    assert consistency_loss(u, -u).item() == pytest.approx(2.0, abs=1e-6)
    assert consistency_loss(u, 3 * u).item() == pytest.approx(0.0, abs=1e-6)  # cosine ignores scale
    assert consistency_loss(u, 3 * u, "l1").item() == pytest.approx(2 * u.abs().mean().item(), rel=1e-5)


def reference_weighted(u, v, mask, axis, distance, num_classes, grid):
    """Class-frequency weighting by explicit loops: weight = 1 - frequency of the class in the full mask."""
    per = reference_distance(u, v, axis, distance).reshape(u.shape[0], *grid)
    b, height, width = mask.shape
    total = weight_sum = 0.0
    for i in range(b):
        freq = np.bincount(mask[i].ravel(), minlength=num_classes) / mask[i].size
        for y in range(grid[0]):
            for x in range(grid[1]):
                # nearest-neighbour resize as torch does it: source = floor(dst * in / out)
                c = mask[i, (y * height) // grid[0], (x * width) // grid[1]]
                w = 1.0 - freq[c]
                total += w * per[i, y, x]
                weight_sum += w
    return total / weight_sum


@pytest.mark.parametrize("distance", ["cosine", "l1"])
@pytest.mark.parametrize("tokens", [False, True])
def test_class_weighted_consistency_matches_reference(distance, tokens):
    rng = np.random.default_rng(1)
    mask = rng.integers(0, 3, size=(2, 16, 16))
    mask[:, :8] = 0  # make the background frequent so the weights differ
    grid = (4, 4)
    shape, axis = ((2, 16, 5), -1) if tokens else ((2, 5, *grid), 1)
    u, v = rng.normal(size=shape), rng.normal(size=shape)
    got = consistency_loss(torch.tensor(u, dtype=torch.float32), torch.tensor(v, dtype=torch.float32), distance,
                           mask=torch.tensor(mask), num_classes=3)
    want = reference_weighted(u, v, mask, axis, distance, 3, grid)
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_frequency_weights_of_a_half_half_mask_are_one_half():
    mask = torch.zeros(1, 8, 8, dtype=torch.long)
    mask[:, 4:] = 1
    weights = class_frequency_weights(mask, (2, 2), num_classes=2)
    torch.testing.assert_close(weights, torch.full((1, 2, 2), 0.5))


def test_options_switch_terms_on_and_off():
    torch.manual_seed(0)
    model = build_segmenter(ModelConfig(name="unet"), 1, 3, 32).eval()
    x = torch.rand(4, 1, 32, 32)
    mask = torch.randint(0, 3, (2, 32, 32))
    out0, outk = split_output(model(x), 2)
    seg_loss = build_seg_loss(LossConfig())
    full = s2s2_loss(LossConfig(w_seg_gen=1.0, a_enc=0.5, a_dec=0.25), seg_loss, out0, outk, mask)
    assert full.total.item() == pytest.approx(
        (full.seg + full.seg_gen + 0.5 * full.enc + 0.25 * full.dec).item(), rel=1e-6)
    assert min(full.seg_gen.item(), full.enc.item(), full.dec.item()) > 0
    no_gen = s2s2_loss(LossConfig(w_seg_gen=0.0, a_enc=1.0, a_dec=1.0), seg_loss, out0, outk, mask)
    assert no_gen.seg_gen.item() == 0.0
    assert no_gen.total.item() == pytest.approx((no_gen.seg + no_gen.enc + no_gen.dec).item(), rel=1e-6)
    baseline = s2s2_loss(LossConfig(), seg_loss, out0, None, mask)
    assert baseline.total.item() == pytest.approx(full.seg.item(), rel=1e-6)
    assert (baseline.seg_gen.item(), baseline.enc.item(), baseline.dec.item()) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize("name", ["unet", "transunet", "fcbformer"])
def test_batched_2b_step_equals_two_separate_forwards_in_eval_mode(name):
    torch.manual_seed(0)
    model = build_segmenter(ModelConfig(name=name), 1, 4, 32).eval()
    original, stack_image = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    mask = torch.randint(0, 4, (2, 32, 32))
    cfg = LossConfig(w_seg_gen=1.0, a_enc=0.7, a_dec=0.3)
    seg_loss = build_seg_loss(cfg)

    def gradients(loss):
        model.zero_grad()
        loss.backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    out0, outk = split_output(model(torch.cat([original, stack_image])), 2)
    batched = s2s2_loss(cfg, seg_loss, out0, outk, mask)
    grads_batched = gradients(batched.total)
    separate = s2s2_loss(cfg, seg_loss, model(original), model(stack_image), mask)
    grads_separate = gradients(separate.total)
    for a, b in zip(batched, separate):
        assert a.item() == pytest.approx(b.item(), rel=1e-4, abs=1e-6)
    assert len(grads_batched) == len(grads_separate) > 0
    for a, b in zip(grads_batched, grads_separate):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def reference_dice_loss(probabilities: np.ndarray, onehot: np.ndarray) -> float:
    """MONAI's DiceLoss defaults written out: per image and channel, smooth 1e-5, mean over both."""
    axes = (2, 3)
    intersection = (probabilities * onehot).sum(axes)
    denominator = probabilities.sum(axes) + onehot.sum(axes)
    return float((1.0 - (2.0 * intersection + 1e-5) / (denominator + 1e-5)).mean())


@pytest.mark.parametrize("classes", [2, 4])
def test_seg_losses_match_their_definitions(classes):
    """ce_dice: softmax CE + softmax Dice; bce_dice: sigmoid BCE + sigmoid Dice on every class channel
    (MONAI's DiceCELoss(sigmoid=True) would take a softmax CE here for two or more channels)."""
    rng = np.random.default_rng(classes)
    logits = rng.normal(0, 2, size=(3, classes, 8, 8))
    mask = rng.integers(0, classes, size=(3, 8, 8))
    onehot = np.moveaxis(np.eye(classes)[mask], -1, 1)
    sigmoid = 1.0 / (1.0 + np.exp(-logits))
    bce = -(onehot * np.log(sigmoid) + (1 - onehot) * np.log(1 - sigmoid)).mean()
    softmax = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    ce = -(onehot * np.log(softmax)).sum(1).mean()
    want = {"bce_dice": 0.7 * bce + 1.3 * reference_dice_loss(sigmoid, onehot),
            "ce_dice": 0.7 * ce + 1.3 * reference_dice_loss(softmax, onehot)}
    for seg, expected in want.items():
        loss = build_seg_loss(LossConfig(seg=seg, lambda_ce=0.7, lambda_dice=1.3))
        got = loss(torch.tensor(logits, dtype=torch.float32), torch.tensor(mask)[:, None])
        assert got.item() == pytest.approx(expected, rel=1e-5), seg


def test_stack_terms_active_only_with_a_weight_on_the_stack_image():
    from s2s2.pipeline.losses import stack_terms_active

    assert not stack_terms_active(LossConfig(w_seg_gen=0, a_enc=0, a_dec=0))
    for weights in ({"w_seg_gen": 0.1, "a_enc": 0}, {"w_seg_gen": 0, "a_enc": 1}, {"w_seg_gen": 0, "a_enc": 0, "a_dec": 1}):
        assert stack_terms_active(LossConfig(**weights))


def test_a_run_without_the_consistency_term_is_not_labelled_s2s2():
    from s2s2.pipeline.config.train import LossConfig
    from s2s2.pipeline.losses import method_label

    assert method_label(False, LossConfig()) == "baseline"
    assert method_label(True, LossConfig()) == "s2s2"
    assert method_label(True, LossConfig(a_enc=0.0, a_dec=1.0)) == "s2s2"
    assert method_label(True, LossConfig(a_enc=0.0, a_dec=0.0, w_seg_gen=1.0)) == "stack seg-only"
