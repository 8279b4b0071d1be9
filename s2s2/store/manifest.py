"""The store's self-description: a versioned pydantic model kept in the Zarr group attributes."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

SCHEMA_VERSION = 1
MANIFEST_KEY = "s2s2_manifest"
StoreDtype = Literal["uint8", "float16"]
Compression = Literal["zstd", "blosc-zstd", "blosc-lz4", "none"]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class GeneratorIdentity(_Frozen):
    """Everything that decides the pixels a generator writes: two stores with equal identities
    (and equal datasets) hold the same images, so a resumed run may continue another's work."""

    base_model: str
    controlnet_hash: str
    scheduler: str
    steps: int
    guidance_scale: float
    eta: float
    prompt_template: str
    seed: int
    resolution: int
    # appearance-randomised generators: the share of images drawn with a random appearance and the
    # remap settings (per-label means, texture, corruptions); each (sample, k) has its own seed
    appearance: dict[str, Any] | None = None


def utc_now() -> datetime:
    """Timezone-aware now, so ages computed on other machines are right."""
    return datetime.now(timezone.utc)


class Manifest(_Frozen):
    """What a stack store holds and how it is laid out (schema version `SCHEMA_VERSION`)."""

    schema_version: int = SCHEMA_VERSION
    software_version: str
    dataset_name: str
    dataset_fingerprint: str
    split: str
    class_names: tuple[str, ...]
    modality: str
    prompt_template: str
    n_samples: int
    k: int
    image_shape: tuple[int, int, int]
    dtype: StoreDtype
    shard_size: int
    compression: Compression
    generator: GeneratorIdentity | None = None
    created: datetime
    updated: datetime
    status: Literal["initialised", "generating", "complete"] = "initialised"
