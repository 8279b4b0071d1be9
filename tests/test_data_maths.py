"""Pure data helpers: splits, tissue labels, slicing orientation, crops, resizing, scaling."""

from __future__ import annotations

import numpy as np

from s2s2.pipeline.data.brain import icbm_csf, tissue_labels
from s2s2.pipeline.data.geometry import (crop_square, pad_box, resize_image, resize_mask, robust_scale,
                                         slice_spacing, square_box, volume_slice)
from s2s2.pipeline.data.split import assign_splits, held_out_counts, split_cases, split_slabs
from s2s2.pipeline.data.world import Grid, RigidPerturbation, draw_perturbation, resample


def test_held_out_counts() -> None:
    assert held_out_counts(10, 0.1, 0.2) == (1, 2)
    assert held_out_counts(3, 0.1, 0.2) == (1, 1)  # at least one each when asked for
    assert held_out_counts(2, 0.1, 0.2) == (0, 1)  # but one case is always left to train
    assert held_out_counts(1, 0.1, 0.2) == (0, 0)
    assert held_out_counts(10, 0.0, 0.0) == (0, 0)


def test_split_cases_deterministic_and_complete() -> None:
    cases = [f"c{i}" for i in range(20)]
    first = split_cases(cases, 0.1, 0.2, seed=3)
    assert first == split_cases(list(reversed(cases)), 0.1, 0.2, seed=3)  # order of input does not matter
    assert sorted(first.values()).count("test") == 4 and list(first.values()).count("val") == 2
    assert split_cases(cases, 0.1, 0.2, seed=4) != first


def test_split_slabs_gaps_and_contiguity() -> None:
    labels = split_slabs(130, slab_slices=12, gap=3, val_fraction=0.1, test_fraction=0.2, seed=0)
    assert len(labels) == 130
    kept = [(i, name) for i, name in enumerate(labels) if name is not None]
    names = [name for _, name in kept]
    assert {"train", "val", "test"} == set(names)
    for (i, a), (j, b) in zip(kept, kept[1:]):
        if a != b:
            assert j - i == 4  # exactly `gap` slices dropped between splits
        else:
            assert j - i == 1
    # held-out slabs stay whole (12 slices); the training side pays for the gaps
    for name in ("val", "test"):
        runs, current = [], 0
        for label in labels + [None]:
            if label == name:
                current += 1
            elif current:
                runs.append(current)
                current = 0
        assert all(run == 12 for run in runs[:-1]) and runs
    assert split_slabs(130, 12, 3, 0.1, 0.2, seed=0) == labels


def test_assign_splits_slabs_for_one_volume_cases_for_many() -> None:
    one_volume = assign_splits(["vol"] * 40, list(range(40)), 0.1, 0.2, slab_slices=5, gap=1, seed=0)
    assert None in one_volume and {"train", "val", "test"} <= set(one_volume)
    many = assign_splits([f"c{i // 4}" for i in range(40)], [i % 4 for i in range(40)], 0.1, 0.2, 5, 1, 0)
    assert None not in many
    assert all(len(set(many[4 * c:4 * c + 4])) == 1 for c in range(10))


def test_tissue_labels_follow_the_recipe() -> None:
    inside = np.array([0.0, 1.0, 1.0, 1.0, 1.0])
    grey = np.array([0.9, 0.7, 0.2, 0.1, 0.0])
    white = np.array([0.0, 0.2, 0.7, 0.1, 0.0])
    labels = tissue_labels(inside, icbm_csf(inside, grey, white), grey, white)
    assert labels.tolist() == [0, 2, 3, 1, 1]


def test_volume_slice_orientation_and_spacing() -> None:
    volume = np.zeros((4, 5, 6))  # RAS: x right, y anterior, z superior
    volume[3, 4, 2] = 1.0  # right, anterior, slice 2
    axial = volume_slice(volume, 2, 2)
    assert axial.shape == (5, 4) and axial[0, 3] == 1.0  # anterior at the top, right at the right
    assert slice_spacing((0.5, 0.7, 2.0), 2) == (0.7, 0.5)
    coronal = volume_slice(volume, 1, 4)
    assert coronal.shape == (6, 4) and coronal[6 - 1 - 2, 3] == 1.0  # superior up


