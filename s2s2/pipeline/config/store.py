"""Stack store configuration: where the store lives and how it is laid out."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field

from s2s2.pipeline.config.base import StrictModel


class StoreConfig(StrictModel):
    """Where the stack store lives and how it is laid out (see `s2s2 stack inspect`)."""

    path: Optional[str] = Field(None, description="local path or fsspec URL (s3://bucket/stack.zarr); "
                                "default {run_dir}/stack.zarr, so every experiment has its own stack")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options, e.g. endpoint_url")
    val_path: Optional[str] = Field(None, description="the stack-val store: stack images of the val split's masks "
                                    "(same generator), for validation only, never served to training; default "
                                    "the training store's sibling, {path minus .zarr}-val.zarr")
    k: int = Field(4, ge=1, description="generated images per training mask")
    split: str = "train"  # the split a store is made from; a store of the val split is validation-only
    shard_size: int = Field(8, ge=1, description="samples per shard file (all K images of each)")
    dtype: Literal["uint8", "float16"] = "uint8"
    compression: Literal["zstd", "blosc-zstd", "blosc-lz4", "none"] = "zstd"
    compression_level: int = Field(3, ge=0, le=22)
    allow_incomplete: bool = Field(False, description="train on samples that have done images only")
