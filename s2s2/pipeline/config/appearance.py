"""Appearance randomisation settings: image corruptions and SynthSeg-style labels-to-image.

Intensities are in [0, 1] units (SynthSeg's 0..255 divided by 255). Probabilities must lie in
[0, 1]; spreads, standard deviations and sigmas must be >= 0; every (low, high) range must have
low <= high.
"""

from __future__ import annotations

from pydantic import Field, ValidationInfo, field_validator

from s2s2.pipeline.config.base import StrictModel


def _range(value: tuple[float, float], info: ValidationInfo) -> tuple[float, float]:
    """A (low, high) range with 0 <= low <= high; gamma exponents must also be > 0."""
    low, high = value
    if low < 0 or high < low or (info.field_name == "gamma" and low <= 0):
        lowest = "0 <" if info.field_name == "gamma" else "0 <="
        raise ValueError(f"{info.field_name} must be a range (low, high) with {lowest} low <= high, got {value}")
    return value


class CorruptionConfig(StrictModel):
    """Random corruptions of an image, applied in acquisition order: blur (resolution), smooth
    multiplicative bias field, gamma, additive noise. Each is applied with its own probability."""

    blur_p: float = Field(0.5, ge=0, le=1)
    blur_sigma: tuple[float, float] = (0.25, 1.0)  # Gaussian sigma in pixels, drawn per axis
    bias_p: float = Field(0.95, ge=0, le=1)  # SynthSeg applies its bias field with p 0.95
    bias_degree: int = Field(3, ge=1)  # Legendre degree per axis of the log bias field: low = coarse
    bias_coeff: float = Field(0.3, ge=0)  # coefficients of the log field ~ U(-c, c)
    gamma_p: float = Field(0.5, ge=0, le=1)
    gamma: tuple[float, float] = (0.6, 1.6)  # exponent ~ U(low, high) on the min-max range
    noise_p: float = Field(0.5, ge=0, le=1)
    noise_std: float = Field(0.02, ge=0)  # noise SD ~ U(0, noise_std)

    _ranges = field_validator("blur_sigma", "gamma")(_range)


class LabelsToImageConfig(StrictModel):
    """SynthSeg-style image from a label map: every label (background included) gets a Gaussian
    intensity with its own mean and SD, drawn per image (and per channel), then the corruptions.

    Defaults were chosen on the default data's training masks for adaptive mask fidelity >= 0.9 of
    the originals' (`s2s2 stack inspect`): SynthSeg's independent means (separation 0) scored ~0.7
    and its texture SD up to 0.12 ~0.83 (at separation 0.45); separation 0.5 with SD up to 0.05 ~0.96.
    """

    mean: tuple[float, float] = (0.0, 1.0)  # label mean ~ U(low, high); SynthSeg U(0, 250)/255
    std: tuple[float, float] = (0.0, 0.05)  # within-label SD ~ U(low, high); SynthSeg U(0, 30)/255
    # Label means at least separation x (mean range / (labels - 1)) apart: 0 = SynthSeg's independent
    # draws (two labels may get one intensity, and their boundary vanishes), 1 = evenly spaced levels.
    separation: float = Field(0.5, ge=0, le=1)
    corruption: CorruptionConfig = Field(default_factory=CorruptionConfig)

    _ranges = field_validator("mean", "std")(_range)
