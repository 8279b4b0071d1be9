"""Inference: class-id maps from a segmenter, batch by batch, in eval mode."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, device: torch.device, batch_size: int = 16) -> np.ndarray:
    """Class-id predictions uint8 [N,H,W] for float images [N,C,H,W] (eval mode, argmax of the logits)."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size], dtype=np.float32)).to(device)
        out.append(model(batch).logits.argmax(1).to(torch.uint8).cpu().numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, *images.shape[2:]), np.uint8)
