"""Deterministic train/val/test splits that never leak near-duplicates across splits.

Many cases: whole cases go to one split. One or two volumes: contiguous slabs of slices, spread
over the volume, with `gap` slices dropped at every border between slabs of different splits
(adjacent 1 mm slices are near duplicates, so interleaving would inflate test scores).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MIN_CASES_FOR_CASE_SPLIT = 3


def held_out_counts(n_units: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """(n_val, n_test) units: rounded shares, at least one each when asked for, always >= 1 unit left to train."""
    n_test = max(1, round(test_fraction * n_units)) if test_fraction > 0 else 0
    n_val = max(1, round(val_fraction * n_units)) if val_fraction > 0 else 0
    while n_val + n_test > n_units - 1 and (n_val or n_test):
        if n_val >= n_test and n_val:
            n_val -= 1
        else:
            n_test -= 1
    return n_val, n_test


def split_cases(cases: Sequence[str], val_fraction: float, test_fraction: float, seed: int) -> dict[str, str]:
    """Case id -> split; a seeded shuffle of the sorted unique case ids."""
    unique = sorted(set(cases))
    n_val, n_test = held_out_counts(len(unique), val_fraction, test_fraction)
    order = np.random.default_rng(seed).permutation(len(unique))
    names = ["test"] * n_test + ["val"] * n_val + ["train"] * (len(unique) - n_val - n_test)
    return {unique[i]: name for i, name in zip(order, names)}


def slab_labels(n_slabs: int, val_fraction: float, test_fraction: float, seed: int) -> list[str]:
    """Split of each slab: held-out slabs are spread over the volume (one per stratum), seeded."""
    n_val, n_test = held_out_counts(n_slabs, val_fraction, test_fraction)
    held = n_val + n_test
    labels = ["train"] * n_slabs
    if held == 0:
        return labels
    rng = np.random.default_rng(seed)
    offset = rng.uniform(0.0, 1.0)
    picks = [min(int((j + offset) * n_slabs / held), n_slabs - 1) for j in range(held)]
    names = list(rng.permutation(["test"] * n_test + ["val"] * n_val))
    for slab, name in zip(picks, names):
        labels[slab] = str(name)
    return labels


def split_slabs(n_slices: int, slab_slices: int, gap: int, val_fraction: float, test_fraction: float,
                seed: int) -> list[str | None]:
    """Split of each of `n_slices` consecutive slices (None = dropped in a gap between splits).

    At a border between a training slab and a held-out slab, the training side loses `gap`
    slices, so held-out slabs stay whole; between val and test the earlier slab loses them.
    """
    n_slabs = max(1, -(-n_slices // slab_slices))
    per_slab = slab_labels(n_slabs, val_fraction, test_fraction, seed)
    out: list[str | None] = [per_slab[i // slab_slices] for i in range(n_slices)]
    for border in range(1, n_slabs):
        left, right = per_slab[border - 1], per_slab[border]
        if left == right:
            continue
        start = border * slab_slices
        if right == "train":
            dropped = range(start, min(start + gap, n_slices))
        else:
            dropped = range(max(start - gap, 0), start)
        for i in dropped:
            out[i] = None
    return out


def assign_splits(cases: Sequence[str], positions: Sequence[int], val_fraction: float, test_fraction: float,
                  slab_slices: int, gap: int, seed: int) -> list[str | None]:
    """Split of each slice, given its case and its position in the case's volume (None = dropped).

    With at least MIN_CASES_FOR_CASE_SPLIT cases, cases are split; otherwise each case's slices
    (ordered by position) are split into slabs.
    """
    if len(set(cases)) >= MIN_CASES_FOR_CASE_SPLIT:
        by_case = split_cases(cases, val_fraction, test_fraction, seed)
        return [by_case[case] for case in cases]
    out: list[str | None] = [None] * len(cases)
    for case in sorted(set(cases)):
        members = sorted((i for i, c in enumerate(cases) if c == case), key=lambda i: positions[i])
        labels = split_slabs(len(members), slab_slices, gap, val_fraction, test_fraction, seed)
        for index, label in zip(members, labels):
            out[index] = label
    return out


def fcbformer_split(n: int) -> list[str]:
    """Split of each of `n` images (sorted by file name) as FCBFormer's `split_ids` makes it: 10 % test
    by sklearn's `train_test_split(random_state=42)`, then 10 % of the whole as val from the rest
    the same way; 80/10/10, e.g. Kvasir-SEG 800/100/100 and CVC-ClinicDB 490/61/61."""
    from sklearn.model_selection import train_test_split

    held = int(round(0.1 * n))
    if n < 3 or held < 1:
        return ["train"] * n
    train, test = train_test_split(np.arange(n), test_size=held, random_state=42)
    train, val = train_test_split(train, test_size=held, random_state=42)
    labels = ["train"] * n
    for index in test:
        labels[int(index)] = "test"
    for index in val:
        labels[int(index)] = "val"
    return labels
