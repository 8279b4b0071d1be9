"""Stack store configuration (issue 3): where the store lives, its layout, and pair augmentation."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from s2s2.pipeline.config.base import StrictModel


class AugmentConfig(StrictModel):
    """Pair augmentation: one geometric transform shared by both images and the mask, and an
    independent photometric jitter per image. Used by the store reader and the baseline path alike."""

    enabled: bool = True
    hflip_p: float = Field(0.5, ge=0, le=1)
    vflip_p: float = Field(0.0, ge=0, le=1)
    rot90_p: float = Field(0.0, ge=0, le=1, description="probability of a random multiple of 90 degrees")
    affine_p: float = Field(0.5, ge=0, le=1)
    max_rotate_deg: float = Field(10.0, ge=0, le=180)
    max_scale: float = Field(0.1, ge=0, lt=1, description="scale drawn in [1-max_scale, 1+max_scale]")
    max_translate: float = Field(0.05, ge=0, le=0.5, description="shift as a fraction of the image size")
    photometric_p: float = Field(0.8, ge=0, le=1)
    brightness: float = Field(0.1, ge=0, le=1, description="additive shift in [-b, b]")
    contrast: float = Field(0.2, ge=0, lt=1, description="multiplier about the mean in [1-c, 1+c]")
    gamma: float = Field(0.2, ge=0, le=2, description="gamma = exp(u), u in [-g, g]")
    noise_std: float = Field(0.02, ge=0, le=1, description="Gaussian noise sigma drawn in [0, noise_std]")


class StoreConfig(StrictModel):
    """Where the stack store lives and how it is laid out (see `s2s2 stack inspect`)."""

    path: str = Field("runs/default/stack.zarr", description="local path or fsspec URL (s3://bucket/stack.zarr)")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options, e.g. endpoint_url")
    k: int = Field(4, ge=1, description="generated images per training mask")
    split: str = "train"
    shard_size: int = Field(8, ge=1, description="samples per shard file (all K images of each)")
    dtype: Literal["uint8", "float16"] = "uint8"
    compression: Literal["zstd", "blosc-zstd", "blosc-lz4", "none"] = "zstd"
    compression_level: int = Field(3, ge=0, le=22)
    allow_incomplete: bool = Field(False, description="train on samples that have done images only")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
