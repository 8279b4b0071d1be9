"""Stage two's learning-rate schedule: linear warm-up, then poly, cosine or constant, as a torch
`LambdaLR` (its state dict resumes it at the exact step).

diffusers' `get_scheduler` is not used here: its warm-up starts at 0 (step/warmup, here (step+1)/warmup)
and its polynomial decay ends at `lr_end=1e-7` (here at 0), so it would change every rate of a run.
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from s2s2.pipeline.config.train import TrainConfig


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """The rate of `step` (0-based) as a fraction of `train.lr`."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    if cfg.schedule == "poly":
        return (1.0 - progress) ** cfg.poly_power
    if cfg.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


def learning_rate_schedule(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> LambdaLR:
    """The schedule of `cfg` on `optimizer` (whose rate is `train.lr`), stepped once per optimisation step."""
    return LambdaLR(optimizer, lambda step: lr_factor(step, cfg))
