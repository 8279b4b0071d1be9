"""The segmenter zoo behind one interface: every model returns logits, encoder feature(s), decoder map.

`L_sc` compares what `SegOutput` holds, so the trainer never needs to know the architecture:
- `encoder_features`: the encoder stage(s) named by `model.sc_stages` (default per model in
  `DEFAULT_SC_STAGES`), `[B,C,h,w]` maps or `[B,N,C]` token sequences (cosine over C in both cases);
- `decoder_feature`: the last decoder map before the classification head, `[B,C,H,W]`.

Backbones, blocks and decoders come from timm, smp and MONAI; only the glue is written here.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from s2s2.pipeline.atomic import atomic_path
from s2s2.pipeline.config.train import ModelConfig
from s2s2.pipeline.errors import ConfigError, S2S2Error


class SegOutput(NamedTuple):
    """What every segmenter returns (a tuple, so DDP can find the tensors)."""

    logits: torch.Tensor  # [B, num_classes, H, W]
    encoder_features: list[torch.Tensor]  # deepest encoder output(s)
    decoder_feature: torch.Tensor  # [B, C_dec, H, W], the map the head classifies


# Size presets. `small`: CPU minutes at 64 px. `full`: the paper's backbones, for a GPU.
PRESETS: dict[str, dict[str, dict]] = {
    "unet": {
        "small": {"encoder": "resnet18", "decoder_channels": (128, 64, 32, 16, 16)},
        "full": {"encoder": "efficientnet-b2", "decoder_channels": (256, 128, 64, 32, 16)},
    },
    "transunet": {
        "small": {"timm_name": None, "layers": (1, 1, 1), "channels": (64, 128, 256), "stem_chs": 32,
                  "groups": 8, "embed_dim": 192, "depth": 4, "num_heads": 3,
                  "decoder_channels": (128, 64, 32, 16)},
        "full": {"timm_name": "vit_base_r50_s16_224", "decoder_channels": (256, 128, 64, 16)},
    },
    "fcbformer": {
        "small": {"timm_name": "pvt_v2_b0", "tb_channels": 32, "fcb_features": (16, 16, 32, 64, 128, 16)},
        "full": {"timm_name": "pvt_v2_b3", "tb_channels": 64, "fcb_features": (32, 32, 64, 128, 256, 32)},
    },
}

MIN_DIVISOR = {"unet": 32, "transunet": 16, "fcbformer": 32}

# The encoder stages each model can hand to L_enc (`model.sc_stages`), shallow to deep.
# unet: the encoder's five stages, stride 2, 4, 8, 16, 32 (at 64 px: 32x32 ... 2x2 maps).
# transunet: the CNN stem (stride 2) and CNN stages (stride 4, 8) of the hybrid backbone, then the ViT
#   tokens (stride 16), which the authors compare.
# fcbformer: the transformer branch's output (stride 4) and the convolutional branch's bottleneck
#   (stride 16), the two features the authors compare.
ENCODER_STAGES: dict[str, tuple[str, ...]] = {
    "unet": ("stage1", "stage2", "stage3", "stage4", "stage5"),
    "transunet": ("stem", "stage1", "stage2", "tokens"),
    "fcbformer": ("tb", "fcb"),
}
# Defaults of `model.sc_stages`. transunet and fcbformer: the authors' features. unet: stage4 (stride 16,
# 4x4 at 64 px) had the best mean validation Dice of the five candidates on the embedded default, over
# 3 seeds against each of two stacks, though within the seed spread of stage5 (BENCHMARKS.md, "Which
# encoder stage L_enc compares").
DEFAULT_SC_STAGES: dict[str, tuple[str, ...]] = {
    "unet": ("stage4",),
    "transunet": ("tokens",),
    "fcbformer": ("tb", "fcb"),
}


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class UNetSegmenter(nn.Module):
    """smp U-Net over a timm/smp encoder; encoder feature = deepest stage, decoder = smp decoder output."""

    def __init__(self, in_channels: int, num_classes: int, encoder: str, decoder_channels: tuple[int, ...],
                 pretrained: bool, sc_stages: tuple[str, ...]) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp

        self.net = smp.Unet(encoder_name=encoder, encoder_weights="imagenet" if pretrained else None,
                            in_channels=in_channels, classes=num_classes, decoder_channels=decoder_channels,
                            encoder_depth=len(decoder_channels))
        # smp's encoder returns the input first, then stage1..stage5
        self.sc_levels = [ENCODER_STAGES["unet"].index(name) + 1 for name in sc_stages]

    def forward(self, x: torch.Tensor) -> SegOutput:
        features = self.net.encoder(x)
        decoded = self.net.decoder(features)
        return SegOutput(self.net.segmentation_head(decoded), [features[i] for i in self.sc_levels], decoded)


class TransUNetSegmenter(nn.Module):
    """TransUNet-style: timm ResNet-ViT hybrid encoder (tokens = encoder feature), cascaded upsampling
    decoder (TransUNet's DecoderCup) with skips from the CNN stem and stages, taken by forward hooks."""

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
        # Skips, shallow to deep: stem conv+norm (stride 2), then every stage but the last.
        skip_modules = [backbone.stem.norm, *list(backbone.stages)[:-1]]
        self._skips: list[torch.Tensor] = []
        for module in skip_modules:
            module.register_forward_hook(lambda _m, _i, out: self._skips.append(out))
        with torch.no_grad():
            probe = backbone.eval()(torch.zeros(1, in_channels, image_size, image_size))
        skip_channels = [t.shape[1] for t in self._skips][::-1]  # deep to shallow
        self._skips.clear()
        self.grid = tuple(probe.shape[-2:])  # token grid (h, w)
        embed_dim = self.vit.embed_dim
        dec = preset["decoder_channels"]
        self.conv_more = _conv_bn_relu(embed_dim, 512 if embed_dim >= 512 else dec[0] * 2)
        blocks, cin = [], self.conv_more[0].out_channels
        for i, cout in enumerate(dec):
            skip = skip_channels[i] if i < len(skip_channels) else 0
            blocks.append(nn.Sequential(_conv_bn_relu(cin + skip, cout), _conv_bn_relu(cout, cout)))
            cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv2d(dec[-1], num_classes, 3, padding=1)
        self.sc_stages = sc_stages

    def forward(self, x: torch.Tensor) -> SegOutput:
        self._skips.clear()
        tokens = self.vit.forward_features(x)[:, self.vit.num_prefix_tokens:]  # [B, N, C]
        stages = dict(zip(ENCODER_STAGES["transunet"], [*self._skips, tokens]))
        skips = self._skips[::-1]
        self._skips = []
        b, n, c = tokens.shape
        y = self.conv_more(tokens.transpose(1, 2).reshape(b, c, *self.grid))
        for i, block in enumerate(self.blocks):
            y = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)
            if i < len(skips):
                y = torch.cat([y, skips[i]], dim=1)
            y = block(y)
        return SegOutput(self.head(y), [stages[name] for name in self.sc_stages], y)


