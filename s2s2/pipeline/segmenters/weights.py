"""Segmenter weights as safetensors, with the architecture identity in the metadata, checked on load
(the checkpoint scheme of `s2s2.pipeline.checkpoint`)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from s2s2.pipeline.checkpoint import load_module, save_module
from s2s2.pipeline.config.train import ModelConfig


def model_identity(cfg: ModelConfig, in_channels: int, num_classes: int, image_size: int) -> dict[str, str]:
    """What a checkpoint records about its architecture, compared on load (safetensors metadata)."""
    return {"name": cfg.name, "preset": cfg.preset, "encoder": str(cfg.encoder), "in_channels": str(in_channels),
            "num_classes": str(num_classes), "image_size": str(image_size)}


def save_weights(model: nn.Module, path: str | Path, identity: dict[str, str]) -> None:
    """Write the model's state dict as safetensors, the architecture identity in its metadata (atomic)."""
    save_module(model, path, identity)


def load_weights(model: nn.Module, path: str | Path, identity: dict[str, str]) -> None:
    """Load safetensors weights into `model`, refusing a checkpoint of another architecture or class count."""
    load_module(model, path, identity, missing_fix="fix: train first (`s2s2 train`) or pass an existing file",
                unreadable_fix="fix: pass the model.safetensors (or last.safetensors) that `s2s2 train` wrote",
                mismatch_fix="fix: evaluate it with the config it was trained with (the config.yaml beside it) "
                             "or pick the matching checkpoint")
