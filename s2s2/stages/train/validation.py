"""Validation during training: Dice per foreground class on the val split (never the test or train
split) and on the stack-val images (the val masks' stack images), and the classes whose mean
selects the best checkpoint (`evaluate.eval_classes`)."""

from __future__ import annotations

import torch

from s2s2.pipeline.data.prepared import PreparedDataset
from s2s2.pipeline.errors import ConfigError
from s2s2.pipeline.metrics import dice, nanmean
from s2s2.pipeline.segmenters import predict
from s2s2.stages.train.stack_val import StackVal


def eval_class_ids(class_names: tuple[str, ...], eval_classes: list[str] | None) -> dict[str, int]:
    """{name: id} of the classes that validation and evaluation average over (None: every foreground class)."""
    if eval_classes is None:
        return {name: i for i, name in enumerate(class_names) if i > 0}
    missing = [name for name in eval_classes if name not in class_names[1:]]
    if missing:
        raise ConfigError(f"evaluate.eval_classes names {missing}, which are not foreground classes of the data "
                          f"{list(class_names[1:])}; fix: list classes of the data, or leave it unset for all")
    return {name: class_names.index(name) for name in eval_classes}


def validate(model: torch.nn.Module, dataset: PreparedDataset, device: torch.device, batch_size: int,
             activation: str = "softmax") -> dict[str, float]:
    """Mean per-case Dice of every foreground class on the val split (never the test or train split);
    classes as the loss defines them (`activation`: argmax, or sigmoid > 0.5 per class)."""
    indices = dataset.splits.get("val", [])
    if not indices:
        raise ConfigError(f"dataset {dataset.name} has no val split to validate on")
    predictions = predict(model, dataset.images[indices], device, batch_size, activation)
    truth = dataset.masks[indices]
    return {name: nanmean([dice(p == c, t == c) for p, t in zip(predictions, truth)])
            for c, name in enumerate(dataset.class_names) if c > 0}


def validate_stack(model: torch.nn.Module, stack_val: StackVal, class_names: tuple[str, ...], device: torch.device,
                   batch_size: int, activation: str = "softmax") -> dict[str, float]:
    """Mean per-image Dice of every foreground class over all N x K stack-val images (classes as in
    `validate`)."""
    predictions = predict(model, stack_val.images, device, batch_size, activation)
    return {name: nanmean([dice(p == c, t == c) for p, t in zip(predictions, stack_val.masks)])
            for c, name in enumerate(class_names) if c > 0}