class FCBFormerSegmenter(nn.Module):
    """FCBFormer-style: a PVTv2 transformer branch (TB: local emphasis + stepwise aggregation), a fully
    convolutional branch (FCB: MONAI BasicUNet) and a prediction head of two residual blocks.
    Encoder features: the TB output and the FCB bottleneck. Decoder feature: the head's second block."""

    def __init__(self, in_channels: int, num_classes: int, preset: dict, pretrained: bool,
                 sc_stages: tuple[str, ...]) -> None:
        super().__init__()
        import timm
        from monai.networks.blocks import UnetResBlock
        from monai.networks.nets import BasicUNet

        width = preset["tb_channels"]
        self.tb = timm.create_model(preset["timm_name"], pretrained=pretrained, features_only=True,
                                    in_chans=in_channels)
        self.local_emphasis = nn.ModuleList(
            nn.Sequential(_conv_bn_relu(c, width), _conv_bn_relu(width, width)) for c in self.tb.feature_info.channels())
        self.aggregate = nn.ModuleList(_conv_bn_relu(2 * width, width) for _ in self.tb.feature_info.channels()[:-1])
        fcb = preset["fcb_features"]
        self.fcb = BasicUNet(spatial_dims=2, in_channels=in_channels, out_channels=fcb[-1], features=fcb,
                             norm=("batch", {}))
        self._bottleneck: list[torch.Tensor] = []
        self.fcb.down_4.register_forward_hook(lambda _m, _i, out: self._bottleneck.append(out))
        self.head = nn.Sequential(
            UnetResBlock(2, width + fcb[-1], width, kernel_size=3, stride=1, norm_name="batch"),
            UnetResBlock(2, width, width, kernel_size=3, stride=1, norm_name="batch"),
        )
        self.classifier = nn.Conv2d(width, num_classes, 1)
        self.sc_stages = sc_stages

    def forward(self, x: torch.Tensor) -> SegOutput:
        levels = [le(f) for le, f in zip(self.local_emphasis, self.tb(x))]
        tb_out = levels[-1]
        for i in range(len(levels) - 2, -1, -1):  # stepwise, deep to shallow
            up = F.interpolate(tb_out, size=levels[i].shape[-2:], mode="bilinear", align_corners=False)
            tb_out = self.aggregate[i](torch.cat([levels[i], up], dim=1))
        self._bottleneck.clear()
        fcb_out = self.fcb(x)
        bottleneck = self._bottleneck.pop()
        tb_full = F.interpolate(tb_out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        decoded = self.head(torch.cat([tb_full, fcb_out], dim=1))
        stages = {"tb": tb_out, "fcb": bottleneck}
        return SegOutput(self.classifier(decoded), [stages[name] for name in self.sc_stages], decoded)


def check_image_size(cfg: ModelConfig, image_size: int) -> None:
    """Refuse an image size the architecture cannot tile (smp needs multiples of 32)."""
    divisor = MIN_DIVISOR[cfg.name]
    if image_size % divisor:
        raise ConfigError(f"model.name={cfg.name} needs an image size divisible by {divisor}, the data has "
                          f"{image_size} px; set data.size to a multiple of {divisor}")


def resolve_sc_stages(cfg: ModelConfig) -> tuple[str, ...]:
    """The encoder stages L_enc compares: `model.sc_stages`, or the model's default; unknown names refused."""
    stages = tuple(cfg.sc_stages) if cfg.sc_stages is not None else DEFAULT_SC_STAGES[cfg.name]
    known = ENCODER_STAGES[cfg.name]
    unknown = [name for name in stages if name not in known]
    if unknown or len(set(stages)) != len(stages):
        raise ConfigError(f"model.sc_stages={list(stages)}: {cfg.name} offers the encoder stages {list(known)} "
                          "(shallow to deep), each at most once; fix: name some of these")
    return stages


def build_segmenter(cfg: ModelConfig, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """Build the configured segmenter for images [B,in_channels,image_size,image_size]."""
    check_image_size(cfg, image_size)
    preset = dict(PRESETS[cfg.name][cfg.preset])
    stages = resolve_sc_stages(cfg)
    if cfg.name == "unet":
        return UNetSegmenter(in_channels, num_classes, cfg.encoder or preset["encoder"],
                             tuple(preset["decoder_channels"]), cfg.pretrained, stages)
    if cfg.encoder is not None:
        raise ConfigError(f"model.encoder={cfg.encoder!r} applies to model.name=unet only; remove it for {cfg.name}")
    if cfg.name == "transunet":
        return TransUNetSegmenter(in_channels, num_classes, image_size, preset, cfg.pretrained, stages)
    return FCBFormerSegmenter(in_channels, num_classes, preset, cfg.pretrained, stages)


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
