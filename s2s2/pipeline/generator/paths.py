"""Where stage one's folders live, and making sure the base model exists (building the tiny one)."""

from __future__ import annotations

import logging
from pathlib import Path

from s2s2.pipeline.config.generator import TINY_BASE
from s2s2.pipeline.config.project import ProjectConfig
from s2s2.pipeline.data.prepared import PreparedDataset

logger = logging.getLogger(__name__)


def tiny_base_dir(cfg: ProjectConfig) -> Path:
    """Folder of the embedded tiny base: `generator.tiny_dir` or {run_dir}/tiny-base."""
    return Path(cfg.generator.tiny_dir or Path(cfg.run_dir) / "tiny-base")


def generator_dir(cfg: ProjectConfig) -> Path:
    """Folder of the fine-tuned pipeline: `generator.output_dir` or {run_dir}/generator."""
    return Path(cfg.generator.output_dir or Path(cfg.run_dir) / "generator")


def sampling_generator_dir(cfg: ProjectConfig) -> Path:
    """The pipeline `generate` samples from: `generate.generator_dir` or the fine-tuned one."""
    return Path(cfg.generate.generator_dir) if cfg.generate.generator_dir else generator_dir(cfg)


def finetune_work_dir(cfg: ProjectConfig) -> Path:
    """Checkpoints, validation images and the loss log of fine-tuning: {run_dir}/finetune."""
    return Path(cfg.run_dir) / "finetune"


def resolution_of(cfg: ProjectConfig, image_size: int) -> int:
    """Generation resolution: `generator.resolution`, or the data's own size."""
    return cfg.generator.resolution or image_size


def ensure_base(cfg: ProjectConfig, dataset: PreparedDataset, split: str) -> str:
    """The base model to load: a hub id/folder as configured, or the tiny base (built if missing)."""
    if cfg.generator.base_model != TINY_BASE:
        return cfg.generator.base_model
    folder = tiny_base_dir(cfg)
    if not (folder / "model_index.json").is_file():
        from s2s2.pipeline.generator.tiny import build_tiny_base

        from s2s2.pipeline.appearance import AppearanceSource

        indices = dataset.indices(split)
        remap = cfg.finetune.appearance
        appearance = AppearanceSource(dataset.images[indices], dataset.masks[indices], dataset.num_classes,
                                      remap) if remap.enabled else None
        stats = build_tiny_base(cfg.generator.tiny, dataset.images[indices], resolution_of(cfg, dataset.image_shape[-1]),
                                folder, appearance)
        logger.info(f"built the tiny base in {folder}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                                  for k, v in stats.items()))
    return str(folder)
