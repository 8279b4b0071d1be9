"""Input normalisation for pretrained encoders: each encoder's own mean/std, applied inside the model.

The data pipeline hands every model images in [0, 1]. A pretrained timm/smp encoder was trained on
inputs normalised with its pretrained config's mean and std (ImageNet's for most), so the model
normalises its input first. Models trained from scratch (`model.pretrained: false`) get no
normalisation, so their results are unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from s2s2.pipeline.config.train import ModelConfig
from s2s2.pipeline.segmenters.presets import PRESETS


class InputNormalization(nn.Module):
    """(x - mean) / std per channel; the statistics are buffers outside the state dict (they come
    from the encoder's config, and the model folder records them)."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def encoder_statistics(cfg: ModelConfig) -> tuple[list[float], list[float]]:
    """(mean, std) per RGB channel from the encoder's pretrained config: timm's registry for timm models
    (offline), smp's hub config for smp's own encoders (fetched with their weights)."""
    name = cfg.encoder or PRESETS["unet"][cfg.preset]["encoder"] if cfg.name == "unet" else \
        "tu-" + PRESETS[cfg.name][cfg.preset]["timm_name"]
    if name.startswith("tu-"):
        from timm.models import get_pretrained_cfg

        pretrained = get_pretrained_cfg(name[3:])
        return list(pretrained.mean), list(pretrained.std)
    import segmentation_models_pytorch as smp

    params = smp.encoders.get_preprocessing_params(name, pretrained="imagenet")
    return list(params["mean"]), list(params["std"])


def input_normalization(cfg: ModelConfig, in_channels: int) -> dict[str, list[float]] | None:
    """{"mean", "std"} the model applies to its input: the encoder's for pretrained encoders (one grey
    channel: the mean of the RGB values), None when the encoder starts from random weights."""
    if not cfg.pretrained:
        return None
    mean, std = encoder_statistics(cfg)
    if in_channels == 1:
        mean, std = [sum(mean) / len(mean)], [sum(std) / len(std)]
    return {"mean": mean, "std": std}
