"""FCBFormer-style: a PVTv2 transformer branch, a fully convolutional branch and a residual head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from s2s2.pipeline.config.train import ModelConfig
from s2s2.pipeline.errors import ConfigError
from s2s2.pipeline.monai_import import import_monai
from s2s2.pipeline.segmenters.output import SegOutput, conv_bn_relu
from s2s2.pipeline.segmenters.registry import register


class FCBFormerSegmenter(nn.Module):
    """FCBFormer-style: a PVTv2 transformer branch (TB: local emphasis + stepwise aggregation), a fully
    convolutional branch (FCB: MONAI BasicUNet) and a prediction head of two residual blocks.
    Encoder features: the TB output and the FCB bottleneck. Decoder feature: the head's second block."""

    def __init__(self, in_channels: int, num_classes: int, preset: dict, pretrained: bool,
                 sc_stages: tuple[str, ...]) -> None:
        super().__init__()
        import timm
        import_monai()
        from monai.networks.blocks import UnetResBlock
        from monai.networks.nets import BasicUNet

        width = preset["tb_channels"]
        self.tb = timm.create_model(preset["timm_name"], pretrained=pretrained, features_only=True,
                                    in_chans=in_channels)
        self.local_emphasis = nn.ModuleList(
            nn.Sequential(conv_bn_relu(c, width), conv_bn_relu(width, width)) for c in self.tb.feature_info.channels())
        self.aggregate = nn.ModuleList(conv_bn_relu(2 * width, width) for _ in self.tb.feature_info.channels()[:-1])
        fcb = preset["fcb_features"]
        self.fcb = BasicUNet(spatial_dims=2, in_channels=in_channels, out_channels=fcb[-1], features=fcb,
                             norm=("batch", {}))
        self.head = nn.Sequential(
            UnetResBlock(2, width + fcb[-1], width, kernel_size=3, stride=1, norm_name="batch"),
            UnetResBlock(2, width, width, kernel_size=3, stride=1, norm_name="batch"),
        )
        self.classifier = nn.Conv2d(width, num_classes, 1)
        self.sc_stages = sc_stages
        self.normalize: nn.Module = nn.Identity()  # the encoder's input normalisation, if pretrained

    def forward(self, x: torch.Tensor) -> SegOutput:
        x = self.normalize(x)
        levels = [le(f) for le, f in zip(self.local_emphasis, self.tb(x))]
        tb_out = levels[-1]
        for i in range(len(levels) - 2, -1, -1):  # stepwise, deep to shallow
            up = F.interpolate(tb_out, size=levels[i].shape[-2:], mode="bilinear", align_corners=False)
            tb_out = self.aggregate[i](torch.cat([levels[i], up], dim=1))
        fcb_out, bottleneck = self._fcb(x)
        tb_full = F.interpolate(tb_out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        decoded = self.head(torch.cat([tb_full, fcb_out], dim=1))
        stages = {"tb": tb_out, "fcb": bottleneck}
        return SegOutput(self.classifier(decoded), [stages[name] for name in self.sc_stages], decoded)

    def _fcb(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """MONAI's `BasicUNet.forward`, step by step (it has no feature API): the output and the bottleneck."""
        net = self.fcb
        x0 = net.conv_0(x)
        x1 = net.down_1(x0)
        x2 = net.down_2(x1)
        x3 = net.down_3(x2)
        bottleneck = net.down_4(x3)
        u1 = net.upcat_1(net.upcat_2(net.upcat_3(net.upcat_4(bottleneck, x3), x2), x1), x0)
        return net.final_conv(u1), bottleneck


@register("fcbformer")
def build_fcbformer(cfg: ModelConfig, in_channels: int, num_classes: int, image_size: int, preset: dict,
                    sc_stages: tuple[str, ...]) -> FCBFormerSegmenter:
    """The FCBFormer of `preset` (`model.encoder` does not apply: the PVTv2 branch is the preset's)."""
    if cfg.encoder is not None:
        raise ConfigError(f"model.encoder={cfg.encoder!r} applies to model.name=unet only; remove it for {cfg.name}")
    return FCBFormerSegmenter(in_channels, num_classes, preset, cfg.pretrained, sc_stages)
