"""Stack-val validation: the model segmenting the stack images of the val split's masks.

The real val split shares the training data's appearance, so it can only show what robustness
costs. The stack-val store (`store.val_path`, drawn by the same generator for the val masks,
`generate.val_stack`) shows the model unseen masks in the stack's appearances, without any target
data. Its images are for validation only: training refuses a store of the val split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from s2s2.pipeline.config.project import ProjectConfig
from s2s2.pipeline.data.prepared import PreparedDataset
from s2s2.pipeline.errors import ConfigError, StoreError
from s2s2.store.layout import to_unit_float
from s2s2.store.manifest import VAL_SPLIT


@dataclass(frozen=True)
class StackVal:
    """Every stack image of the val masks (N x K of them, in memory) and the mask each one shows."""

    images: np.ndarray  # [N*K, C, H, W] float32 in [0, 1]
    masks: np.ndarray  # [N*K, H, W]
    path: str


def needs_stack_val(cfg: ProjectConfig) -> bool:
    """Whether the best checkpoint is chosen with the stack-val Dice."""
    return cfg.train.select_on in ("stack_val", "mean")


def load_stack_val(cfg: ProjectConfig, dataset: PreparedDataset) -> StackVal | None:
    """The stack-val images of `store.val_path`, checked against the dataset; None when there is no
    such store and the selection rule does not need one (then validation reports the real val only)."""
    from s2s2.store.stack_store import StackStore

    path = cfg.store.val_path
    fix = ("fix: run `make generate` (or `s2s2 generate --set generate.val_stack=true`) to draw the stack "
           "images of the val masks, or set train.select_on=val")
    if not path or ("://" not in path and not Path(path).exists()):
        if needs_stack_val(cfg):
            raise StoreError(f"train.select_on={cfg.train.select_on} needs the stack-val store, and there is none "
                             f"at {path}; {fix}")
        return None
    store = StackStore.open(path, "r", cfg.store.storage_options or None)
    manifest = store.manifest
    if manifest.split != VAL_SPLIT or manifest.dataset_fingerprint != dataset.fingerprint():
        raise StoreError(f"{path}: store.val_path must hold the {VAL_SPLIT!r} split of this dataset (it holds split "
                         f"{manifest.split!r} of dataset fingerprint {manifest.dataset_fingerprint[:12]}…); {fix}")
    complete = float(store.current_done().mean())  # images of the generator in force only
    if complete < 1.0:
        raise StoreError(f"{path}: the stack-val store is {100 * complete:.1f}% generated; {fix}")
    rows = range(store.n_samples)
    images = [to_unit_float(image) for image in store.read_stack_images([r for r in rows for _ in range(store.k)],
                                                                         [k for _ in rows for k in range(store.k)])]
    masks = np.repeat(store.read_masks(rows), store.k, axis=0)
    return StackVal(images=np.stack(images).astype(np.float32), masks=masks, path=str(path))


def selection_score(select_on: str, row: dict[str, Any]) -> float:
    """The number the best checkpoint maximises, from one validation row of the history."""
    if select_on == "val":
        return row["val_dice_mean"]
    if select_on == "stack_val":
        return row["stack_val_dice_mean"]
    values = [row["val_dice_mean"], row["stack_val_dice_mean"]]
    return math.nan if any(math.isnan(v) for v in values) else float(np.mean(values))


def selected_row(history: list[dict[str, Any]], select_on: str) -> dict[str, Any] | None:
    """The validation row whose weights model.safetensors holds: the first with the highest score."""
    best, chosen = -math.inf, None
    for row in history:
        if "val_dice_mean" not in row:
            continue
        score = selection_score(select_on, row)
        if chosen is None or score > best:
            best, chosen = score, row
    return chosen


def check_select_on(cfg: ProjectConfig, dataset: PreparedDataset) -> None:
    """Selection on stack-val needs a val split (its masks are the val masks)."""
    if needs_stack_val(cfg) and not dataset.splits.get(VAL_SPLIT):
        raise ConfigError(f"train.select_on={cfg.train.select_on} needs a val split; dataset {dataset.name} has "
                          "none; fix: give the data a val split or set train.select_on=val")
