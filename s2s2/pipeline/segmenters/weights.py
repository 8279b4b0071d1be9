"""Segmenter weights as safetensors, with the architecture identity in the metadata, checked on load."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from s2s2.pipeline.atomic import atomic_path
from s2s2.pipeline.config.train import ModelConfig
from s2s2.pipeline.errors import S2S2Error


def model_identity(cfg: ModelConfig, in_channels: int, num_classes: int, image_size: int) -> dict[str, str]:
    """What a checkpoint records about its architecture, compared on load (safetensors metadata)."""
    return {"name": cfg.name, "preset": cfg.preset, "encoder": str(cfg.encoder), "in_channels": str(in_channels),
            "num_classes": str(num_classes), "image_size": str(image_size)}


def save_weights(model: nn.Module, path: str | Path, identity: dict[str, str]) -> None:
    """Write the model's state dict as safetensors, the architecture identity in its metadata (atomic)."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=identity)


def load_weights(model: nn.Module, path: str | Path, identity: dict[str, str]) -> None:
    """Load safetensors weights into `model`, refusing a checkpoint of another architecture or class count."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise S2S2Error(f"checkpoint {path} does not exist; fix: train first (`s2s2 train`) or pass an existing file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            recorded = handle.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise S2S2Error(f"checkpoint {path} is not a readable safetensors file ({err}): it is truncated, corrupt, "
                        "or another format (pickled .pt/.pth checkpoints are never loaded: unpickling can run "
                        "arbitrary code); fix: pass the model.safetensors (or last.safetensors) that `s2s2 train` "
                        "wrote") from None
    differ = {k: (recorded.get(k), v) for k, v in identity.items() if recorded.get(k) != v}
    if differ:
        detail = ", ".join(f"{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in differ.items())
        raise S2S2Error(f"checkpoint {path} was made for another model ({detail}); fix: evaluate it with the "
                        f"config it was trained with (the config.yaml beside it) or pick the matching checkpoint")
    try:
        model.load_state_dict(load_file(str(path)))
    except RuntimeError as err:
        raise S2S2Error(f"checkpoint {path} does not fit the model: {str(err)[:300]}") from None
