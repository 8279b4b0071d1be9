"""Inference: class-id maps (or class probabilities) from a segmenter, batch by batch, in eval mode.

How logits become classes follows the loss the model was trained with: softmax models (`ce_dice`)
take the argmax; sigmoid models (`bce_dice`, one independent channel per class) threshold each
foreground channel's sigmoid at 0.5 (FCBFormer's protocol), the most confident of those above it
wins, and a pixel with none above it is background.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import nn

Activation = Literal["softmax", "sigmoid"]
ACTIVATION: dict[str, Activation] = {"ce_dice": "softmax", "bce_dice": "sigmoid"}  # loss -> output activation


def scores_to_labels(scores: torch.Tensor, activation: Activation, are_logits: bool) -> torch.Tensor:
    """Class ids uint8 [N,H,W] from logits or probabilities [N,K,H,W] (see the module docstring)."""
    if activation == "softmax":
        return scores.argmax(1).to(torch.uint8)
    threshold = 0.0 if are_logits else 0.5  # sigmoid(logit) > 0.5 exactly when logit > 0
    foreground = scores[:, 1:]
    best = foreground.argmax(1)
    above = torch.gather(foreground, 1, best[:, None])[:, 0] > threshold
    return torch.where(above, best + 1, 0).to(torch.uint8)


def _batches(images: np.ndarray, device: torch.device, batch_size: int):
    for start in range(0, len(images), batch_size):
        batch = np.ascontiguousarray(images[start:start + batch_size], dtype=np.float32)
        yield torch.from_numpy(batch).to(device)


@torch.no_grad()
def predict_with_probabilities(model: nn.Module, images: np.ndarray, device: torch.device, batch_size: int = 16,
                               activation: Activation = "softmax", tta: bool = False,
                               probabilities: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """(class ids uint8 [N,H,W], class probabilities float32 [N,K,H,W] or None) for float images [N,C,H,W].

    Without `tta` the classes come from the logits (as in validation and evaluation); with `tta` from the
    probabilities averaged with those of the left-right mirrored images (mirrored back)."""
    was_training = model.training
    model.eval()
    labels, probs = [], []
    for batch in _batches(images, device, batch_size):
        logits = model(batch).logits.float()
        if not tta and not probabilities:
            labels.append(scores_to_labels(logits, activation, are_logits=True).cpu().numpy())
            continue
        views = [logits, model(batch.flip(-1)).logits.float().flip(-1)] if tta else [logits]
        mean = sum(v.softmax(1) if activation == "softmax" else v.sigmoid() for v in views) / len(views)
        labels.append((scores_to_labels(mean, activation, are_logits=False) if tta else
                       scores_to_labels(logits, activation, are_logits=True)).cpu().numpy())
        probs.append(mean.cpu().numpy())
    model.train(was_training)
    if not labels:
        return np.zeros((0, *images.shape[2:]), np.uint8), None
    return np.concatenate(labels), (np.concatenate(probs) if probs else None)


def predict(model: nn.Module, images: np.ndarray, device: torch.device, batch_size: int = 16,
            activation: Activation = "softmax", tta: bool = False) -> np.ndarray:
    """Class-id predictions uint8 [N,H,W] for float images [N,C,H,W] (eval mode; see
    `predict_with_probabilities`)."""
    return predict_with_probabilities(model, images, device, batch_size, activation, tta, probabilities=False)[0]
