"""Architecture name -> builder, and building a segmenter from `ModelConfig` through it."""

from __future__ import annotations

from typing import Callable

from torch import nn

from s2s2.pipeline.config.train import ModelConfig
from s2s2.pipeline.errors import ConfigError
from s2s2.pipeline.segmenters.normalization import InputNormalization, input_normalization
from s2s2.pipeline.segmenters.presets import DEFAULT_SC_STAGES, ENCODER_STAGES, MIN_DIVISOR, PRESETS

# builder(cfg, in_channels, num_classes, image_size, preset, sc_stages) -> the model
Builder = Callable[[ModelConfig, int, int, int, dict, tuple[str, ...]], nn.Module]

REGISTRY: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    """Decorator: make `builder` the one that `build_segmenter` uses for `model.name == name`."""

    def add(builder: Builder) -> Builder:
        if name in REGISTRY:
            raise ValueError(f"segmenter {name!r} is registered twice")
        REGISTRY[name] = builder
        return builder

    return add


def check_image_size(cfg: ModelConfig, image_size: int) -> None:
    """Refuse an image size the architecture cannot tile (smp needs multiples of 32)."""
    divisor = MIN_DIVISOR[cfg.name]
    if image_size % divisor:
        raise ConfigError(f"model.name={cfg.name} needs an image size divisible by {divisor}, the data has "
                          f"{image_size} px; set data.size to a multiple of {divisor}")


def resolve_sc_stages(cfg: ModelConfig) -> tuple[str, ...]:
    """The encoder stages L_enc compares: `model.sc_stages`, or the model's default; unknown names refused."""
    stages = tuple(cfg.sc_stages) if cfg.sc_stages is not None else DEFAULT_SC_STAGES[cfg.name]
    known = ENCODER_STAGES[cfg.name]
    unknown = [name for name in stages if name not in known]
    if unknown or len(set(stages)) != len(stages):
        raise ConfigError(f"model.sc_stages={list(stages)}: {cfg.name} offers the encoder stages {list(known)} "
                          "(shallow to deep), each at most once; fix: name some of these")
    return stages


def build_segmenter(cfg: ModelConfig, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """Build the configured segmenter for images [B,in_channels,image_size,image_size] in [0, 1]; a
    pretrained encoder's input normalisation is part of the model (`normalization`)."""
    if cfg.name not in REGISTRY:
        raise ConfigError(f"model.name={cfg.name!r} is not a registered segmenter; fix: use one of {sorted(REGISTRY)}")
    check_image_size(cfg, image_size)
    preset = dict(PRESETS[cfg.name][cfg.preset])
    model = REGISTRY[cfg.name](cfg, in_channels, num_classes, image_size, preset, resolve_sc_stages(cfg))
    statistics = input_normalization(cfg, in_channels)
    if statistics is not None:
        model.normalize = InputNormalization(**statistics)
    return model
