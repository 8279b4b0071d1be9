"""Shared pieces of the stage-two tests: a tiny learnable dataset, a filled stack store, a config."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from s2s2.pipeline.config.project import ProjectConfig
from s2s2.pipeline.data.prepared import PreparedDataset

CLASSES = ("background", "csf", "grey matter", "white matter")


def blob_dataset(n: int = 24, size: int = 32, seed: int = 0, name: str = "blobs") -> PreparedDataset:
    """Nested discs (classes 1..3) with class-dependent intensity plus noise: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = np.zeros((n, 1, size, size), np.float32)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        cy, cx = rng.uniform(0.35, 0.65, 2) * size
        r = rng.uniform(0.25, 0.4) * size
        d = np.hypot(yy - cy, xx - cx)
        masks[i][d < r] = 1
        masks[i][d < 0.7 * r] = 2
        masks[i][d < 0.4 * r] = 3
        images[i, 0] = np.array([0.05, 0.3, 0.6, 0.9], np.float32)[masks[i]] + rng.normal(0, 0.05, (size, size))
    images = np.clip(images, 0, 1)
    n_val = n_test = max(2, n // 6)
    splits = {"train": list(range(n - n_val - n_test)), "val": list(range(n - n_val - n_test, n - n_test)),
              "test": list(range(n - n_test, n))}
    return PreparedDataset(name=name, images=images, masks=masks, ids=[f"{name}_{i:03d}" for i in range(n)],
                           spacings=np.ones((n, 2), np.float32), class_names=CLASSES, modality="synthetic",
                           prompt_template="{modality} showing {classes}", splits=splits)


def filled_store(path: Path, dataset: PreparedDataset, k: int = 3, complete: bool = True, seed: int = 1):
    """A real Zarr stack store of `dataset`'s train split whose stack image k is the original with
    its tissue intensities permuted and `k` encoded in a corner pixel (so tests can see which k was read)."""
    from s2s2.store.stack_store import StackStore

    store = StackStore.open(path, "r+") if Path(path).exists() else StackStore.create(path, dataset, k=k, shard_size=4)
    rng = np.random.default_rng(seed)
    masks = store.read_masks(range(store.n_samples))
    shards = range(store.num_shards) if complete else range(store.num_shards - 1)
    for shard in shards:
        rows = store.shard_samples(shard)
        images = np.zeros((len(rows), k, *dataset.image_shape), np.uint8)
        for j, row in enumerate(rows):
            for kk in range(k):
                levels = rng.uniform(0, 1, dataset.num_classes).astype(np.float32)
                image = levels[masks[row]] + rng.normal(0, 0.05, masks[row].shape)
                images[j, kk, 0] = np.clip(image * 255, 0, 255).astype(np.uint8)
        store.write_shard(shard, images)
    return store


def tiny_config(tmp_path: Path, **train: object) -> ProjectConfig:
    """A config writing into tmp_path, with a fast CPU schedule; `train` overrides train fields."""
    base = {"steps": 6, "batch_size": 4, "val_every": 3, "log_every": 1, "checkpoint_every": 3, "lr": 3e-3}
    return ProjectConfig.model_validate({
        "run_dir": str(tmp_path / "run"),
        "store": {"path": str(tmp_path / "stack.zarr")},
        "data": {"size": 32, "cache_dir": str(tmp_path / "cache")},
        "train": {**base, "augment": {"enabled": True}, **train},
    })
