"""Test fixture: a small synthetic dataset (discs and rings of tissue-like intensities) and a
generator config small enough to build, train and sample in seconds (also used by bench.gen_speed).

The embedded default uses ICBM152; this stays out of the library because only tests use it.
"""

from __future__ import annotations

import numpy as np

from s2s2.pipeline.config.project import ProjectConfig
from s2s2.pipeline.data.prepared import PreparedDataset

TOY_CLASSES = ("background", "ring", "core")
TOY_MEANS = (0.05, 0.45, 0.9)  # class intensities: background dark, ring mid, core bright


def toy_masks(n: int, size: int, seed: int) -> np.ndarray:
    """uint8 [n,size,size]: a ring (class 1) around a core disc (class 2) at random places and radii."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((n, size, size), dtype=np.uint8)
    for i in range(n):
        cy, cx = rng.uniform(0.3, 0.7, size=2) * size
        outer = rng.uniform(0.2, 0.35) * size
        distance = np.hypot(yy - cy, xx - cx)
        masks[i][distance < outer] = 1
        masks[i][distance < outer * rng.uniform(0.4, 0.7)] = 2
    return masks


def toy_dataset(n: int = 12, size: int = 16, seed: int = 0, name: str = "toy") -> PreparedDataset:
    """A grey `PreparedDataset` of `toy_masks` with class-mean intensities plus noise; 3/4 train."""
    rng = np.random.default_rng(seed + 1)
    masks = toy_masks(n, size, seed)
    images = np.asarray(TOY_MEANS, dtype=np.float32)[masks][:, None]
    images = np.clip(images + rng.normal(0, 0.03, images.shape), 0, 1).astype(np.float32)
    n_train = max(1, (3 * n) // 4)
    return PreparedDataset(
        name=name, images=images, masks=masks, ids=[f"{name}-{i:03d}" for i in range(n)],
        spacings=np.ones((n, 2), dtype=np.float32), class_names=TOY_CLASSES, modality="toy image",
        prompt_template="{modality} showing {classes}",
        splits={"train": list(range(n_train)), "val": list(range(n_train, n)), "test": list(range(n_train, n))},
    )


def toy_project_config(run_dir: str, **sections: dict) -> ProjectConfig:
    """A `ProjectConfig` with a generator small enough to build, train and sample in seconds.

    `sections` update the given config sections (e.g. `finetune={"steps": 2}`).
    """
    tree: dict = {
        "run_dir": run_dir,
        "store": {"path": f"{run_dir}/stack.zarr", "k": 3, "shard_size": 2},
        "generator": {"base_model": "tiny", "tiny": {
            "vae_channels": [8, 16], "unet_channels": [16, 32], "unet_attention": [False, True], "norm_num_groups": 8, "attention_head_dim": 8,
            "text_width": 16, "text_layers": 1, "max_prompt_tokens": 48, "vae_steps": 2}},
        "finetune": {"steps": 2, "batch_size": 2, "learning_rate": 1e-3, "unlock_unet": True,
                     "validate_every": 1000, "checkpoint_every": 1000},
        "generate": {"scheduler": "unipc", "steps": 2, "guidance_scale": 2.0, "workers": 1, "device": "cpu"},
    }
    for name, values in sections.items():
        tree.setdefault(name, {}).update(values)
    return ProjectConfig.model_validate(tree)
