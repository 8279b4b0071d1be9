"""U-Net: smp's U-Net over a timm/smp encoder; the encoder's stage list feeds L_enc."""

from __future__ import annotations

import torch
from torch import nn

from s2s2.pipeline.config.train import ModelConfig
from s2s2.pipeline.segmenters.output import SegOutput
from s2s2.pipeline.segmenters.presets import ENCODER_STAGES
from s2s2.pipeline.segmenters.registry import register


class UNetSegmenter(nn.Module):
    """smp U-Net over a timm/smp encoder; encoder features = the named stages, decoder = smp decoder output."""

    def __init__(self, in_channels: int, num_classes: int, encoder: str, decoder_channels: tuple[int, ...],
                 pretrained: bool, sc_stages: tuple[str, ...]) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp

        self.net = smp.Unet(encoder_name=encoder, encoder_weights="imagenet" if pretrained else None,
                            in_channels=in_channels, classes=num_classes, decoder_channels=decoder_channels,
                            encoder_depth=len(decoder_channels))
        # smp's encoder returns the input first, then stage1..stage5
        self.sc_levels = [ENCODER_STAGES["unet"].index(name) + 1 for name in sc_stages]
        self.normalize: nn.Module = nn.Identity()  # the encoder's input normalisation, if pretrained

    def forward(self, x: torch.Tensor) -> SegOutput:
        x = self.normalize(x)
        features = self.net.encoder(x)
        decoded = self.net.decoder(features)
        return SegOutput(self.net.segmentation_head(decoded), [features[i] for i in self.sc_levels], decoded)


@register("unet")
def build_unet(cfg: ModelConfig, in_channels: int, num_classes: int, image_size: int, preset: dict,
               sc_stages: tuple[str, ...]) -> UNetSegmenter:
    """The U-Net of `preset`, its encoder replaced by `model.encoder` when set."""
    return UNetSegmenter(in_channels, num_classes, cfg.encoder or preset["encoder"],
                         tuple(preset["decoder_channels"]), cfg.pretrained, sc_stages)
