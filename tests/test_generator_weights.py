"""Generator weights are read as safetensors only: a base model or ControlNet folder saved as pickled
`.bin` is refused, naming the files and the fix, unless the user opts in (`generator.pickled_weights`),
which is said in a warning."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel

from s2s2.pipeline.errors import S2S2Error
from s2s2.pipeline.generator.loading import load_base, make_controlnet


def _as_pickles(folder: Path, parts: dict[str, type]) -> None:
    """Re-save each part of a diffusers folder as pickled `.bin` weights only (as older hub repos ship)."""
    for part, model_class in parts.items():
        model = model_class.from_pretrained(folder / part)
        for weights in (folder / part).glob("*.safetensors"):
            weights.unlink()
        model.save_pretrained(folder / part, safe_serialization=False)
        assert list((folder / part).glob("*.bin")) and not list((folder / part).glob("*.safetensors"))


def test_a_pickled_base_model_is_refused_unless_opted_in(tmp_path, toy_generator, caplog):
    base = tmp_path / "bin-base"
    shutil.copytree(toy_generator, base)
    _as_pickles(base, {"unet": UNet2DConditionModel, "vae": AutoencoderKL})  # transformers 5 saves no pickles
    with pytest.raises(S2S2Error) as refused:
        load_base(str(base))
    message = str(refused.value)
    assert "pickled weights only" in message and "diffusion_pytorch_model.bin" in message
    assert "generator.pickled_weights: true" in message and "convert them to safetensors" in message
    with caplog.at_level(logging.WARNING, logger="s2s2"):
        parts = load_base(str(base), allow_pickle=True)
    assert "unpickling runs code" in caplog.text
    reference = load_base(str(toy_generator))
    for name, value in reference.unet.state_dict().items():
        assert torch.equal(value, parts.unet.state_dict()[name])


def test_a_pickled_controlnet_is_refused_unless_opted_in(tmp_path, toy_generator):
    folder = tmp_path / "bin-controlnet"
    shutil.copytree(toy_generator / "controlnet", folder / "controlnet")
    _as_pickles(folder, {"controlnet": ControlNetModel})
    base = load_base(str(toy_generator))
    with pytest.raises(S2S2Error, match=r"pickled weights only \(diffusion_pytorch_model.bin\)"):
        make_controlnet(base.unet, base.vae, str(folder / "controlnet"))
    loaded = make_controlnet(base.unet, base.vae, str(folder / "controlnet"), allow_pickle=True)
    assert isinstance(loaded, ControlNetModel)
