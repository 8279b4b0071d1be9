"""Per-case Dice and HD95 with an explicit policy for empty masks (pure functions, numpy in/out).

A case is a 2-D slice or a 3-D volume (its slices stacked back at their positions, as nnU-Net and
TransUNet score); distances are in the spacing's unit (mm, or pixels when the data has no spacing).
Policy, per case and class (documented in the README):
- truth empty and prediction empty: Dice and HD95 are NaN — the class is absent and correctly not
  predicted; the case is left out of that class's mean (never counted as Dice 1).
- exactly one of them empty (a false positive on an empty truth, or a missed structure): Dice 0 and
  HD95 = the image (or volume) diagonal, the largest distance possible on it (a finite penalty, so
  failures raise the mean instead of vanishing from it).
- both present: Dice = 2|P∩T| / (|P|+|T|); HD95 from MONAI (symmetric, percentile of the
  surface-to-surface distances, spacing-aware).
"""

from __future__ import annotations

import warnings

import numpy as np

from s2s2.pipeline.monai_import import import_monai


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks under the policy above (NaN when both are empty)."""
    prediction, truth = np.asarray(prediction, bool), np.asarray(truth, bool)
    total = int(prediction.sum()) + int(truth.sum())
    if total == 0:
        return float("nan")
    return 2.0 * float(np.logical_and(prediction, truth).sum()) / total


def diagonal_mm(shape: tuple[int, ...], spacing: tuple[float, ...]) -> float:
    """Length of the image (or volume) diagonal: the HD95 penalty for a missing or spurious structure."""
    return float(np.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing))))


def hd95(prediction: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...], percentile: float = 95.0,
         present: np.ndarray | None = None) -> float:
    """Symmetric percentile Hausdorff distance of two boolean masks (2-D or 3-D, one spacing per axis)
    under the policy above. `present` (one flag per plane of axis 0) marks the planes that were seen; the
    others (gaps between the slabs of a split) are neither surface nor background, see `_gap_hd95`."""
    import torch
    import_monai()
    from monai.metrics import compute_hausdorff_distance

    prediction, truth = np.asarray(prediction, bool), np.asarray(truth, bool)
    if not prediction.any() and not truth.any():
        return float("nan")
    if not prediction.any() or not truth.any():
        return diagonal_mm(truth.shape, spacing)
    if present is not None and not np.all(present):
        return _gap_hd95(prediction, truth, spacing, percentile, np.asarray(present, bool))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = compute_hausdorff_distance(torch.from_numpy(prediction[None, None]), torch.from_numpy(truth[None, None]),
                                           include_background=True, percentile=percentile,
                                           spacing=[float(s) for s in spacing])
    return float(value.item())


def _gap_hd95(prediction: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...], percentile: float,
              present: np.ndarray) -> float:
    """HD95 over the planes that exist: each missing plane takes the nearest present plane's values, so a
    slab's end next to a gap is no surface (the anatomy goes on there, unseen), then surfaces in missing
    planes are dropped and the surface distances are taken between the remaining ones at their true
    positions (MONAI's edges and distance transform, the same maths as `hd95` on a whole volume)."""
    from monai.metrics.utils import get_mask_edges, get_surface_distance

    seen = np.flatnonzero(present)
    nearest = seen[np.abs(np.arange(len(present))[:, None] - seen[None, :]).argmin(axis=1)]
    edges_pred, edges_truth = get_mask_edges(prediction[nearest], truth[nearest], crop=False)  # numpy in, numpy out
    edges_pred, edges_truth = edges_pred & present[:, None, None], edges_truth & present[:, None, None]
    spacing_list = [float(s) for s in spacing]
    directed = [get_surface_distance(a, b, "euclidean", spacing_list)
                for a, b in ((edges_pred, edges_truth), (edges_truth, edges_pred))]
    return float(max(np.percentile(d, percentile) for d in directed))


def case_metrics(prediction: np.ndarray, truth: np.ndarray, classes: dict[str, int], spacing: tuple[float, ...],
                 percentile: float = 95.0, present: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """Dice and HD95 of one case for each named class: {class name: {"dice", "hd95"}} (`present`: see `hd95`)."""
    return {name: {"dice": dice(prediction == c, truth == c),
                   "hd95": hd95(prediction == c, truth == c, spacing, percentile, present)}
            for name, c in classes.items()}


def stack_slices(slices: list[np.ndarray], positions: list[int]) -> np.ndarray:
    """A volume [P,H,W] from 2-D slices and their positions in it: each slice at its position (from the
    lowest), positions without a slice (not kept, another split) left empty (0)."""
    low = min(positions)
    volume = np.zeros((max(positions) - low + 1, *slices[0].shape), dtype=slices[0].dtype)
    for plane, position in zip(slices, positions):
        volume[position - low] = plane
    return volume


def present_planes(positions: list[int]) -> np.ndarray:
    """One flag per plane of `stack_slices(..., positions)`: True where a slice was stacked, False in the gaps."""
    low = min(positions)
    present = np.zeros(max(positions) - low + 1, dtype=bool)
    present[np.asarray(positions) - low] = True
    return present


def nanmean(values: list[float]) -> float:
    """Mean ignoring NaN (absent classes); NaN when there is nothing to average."""
    finite = [v for v in values if not np.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def summarise(cases: list[dict[str, dict[str, float]]]) -> dict:
    """Per-class means over cases and the mean over classes: {"dice_mean", "dice", "hd95_mean", "hd95"}."""
    names = list(cases[0]) if cases else []
    dice_per_class = {n: nanmean([c[n]["dice"] for c in cases]) for n in names}
    hd_per_class = {n: nanmean([c[n]["hd95"] for c in cases]) for n in names}
    return {"dice_mean": nanmean(list(dice_per_class.values())), "dice": dice_per_class,
            "hd95_mean": nanmean(list(hd_per_class.values())), "hd95": hd_per_class}
