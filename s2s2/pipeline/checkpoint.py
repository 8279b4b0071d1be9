"""Checkpoints of both training stages, one scheme: module weights as safetensors (with an identity in
the metadata, checked on load) and the rest of a training state (step, optimizer, schedule, RNG, logs)
as a torch file read with `weights_only` (tensors and plain values only: nothing is unpickled).
Every write is atomic (a temp name, then a rename).

accelerate's `save_state` is not used: its folder layout has no place for the identity that
`evaluate.checkpoint: last` checks, and it keeps the RNG state in a pickle.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from s2s2.pipeline.atomic import atomic_path
from s2s2.pipeline.errors import S2S2Error


def save_module(module: nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write the module's state dict as safetensors, `metadata` in the header (atomic)."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
        tmp.chmod(0o666 & ~_umask())  # safetensors creates its file 0600; weights are shared like the rest


def _umask() -> int:
    """This process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def read_metadata(path: str | Path, fix: str) -> dict[str, str]:
    """The metadata of a safetensors file; a missing, truncated or foreign file is a clear error."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise S2S2Error(f"checkpoint {path} does not exist; {fix}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise S2S2Error(f"checkpoint {path} is not a readable safetensors file ({err}): it is truncated, corrupt, "
                        "or another format (pickled .pt/.pth checkpoints are never loaded: unpickling can run "
                        f"arbitrary code); {fix}") from None


def load_module(module: nn.Module, path: str | Path, identity: dict[str, str] | None = None,
                missing_fix: str = "fix: pass an existing file", unreadable_fix: str = "fix: pass an intact file",
                mismatch_fix: str = "fix: use the checkpoint made for this model") -> None:
    """Load safetensors weights into `module`, refusing a file whose metadata differs from `identity`
    (another architecture, class count or step) or whose tensors do not fit."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise S2S2Error(f"checkpoint {path} does not exist; {missing_fix}")
    recorded = read_metadata(path, unreadable_fix)
    differ = {k: (recorded.get(k), v) for k, v in (identity or {}).items() if recorded.get(k) != v}
    if differ:
        detail = ", ".join(f"{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in differ.items())
        raise S2S2Error(f"checkpoint {path} was made for another model ({detail}); {mismatch_fix}")
    try:
        module.load_state_dict(load_file(str(path)))
    except RuntimeError as err:
        raise S2S2Error(f"checkpoint {path} does not fit the model: {str(err)[:300]}") from None


def save_state(state: dict[str, Any], path: str | Path) -> None:
    """Write a training state (tensors and plain values) with torch.save (atomic)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(path: str | Path, keys: Iterable[str], what: str, fix: str) -> dict[str, Any]:
    """A training state written by `save_state`, loaded without unpickling code (`weights_only`); a damaged
    or foreign file, or one without every key of `keys`, is a clear error naming `what` it is for."""
    path, keys = Path(path), tuple(keys)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as err:
        raise S2S2Error(f"{what}: {path} cannot be read ({type(err).__name__}: {err.strerror or err}); {fix}") from None
    # weights_only never runs code, so any other failure means the bytes are not a state torch can parse:
    # its legacy reader raises IndexError, KeyError or UnicodeDecodeError on some garbage, not only the
    # unpickling errors, and each of them is a damaged file, not a bug.
    except Exception as err:  # noqa: BLE001
        if isinstance(err, pickle.UnpicklingError):  # torch's own text would advise weights_only=False: never
            detail = "it holds pickled Python objects besides tensors and plain values"
        else:
            detail = f"{type(err).__name__}: " + str(err).strip().splitlines()[0].split(". ")[0][:200]
        raise S2S2Error(f"{what}: {path} cannot be loaded safely ({detail}); it is truncated, corrupt or not "
                        "written by s2s2 (only tensors and plain values are accepted, nothing is unpickled); "
                        f"{fix}") from None
    if not isinstance(state, dict) or any(key not in state for key in keys):
        found = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise S2S2Error(f"{what}: {path} is not an s2s2 training state (needs {', '.join(keys)}; found {found}); {fix}")
    return state
