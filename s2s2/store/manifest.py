"""The store's self-description: a versioned pydantic model kept in the Zarr group attributes."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

SCHEMA_VERSION = 2  # 2: the stack's generator is a list of sources, each owning a range of k
MANIFEST_KEY = "s2s2_manifest"
# A store whose manifest records this split holds stack images of validation masks: validation
# reads it, training refuses it.
VAL_SPLIT = "val"
StoreDtype = Literal["uint8", "float16"]
Compression = Literal["zstd", "blosc-zstd", "blosc-lz4", "none"]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class GeneratorIdentity(_Frozen):
    """Everything that decides the pixels a ControlNet writes: two stores with equal identities
    (and equal datasets) hold the same images, so a resumed run may continue another's work."""

    kind: Literal["controlnet"] = "controlnet"
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


class SynthIdentity(_Frozen):
    """Everything that decides the pixels of the training-free labels-to-image source."""

    kind: Literal["synth"] = "synth"
    params: dict[str, Any]  # the labels-to-image settings, as JSON
    seed: int
    monai_version: str  # its corruptions are MONAI transforms: another version may draw other pixels


SourceIdentity = GeneratorIdentity | SynthIdentity


class StackSource(_Frozen):
    """One source of the stack and the images it owns: k in [k_start, k_stop) of every sample."""

    k_start: int
    k_stop: int
    identity: SourceIdentity

    @property
    def kind(self) -> str:
        return self.identity.kind

    @property
    def ks(self) -> range:
        return range(self.k_start, self.k_stop)

    @property
    def label(self) -> str:
        """e.g. 'k 2-3 synth' (or 'k 2 synth' for one image per sample)."""
        last = self.k_stop - 1
        return f"k {self.k_start}{'' if last == self.k_start else f'-{last}'} {self.kind}"


class StackGenerator(_Frozen):
    """What fills the stack: its sources, whose k ranges tile 0..K-1 in order."""

    sources: tuple[StackSource, ...]

    @model_validator(mode="after")
    def _tiles(self) -> "StackGenerator":
        start = 0
        for source in self.sources:
            if source.k_start != start or source.k_stop <= source.k_start:
                raise ValueError(f"source k ranges must tile 0..K-1 in order, got "
                                 f"{[(s.k_start, s.k_stop) for s in self.sources]}")
            start = source.k_stop
        if not self.sources:
            raise ValueError("a stack generator needs at least one source")
        return self

    @property
    def k(self) -> int:
        return self.sources[-1].k_stop

    def identity_of_k(self) -> list[SourceIdentity]:
        """The identity that fills each k."""
        return [source.identity for source in self.sources for _ in source.ks]

    def source_of_k(self) -> list[str]:
        """The kind of source that fills each k (how `inspect` and previews label the columns)."""
        return [source.kind for source in self.sources for _ in source.ks]


def changed_sources(recorded: StackGenerator, wanted: StackGenerator) -> tuple[list[str], list[int]]:
    """What differs between the generator a store was filled by and the one asked for now: one
    line per differing source (naming the changed fields), and every k whose images would change."""
    old, new = recorded.identity_of_k(), wanted.identity_of_k()
    if len(old) != len(new):
        return [f"K: {len(old)} -> {len(new)}"], list(range(len(new)))
    ks = [k for k in range(len(new)) if old[k] != new[k]]
    lines = []
    for source in wanted.sources:
        before = [old[k] for k in source.ks]
        if all(identity == source.identity for identity in before):
            continue
        where = source.label
        previous = before[0]
        if previous.kind != source.kind or any(identity != previous for identity in before):
            were = sorted({identity.kind for identity in before})
            lines.append(f"{where}: filled by {'/'.join(were)} before")
        else:
            fields = [f"{key}: {getattr(previous, key)!r} -> {getattr(source.identity, key)!r}"
                      for key in type(previous).model_fields if getattr(previous, key) != getattr(source.identity, key)]
            lines.append(f"{where}: " + "; ".join(fields))
    return lines, ks


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
    generator: StackGenerator | None = None
    created: datetime
    updated: datetime
    status: Literal["initialised", "generating", "complete"] = "initialised"

    @model_validator(mode="before")
    @classmethod
    def _upgrade_v1(cls, raw: Any) -> Any:
        """Schema 1 recorded one ControlNet identity for all K images: read it as one source."""
        if isinstance(raw, dict) and isinstance(raw.get("generator"), dict) and "sources" not in raw["generator"]:
            source = {"k_start": 0, "k_stop": raw.get("k"), "identity": raw["generator"]}
            raw = {**raw, "generator": {"sources": [source]}}
        return raw
