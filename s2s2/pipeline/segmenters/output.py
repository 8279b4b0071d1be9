"""What every segmenter returns, and the conv block the decoders share."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class SegOutput(NamedTuple):
    """What every segmenter returns (a tuple, so DDP can find the tensors)."""

    logits: torch.Tensor  # [B, num_classes, H, W]
    encoder_features: list[torch.Tensor]  # the encoder stage(s) named by `model.sc_stages`
    decoder_feature: torch.Tensor  # [B, C_dec, H, W], the map the head classifies


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    """3x3 convolution, batch norm, ReLU: the decoders' building block."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))
