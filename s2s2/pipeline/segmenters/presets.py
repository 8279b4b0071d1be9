"""What each architecture offers: size presets, the image-size divisor, the encoder stages for L_enc."""

from __future__ import annotations

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