def test_square_box_crop_and_pad() -> None:
    foreground = np.zeros((10, 12), bool)
    foreground[2:5, 3:9] = True
    box = square_box(foreground, margin=1)
    assert box[2] == box[3] == 8  # 6 wide + 2 margin
    crop = crop_square(foreground.astype(np.uint8), box)
    assert crop.shape == (8, 8) and crop.sum() == foreground.sum()
    padded = crop_square(np.ones((1, 4, 6), np.float32), pad_box((4, 6)))
    assert padded.shape == (1, 6, 6) and padded.sum() == 24 and padded[0, 0].sum() == 0


def test_resize_keeps_mean_and_mask_follows_image() -> None:
    image = np.zeros((1, 64, 64), np.float32)
    image[0, 16:48, 16:48] = 1.0
    small = resize_image(image, 16)
    assert small.shape == (1, 16, 16) and abs(small.mean() - image.mean()) < 0.01
    mask = (image[0] > 0).astype(np.uint8) * 2
    small_mask = resize_mask(mask, 16, num_classes=3)
    assert small_mask.dtype == np.uint8 and set(np.unique(small_mask)) == {0, 2}
    assert small_mask.sum() == 2 * 64  # the 32x32 square becomes exactly 8x8


def test_robust_scale_ignores_outliers() -> None:
    values = np.linspace(0.0, 100.0, 1001).astype(np.float32)
    values[0] = 1e6  # one hot voxel must not darken the rest
    scaled = robust_scale(values, high_pct=99.0)
    assert scaled.max() == 1.0 and 0.45 < scaled[500] < 0.55


def test_rigid_perturbation_is_a_rigid_motion_about_its_centre() -> None:
    motion = RigidPerturbation(rotate_deg=(5.0, -8.0, 10.0), shift_mm=(0.0, 0.0, 0.0), center_mm=(10.0, -20.0, 5.0))
    matrix = motion.matrix()
    rotation = matrix[:3, :3]
    assert np.allclose(rotation @ rotation.T, np.eye(3)) and np.isclose(np.linalg.det(rotation), 1.0)
    assert np.allclose(matrix @ [10.0, -20.0, 5.0, 1.0], [10.0, -20.0, 5.0, 1.0])  # the centre stays put
    quarter = RigidPerturbation(rotate_deg=(0.0, 0.0, 90.0), shift_mm=(1.0, 2.0, 3.0), center_mm=(0.0, 0.0, 0.0))
    assert np.allclose(quarter.matrix() @ [1.0, 0.0, 0.0, 1.0], [1.0, 3.0, 3.0, 1.0])  # x -> y, then the shift


def test_draw_perturbation_is_seeded_and_bounded() -> None:
    draws = [draw_perturbation(0, f"volume{i}", 10.0, 0.08, (100.0, 200.0, 50.0), (0.0, 0.0, 0.0)) for i in range(50)]
    assert draws[3] == draw_perturbation(0, "volume3", 10.0, 0.08, (100.0, 200.0, 50.0), (0.0, 0.0, 0.0))
    assert draws[3] != draw_perturbation(1, "volume3", 10.0, 0.08, (100.0, 200.0, 50.0), (0.0, 0.0, 0.0))
    angles = np.array([d.rotate_deg for d in draws])
    shifts = np.array([d.shift_mm for d in draws])
    assert np.abs(angles).max() <= 10.0 and np.abs(angles).max() > 8.0
    assert (np.abs(shifts) <= [8.0, 16.0, 4.0]).all() and np.abs(shifts[:, 1]).max() > 12.0


def test_resample_follows_the_affines() -> None:
    volume = np.zeros((6, 7, 8), np.float32)
    volume[2, 3, 4] = 1.0
    grid = Grid(shape=(6, 7, 8), affine=np.diag([2.0, 2.0, 2.0, 1.0]))
    assert np.array_equal(resample(volume, grid.affine, grid, order=1), volume)  # same grid: unchanged
    shift = np.eye(4)
    shift[0, 3] = 2.0  # one voxel (2 mm) along x in world space
    assert np.array_equal(resample(volume, grid.affine, grid, order=0, transform=shift), np.roll(volume, 1, axis=0))
    flipped = np.diag([-2.0, 2.0, 2.0, 1.0])  # the same world points stored right-to-left
    flipped[0, 3] = 10.0
    assert np.allclose(resample(volume[::-1], flipped, grid, order=1), volume)
    fine = Grid(shape=(12, 14, 16), affine=np.diag([1.0, 1.0, 1.0, 1.0]))
    assert resample(volume, grid.affine, fine, order=0)[4, 6, 8] == 1.0  # world (4, 6, 8) mm on both grids
