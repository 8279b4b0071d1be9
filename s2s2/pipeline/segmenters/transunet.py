"""TransUNet-style: a timm ResNet-ViT hybrid encoder and TransUNet's cascaded upsampling decoder."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from s2s2.pipeline.config.train import ModelConfig
from s2s2.pipeline.errors import ConfigError
from s2s2.pipeline.segmenters.output import SegOutput, conv_bn_relu
from s2s2.pipeline.segmenters.presets import ENCODER_STAGES
from s2s2.pipeline.segmenters.registry import register


class TransUNetSegmenter(nn.Module):
    """TransUNet-style: timm ResNet-ViT hybrid encoder (tokens = encoder feature), cascaded upsampling
    decoder (TransUNet's DecoderCup) with skips from the CNN stem and stages."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int, preset: dict, pretrained: bool,
                 sc_stages: tuple[str, ...]) -> None:
        super().__init__()
        import timm
        from timm.layers import GroupNormAct, StdConv2dSame
        from timm.models.resnetv2 import ResNetV2
        from timm.models.vision_transformer import VisionTransformer
        from timm.models.vision_transformer_hybrid import HybridEmbed

        if preset["timm_name"]:
            self.vit = timm.create_model(preset["timm_name"], pretrained=pretrained, img_size=image_size,
                                         in_chans=in_channels, num_classes=0)
        else:
            if pretrained:
                raise ConfigError("model.pretrained: the small transunet preset has no pretrained weights; "
                                  "set model.pretrained=false or model.preset=full")
            backbone = ResNetV2(layers=preset["layers"], channels=preset["channels"], stem_chs=preset["stem_chs"],
                                num_classes=0, global_pool="", in_chans=in_channels, preact=False, stem_type="same",
                                norm_layer=partial(GroupNormAct, num_groups=preset["groups"]),
                                conv_layer=partial(StdConv2dSame, eps=1e-8))
            self.vit = VisionTransformer(img_size=image_size, patch_size=1, in_chans=in_channels, num_classes=0,
                                         embed_dim=preset["embed_dim"], depth=preset["depth"],
                                         num_heads=preset["num_heads"],
                                         embed_layer=partial(HybridEmbed, backbone=backbone))
        backbone = self.vit.patch_embed.backbone
        # Skips, shallow to deep: the stem's conv+norm (stride 2), then every CNN stage but the last;
        # timm's `forward_intermediates` numbers them 0 (stem), 1, 2, ... (stages).
        self.skip_indices = list(range(len(backbone.stages)))
        skip_channels = [backbone.feature_info[i]["num_chs"] for i in self.skip_indices][::-1]  # deep to shallow
        stride = backbone.feature_info[-1]["reduction"] * self.vit.patch_embed.patch_size[0]
        self.grid = (image_size // stride, image_size // stride)  # token grid (h, w)
        embed_dim = self.vit.embed_dim
        dec = preset["decoder_channels"]
        self.conv_more = conv_bn_relu(embed_dim, 512 if embed_dim >= 512 else dec[0] * 2)
        blocks, cin = [], self.conv_more[0].out_channels
        for i, cout in enumerate(dec):
            skip = skip_channels[i] if i < len(skip_channels) else 0
            blocks.append(nn.Sequential(conv_bn_relu(cin + skip, cout), conv_bn_relu(cout, cout)))
            cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv2d(dec[-1], num_classes, 3, padding=1)
        self.sc_stages = sc_stages
        self.normalize: nn.Module = nn.Identity()  # the encoder's input normalisation, if pretrained

    def forward(self, x: torch.Tensor) -> SegOutput:
        x = self.normalize(x)
        cnn_out, cnn_stages = self.vit.patch_embed.backbone.forward_intermediates(x, indices=self.skip_indices)
        tokens = self._tokens(cnn_out)
        stages = dict(zip(ENCODER_STAGES["transunet"], [*cnn_stages, tokens]))
        skips = cnn_stages[::-1]
        b, n, c = tokens.shape
        y = self.conv_more(tokens.transpose(1, 2).reshape(b, c, *self.grid))
        for i, block in enumerate(self.blocks):
            y = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)
            if i < len(skips):
                y = torch.cat([y, skips[i]], dim=1)
            y = block(y)
        return SegOutput(self.head(y), [stages[name] for name in self.sc_stages], y)

    def _tokens(self, cnn_out: torch.Tensor) -> torch.Tensor:
        """The ViT on the CNN output: timm's `forward_features` after the backbone, `[B, N, C]` patch tokens."""
        vit = self.vit
        tokens = vit.patch_embed.proj(cnn_out).flatten(2).transpose(1, 2)
        tokens = vit.norm_pre(vit.patch_drop(vit._pos_embed(tokens)))
        return vit.norm(vit.blocks(tokens))[:, vit.num_prefix_tokens:]


@register("transunet")
def build_transunet(cfg: ModelConfig, in_channels: int, num_classes: int, image_size: int, preset: dict,
                    sc_stages: tuple[str, ...]) -> TransUNetSegmenter:
    """The TransUNet of `preset` (`model.encoder` does not apply: the hybrid backbone is the preset's)."""
    if cfg.encoder is not None:
        raise ConfigError(f"model.encoder={cfg.encoder!r} applies to model.name=unet only; remove it for {cfg.name}")
    return TransUNetSegmenter(in_channels, num_classes, image_size, preset, cfg.pretrained, sc_stages)
