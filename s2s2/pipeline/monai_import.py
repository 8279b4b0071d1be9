"""MONAI, imported once without the one warning it triggers at import time.

`import monai` loads `monai.networks.nets.dints`, whose `@torch.jit.interface` makes torch (2.9+)
print a FutureWarning on every command. Only that exact message is silenced, only during MONAI's
import; every other warning still shows.
"""

from __future__ import annotations

import warnings

JIT_INTERFACE_WARNING = r"`torch\.jit\.interface` is deprecated"


def import_monai() -> None:
    """Import MONAI (a no-op after the first call) with torch.jit.interface's deprecation silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=JIT_INTERFACE_WARNING, category=FutureWarning)
        import monai  # noqa: F401
