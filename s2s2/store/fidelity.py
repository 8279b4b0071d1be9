"""What a stack looks like against its masks: mask fidelity and appearance diversity. Pure numpy
(Dice from `s2s2.pipeline.metrics`, the one the evaluation uses).

Per-class mean intensities (channel mean) are fitted on the originals inside their masks. Every
pixel of a generated image is labelled with the class whose mean is nearest ("global" labels).
Foreground Dice of those labels against the image's own mask, versus against an unrelated mask
(another sample's, by a seeded derangement), separates "follows its mask" from chance.

Because S2S2 wants stacks that vary appearance, a second "adaptive" score refits the class means
on each generated image itself, using the mask under test (own or unrelated) — robust to
intensity shifts and contrast inversions, with the unrelated mask again giving chance level.

Read against its ceiling, the same scores computed on the originals themselves, fidelity becomes
the share of the achievable margin over chance that the stack realises (`normalised_fidelity`).
Appearance diversity (`stack_appearance`) says how much per-tissue brightness varies across k and
how often the tissue brightness order differs from the original's (what contrast shifts change).
"""

from __future__ import annotations

import numpy as np

from s2s2.pipeline.metrics import dice


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random permutation without fixed points (Sattolo's cycle), n >= 2."""
    if n < 2:
        raise ValueError(f"a derangement needs at least 2 samples, got {n}")
    perm = np.arange(n)
    for i in range(n - 1, 0, -1):
        j = int(rng.integers(i))
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def class_means(images: np.ndarray, masks: np.ndarray, num_classes: int) -> np.ndarray:
    """Mean channel-mean intensity of each class inside the masks; NaN for absent classes."""
    gray = images.reshape(images.shape[0], -1, *images.shape[-2:]).mean(axis=1)
    sums = np.bincount(masks.ravel(), weights=gray.ravel(), minlength=num_classes)[:num_classes]
    counts = np.bincount(masks.ravel(), minlength=num_classes)[:num_classes]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def nearest_mean_labels(gray: np.ndarray, means: np.ndarray) -> np.ndarray:
    """Label each pixel with the class of the nearest (non-NaN) mean."""
    distance = np.abs(gray[..., None] - means)
    distance = np.where(np.isnan(distance), np.inf, distance)
    return distance.argmin(axis=-1)


def dice_per_class(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> np.ndarray:
    """Dice of each foreground class (1..C-1); NaN where the class is in neither map."""
    return np.array([dice(pred == c, truth == c) for c in range(1, num_classes)], dtype=np.float64)


def mask_fidelity(originals: np.ndarray, masks: np.ndarray, stack: np.ndarray,
                  rng: np.random.Generator, num_classes: int | None = None) -> dict:
    """Fidelity scores of `stack` [N,K,C,H,W] against `masks` [N,H,W], means fitted on `originals`.

    Images may be uint8 (0..255) or float in [0,1]. Returns `dice_own`, `dice_chance` (global
    means), `dice_own_adaptive`, `dice_chance_adaptive` (per-image means), `per_class` (class id
    -> own/chance Dice) and `n_samples`, `n_images`.
    """
    scale = 255.0 if originals.dtype == np.uint8 else 1.0
    originals = originals.astype(np.float64) / scale
    stack = stack.astype(np.float64) / (255.0 if stack.dtype == np.uint8 else 1.0)
    masks = masks.astype(np.int64)
    n, k = stack.shape[:2]
    num_classes = int(num_classes if num_classes is not None else masks.max() + 1)
    means = class_means(originals, masks, num_classes)
    other = derangement(n, rng)
    gray = stack.mean(axis=2)  # [N,K,H,W]
    own, chance, own_adaptive, chance_adaptive = [], [], [], []
    for i in range(n):
        for j in range(k):
            labels = nearest_mean_labels(gray[i, j], means)
            own.append(dice_per_class(labels, masks[i], num_classes))
            chance.append(dice_per_class(labels, masks[other[i]], num_classes))
            for truth, sink in ((masks[i], own_adaptive), (masks[other[i]], chance_adaptive)):
                fitted = class_means(gray[i, j][None, None], truth[None], num_classes)
                sink.append(dice_per_class(nearest_mean_labels(gray[i, j], fitted), truth, num_classes))
    own_c, chance_c = np.nanmean(np.array(own), axis=0), np.nanmean(np.array(chance), axis=0)
    return {
        "dice_own": float(np.nanmean(own_c)),
        "dice_chance": float(np.nanmean(chance_c)),
        "dice_own_adaptive": float(np.nanmean(np.nanmean(np.array(own_adaptive), axis=0))),
        "dice_chance_adaptive": float(np.nanmean(np.nanmean(np.array(chance_adaptive), axis=0))),
        "per_class": {c: {"own": float(own_c[c - 1]), "chance": float(chance_c[c - 1])}
                      for c in range(1, num_classes)},
        "n_samples": int(n),
        "n_images": int(n * k),
    }


SCORES = {"global": ("dice_own", "dice_chance"), "adaptive": ("dice_own_adaptive", "dice_chance_adaptive")}


def normalised_fidelity(scores: dict, ceiling: dict) -> dict[str, float | None]:
    """`(own - chance) / (ceiling own - ceiling chance)` for the global and the adaptive score:
    1 means the stack follows its masks as well as the originals do. None where the originals
    themselves are not above chance (no ceiling to read against)."""
    out: dict[str, float | None] = {}
    for name, (own, chance) in SCORES.items():
        margin = ceiling[own] - ceiling[chance]
        out[name] = (scores[own] - scores[chance]) / margin if margin > 0 else None
    return out


def _tissue_means(grey: np.ndarray, mask: np.ndarray, classes: list[int]) -> np.ndarray:
    """Mean grey value of each of `classes` in each image of `grey` [K,H,W] -> [K, len(classes)]."""
    return np.array([[image[mask == c].mean() for c in classes] for image in grey])


def stack_appearance(originals: np.ndarray, stack: np.ndarray, masks: np.ndarray, num_classes: int) -> dict:
    """How much the stack varies in appearance per tissue, and how often the tissue order changes.

    `originals` [N,C,H,W], `stack` [N,K,C,H,W] (uint8 or [0,1] floats), `masks` [N,H,W]. Per image:
    the mean grey value of each foreground class present (samples with fewer than two are skipped).
    Returns the spread (std) of those means across k, averaged over samples and classes, in [0,1]
    grey units; the mean gap between neighbouring class means of the stack (for scale); and the
    share of stack images whose class brightness order differs from their original's. Out-of-domain
    gain needs that order to change (T1 -> T2 flips it); a generator trained on T1 alone may not.
    """
    def grey(images: np.ndarray) -> np.ndarray:
        return images.astype(np.float64).mean(axis=-3) / (255.0 if images.dtype == np.uint8 else 1.0)

    stack_grey, original_grey = grey(stack), grey(originals)  # [N,K,H,W], [N,H,W]
    spreads, gaps, changed, total = [], [], 0, 0
    for i in range(stack_grey.shape[0]):
        present = [c for c in range(1, num_classes) if (masks[i] == c).any()]
        if len(present) < 2:
            continue
        means = _tissue_means(stack_grey[i], masks[i], present)
        reference = tuple(np.argsort(_tissue_means(original_grey[i][None], masks[i], present)[0]))
        spreads.append(means.std(axis=0).mean())
        gaps.append(np.abs(np.diff(np.sort(means.mean(axis=0)))).mean())
        changed += sum(tuple(np.argsort(row)) != reference for row in means)
        total += len(means)
    return {
        "class_mean_spread_across_k": float(np.mean(spreads)) if spreads else None,
        "class_mean_gap": float(np.mean(gaps)) if gaps else None,
        "order_changed_fraction": changed / total if total else None,
        "n_images": total,
    }
