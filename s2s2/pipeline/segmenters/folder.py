"""Self-describing model folders: `config.json` (what the model is, what it predicts, how its input is
prepared) beside `model.safetensors`, the way diffusers/transformers folders load anywhere.

`save_pretrained(model, card, folder)` writes one; `from_pretrained(folder)` builds the model from
`config.json` and loads the weights with safetensors only (never a pickle), so a folder needs no
training config and no training data to be used.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Optional

from pydantic import ValidationError
from torch import nn

from s2s2.pipeline.atomic import atomic_path
from s2s2.pipeline.config.base import StrictModel
from s2s2.pipeline.config.train import ModelConfig
from s2s2.pipeline.errors import S2S2Error
from s2s2.pipeline.preprocessing import Preprocessing
from s2s2.pipeline.segmenters.normalization import InputNormalization
from s2s2.pipeline.segmenters.registry import build_segmenter
from s2s2.pipeline.segmenters.weights import load_weights, model_identity, save_weights

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "s2s2-segmenter"


class Normalization(StrictModel):
    """Per-channel input normalisation the model applies (pretrained encoders)."""

    mean: list[float]
    std: list[float]


class ModelCard(StrictModel):
    """`config.json` of a model folder."""

    format: Literal["s2s2-segmenter"] = FORMAT
    version: Literal[1] = 1
    model: ModelConfig  # architecture, preset, encoder, L_enc stages
    in_channels: int
    num_classes: int
    class_names: tuple[str, ...]
    image_size: int
    loss: Literal["ce_dice", "bce_dice"]  # the segmentation loss it was trained with
    activation: Literal["softmax", "sigmoid"]  # how its logits become classes (follows the loss)
    normalization: Optional[Normalization] = None
    preprocessing: Preprocessing
    # the value each class id had in the training masks (e.g. [0, 255] for 0/255 PNG masks); None: the ids
    label_values: Optional[list[int]] = None
    source: dict[str, str] = {}  # where it came from (run folder, checkpoint)


def save_pretrained(model: nn.Module, card: ModelCard, folder: str | Path) -> Path:
    """Write `folder`/config.json and model.safetensors (each atomically); returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(model, folder / WEIGHTS_NAME, model_identity(card.model, card.in_channels, card.num_classes,
                                                              card.image_size))
    with atomic_path(folder / CONFIG_NAME) as tmp:
        tmp.write_text(card.model_dump_json(indent=1))
    return folder


def is_model_folder(folder: str | Path) -> bool:
    """Whether `folder` holds a model folder's config.json (rather than being a run folder)."""
    return (Path(folder) / CONFIG_NAME).is_file()


def read_card(folder: str | Path) -> ModelCard:
    """The validated config.json of a model folder; a missing or malformed one is a user error."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise S2S2Error(f"{folder} is not a model folder: {CONFIG_NAME} is missing; fix: pass a folder written by "
                        "`s2s2 export` (config.json + model.safetensors) or a run folder of `s2s2 train`")
    try:
        return ModelCard.model_validate(json.loads(path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError, ValidationError) as err:
        raise S2S2Error(f"{path} is not a valid model config ({str(err)[:300]}); fix: export the model again "
                        "(`s2s2 export --run RUN --out FOLDER`)") from None


def from_pretrained(folder: str | Path) -> tuple[nn.Module, ModelCard]:
    """The model of a model folder with its weights (safetensors only), and its card. Nothing is
    downloaded: a pretrained encoder's weights are in model.safetensors, its normalisation in the card."""
    card = read_card(folder)
    weights = Path(folder) / WEIGHTS_NAME
    if not weights.is_file():
        raise S2S2Error(f"{folder} is missing {WEIGHTS_NAME}; fix: export the model again "
                        "(`s2s2 export --run RUN --out FOLDER`)")
    architecture = card.model.model_copy(update={"pretrained": False})
    model = build_segmenter(architecture, card.in_channels, card.num_classes, card.image_size)
    if card.normalization is not None:
        model.normalize = InputNormalization(card.normalization.mean, card.normalization.std)
    load_weights(model, weights, model_identity(card.model, card.in_channels, card.num_classes, card.image_size))
    return model, card
