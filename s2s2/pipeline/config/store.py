"""Stack store configuration (issue 3)."""

from __future__ import annotations

from s2s2.pipeline.config.base import StrictModel


class StoreConfig(StrictModel):
    """Where the stack store lives and how it is laid out."""

    path: str = "runs/default/stack.zarr"
    k: int = 4
