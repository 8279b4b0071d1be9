"""Stage two configuration: segmenter, losses, training and evaluation (issue 5)."""

from __future__ import annotations

from s2s2.pipeline.config.base import StrictModel


class ModelConfig(StrictModel):
    """Which segmenter to build."""

    name: str = "unet"


class TrainConfig(StrictModel):
    """Segmenter training, baseline or S2S2."""

    steps: int = 500


class EvalConfig(StrictModel):
    """In-domain and out-of-domain evaluation."""

    hd95_percentile: float = 95.0
