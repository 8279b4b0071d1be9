"""Stage one configuration: generator, fine-tuning and generation (issue 4)."""

from __future__ import annotations

from s2s2.pipeline.config.base import StrictModel


class GeneratorConfig(StrictModel):
    """Which base model and ControlNet to load (hub id or local folder)."""

    base_model: str = "runs/default/tiny-base"


class FinetuneConfig(StrictModel):
    """ControlNet fine-tuning."""

    steps: int = 1000


class GenerateConfig(StrictModel):
    """Bulk generation of the stack."""

    steps: int = 20
