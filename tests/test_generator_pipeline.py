"""The tiny generator end to end on CPU: build, fine-tune, save, reload offline, sample deterministically."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, UNet2DConditionModel

from s2s2.pipeline.errors import S2S2Error
from s2s2.pipeline.generator.loading import load_base, load_pipeline
from s2s2.pipeline.generator.sampling import generate_stack
from s2s2.stages.finetune import run_finetune
from fixtures_toy import toy_dataset, toy_project_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """A tiny base fine-tuned for two steps on the toy data (module-wide, ~2 s)."""
    cfg = toy_project_config(str(tmp_path_factory.mktemp("tiny")))
    return run_finetune(cfg, toy_dataset()), cfg


def test_pipeline_folder_reloads_offline(trained):
    folder, _ = trained
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # set by conftest before diffusers is imported
    pipe = StableDiffusionControlNetPipeline.from_pretrained(folder, safety_checker=None)
    assert isinstance(pipe.controlnet, ControlNetModel) and isinstance(pipe.unet, UNet2DConditionModel)
    assert pipe.vae.config.scaling_factor != 0.18215  # recomputed for the tiny VAE
    assert pipe.tokenizer.model_max_length == pipe.text_encoder.config.max_position_embeddings
    for sub in ("controlnet", "unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (folder / sub).is_dir()
    assert (folder / "controlnet" / "diffusion_pytorch_model.safetensors").is_file()


def test_generation_is_deterministic_and_varies_across_k(trained):
    folder, cfg = trained
    dataset = toy_dataset()
    pipe = load_pipeline(folder, cfg.generate.scheduler, torch.device("cpu"), torch.float32)
    rows = [0, 1]
    args = (dataset.masks[rows], [dataset.prompt(i) for i in rows], rows, 3, dataset.num_classes,
            dataset.image_shape, cfg.generate, 16)
    first, regenerated, bad = generate_stack(pipe, *args)
    again, _, _ = generate_stack(pipe, *args)
    assert first.shape == (2, 3, 1, 16, 16) and first.dtype == np.uint8
    assert np.array_equal(first, again)
    assert regenerated == 0 and bad == 0
    assert not np.array_equal(first[0, 0], first[0, 1])  # different seeds per k
    # an image does not depend on its neighbours in the call: mask 1 alone gives the same pixels
    alone, _, _ = generate_stack(pipe, dataset.masks[[1]], [dataset.prompt(1)], [1], 3, dataset.num_classes,
                                 dataset.image_shape, cfg.generate, 16)
    np.testing.assert_allclose(alone[0].astype(int), first[1].astype(int), atol=1)
    other = cfg.generate.model_copy(update={"seed": 1})
    changed, _, _ = generate_stack(pipe, *args[:6], other, 16)
    assert not np.array_equal(first, changed)


def test_black_images_are_regenerated_and_counted(trained):
    folder, cfg = trained
    dataset = toy_dataset()
    pipe = load_pipeline(folder, cfg.generate.scheduler, torch.device("cpu"), torch.float32)
    calls = []
    original_call = type(pipe).__call__

    def black_first_time(self, *args, **kwargs):  # the first call "diverges": every image black
        result = original_call(self, *args, **kwargs)
        calls.append(len(result.images))
        if len(calls) == 1:
            result.images[:] = 0.0
        return result

    type(pipe).__call__ = black_first_time
    try:
        stack, regenerated, still_bad = generate_stack(pipe, dataset.masks[[0]], [dataset.prompt(0)], [0], 2,
                                                       dataset.num_classes, dataset.image_shape, cfg.generate, 16)
    finally:
        type(pipe).__call__ = original_call
    assert calls == [2, 2] and regenerated == 2 and still_bad == 0
    assert stack.max() > 0


def test_a_model_that_only_makes_black_images_is_retried_then_reported(trained):
    folder, cfg = trained
    dataset = toy_dataset()
    pipe = load_pipeline(folder, cfg.generate.scheduler, torch.device("cpu"), torch.float32)
    with torch.no_grad():  # a broken decoder: every output pixel is -1, i.e. black
        pipe.vae.decoder.conv_out.weight.zero_()
        pipe.vae.decoder.conv_out.bias.fill_(-5.0)
    settings = cfg.generate.model_copy(update={"max_retries": 2})
    stack, regenerated, still_bad = generate_stack(pipe, dataset.masks[[0]], [dataset.prompt(0)], [0], 2,
                                                   dataset.num_classes, dataset.image_shape, settings, 16)
    assert regenerated == 4 and still_bad == 2 and stack.max() == 0


def test_missing_base_model_folder_is_a_clear_error(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(S2S2Error, match=f"base model folder {missing} does not exist"):
        load_base(str(missing))
    cfg = toy_project_config(str(tmp_path), generator={"base_model": str(missing)})
    with pytest.raises(S2S2Error, match="does not exist"):
        run_finetune(cfg, toy_dataset())


def test_missing_generator_folder_is_a_clear_error(tmp_path):
    with pytest.raises(S2S2Error, match="has no model_index.json"):
        load_pipeline(tmp_path, "ddim", torch.device("cpu"), torch.float32)
