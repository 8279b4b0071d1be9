"""The segmenter zoo behind one interface: every model returns logits, encoder feature(s), decoder map.

`L_sc` compares what `SegOutput` holds, so the trainer never needs to know the architecture:
- `encoder_features`: the encoder stage(s) named by `model.sc_stages` (default per model in
  `DEFAULT_SC_STAGES`), `[B,C,h,w]` maps or `[B,N,C]` token sequences (cosine over C in both cases);
- `decoder_feature`: the last decoder map before the classification head, `[B,C,H,W]`.

One file per architecture (`unet`, `transunet`, `fcbformer`), each registering its builder by name
(`registry`); sizes and stage names in `presets`; weights I/O in `weights`; inference in `predict`;
pretrained encoders' input normalisation in `normalization`; self-describing model folders
(`save_pretrained` / `from_pretrained`) in `folder`.
Backbones, blocks and decoders come from timm, smp and MONAI; only the glue is written here.
"""

from s2s2.pipeline.segmenters import fcbformer, transunet, unet  # noqa: F401  (registers the builders)
from s2s2.pipeline.segmenters.output import SegOutput
from s2s2.pipeline.segmenters.predict import ACTIVATION, predict, predict_with_probabilities
from s2s2.pipeline.segmenters.presets import DEFAULT_SC_STAGES, ENCODER_STAGES, MIN_DIVISOR, PRESETS
from s2s2.pipeline.segmenters.registry import REGISTRY, build_segmenter, check_image_size, register, resolve_sc_stages
from s2s2.pipeline.segmenters.weights import load_weights, model_identity, save_weights
from s2s2.pipeline.segmenters.folder import ModelCard, from_pretrained, is_model_folder, save_pretrained

__all__ = ["ACTIVATION", "DEFAULT_SC_STAGES", "ENCODER_STAGES", "MIN_DIVISOR", "PRESETS", "REGISTRY", "ModelCard",
           "SegOutput", "build_segmenter", "check_image_size", "from_pretrained", "is_model_folder", "load_weights",
           "model_identity", "predict", "predict_with_probabilities", "register", "resolve_sc_stages",
           "save_pretrained", "save_weights"]
