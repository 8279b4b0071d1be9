"""Dataset configuration (issue 2). Owned by the data adapters."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from s2s2.pipeline.config.base import StrictModel


class DataConfig(StrictModel):
    """Which dataset to read, how to cut and resize it, and where the prepared copy is cached."""

    adapter: Literal["icbm152", "spm152", "folder", "nnunet", "npz"] = "icbm152"
    size: int = 64
