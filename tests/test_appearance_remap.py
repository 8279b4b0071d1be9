"""The label-driven appearance remap of a real image: labels kept, texture kept, seeded, validated."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from s2s2.pipeline.appearance import appearance_remap, label_mean_map
from s2s2.pipeline.config.appearance import AppearanceRemapConfig
from s2s2.pipeline.config.base import load_config
from s2s2.pipeline.config.project import ProjectConfig
from s2s2.pipeline.errors import ConfigError
from s2s2.pipeline.generator.sampling import draw_appearances
from fixtures_toy import toy_dataset

ROOT = Path(__file__).resolve().parents[1]
NO_CORRUPTION = {"blur_p": 0.0, "bias_p": 0.0, "gamma_p": 0.0, "noise_p": 0.0}


def _remap(index: int, seed: int, **settings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    dataset = toy_dataset()
    image, mask = dataset.images[index], dataset.masks[index]
    cfg = AppearanceRemapConfig.model_validate({"enabled": True, **settings})
    return image, mask, appearance_remap(image, mask, dataset.num_classes, np.random.default_rng(seed), cfg)


def test_without_texture_or_corruption_every_label_gets_one_distinct_intensity():
    for index in range(4):
        _, mask, remapped = _remap(index, seed=index, texture=(0.0, 0.0), corruption=NO_CORRUPTION)
        levels = {label: np.unique(remapped[0][mask == label]) for label in np.unique(mask)}
        assert all(len(values) == 1 for values in levels.values())  # one intensity per label
        assert len({float(values[0]) for values in levels.values()}) == len(levels)  # all different
        # so the label map is a function of the intensities: a pixel's class never changed
        lookup = {float(values[0]): label for label, values in levels.items()}
        assert np.array_equal(np.vectorize(lookup.get)(remapped[0]), mask)


def test_texture_is_the_originals_deviation_from_its_label_mean_scaled_per_label():
    image, mask, remapped = _remap(1, seed=3, texture=(0.5, 1.5), corruption=NO_CORRUPTION,
                                   mean=(0.3, 0.7))  # means away from 0 and 1: no clipping
    deviation = image - label_mean_map(image, mask, 3)
    new_deviation = remapped - label_mean_map(remapped, mask, 3)
    for label in np.unique(mask):
        inside = mask == label
        scale = np.linalg.lstsq(deviation[0][inside][:, None], new_deviation[0][inside], rcond=None)[0][0]
        assert 0.5 <= scale <= 1.5
        np.testing.assert_allclose(new_deviation[0][inside], scale * deviation[0][inside], atol=1e-5)


def test_the_remap_is_deterministic_given_its_seed_and_differs_across_seeds():
    _, _, first = _remap(2, seed=7)
    _, _, again = _remap(2, seed=7)
    _, _, other = _remap(2, seed=8)
    assert first.dtype == np.float32 and first.min() >= 0 and first.max() <= 1
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_label_mean_map_paints_each_labels_mean():
    image = np.array([[[0.0, 1.0], [0.5, 0.5]]], dtype=np.float32)
    mask = np.array([[0, 0], [1, 1]])
    np.testing.assert_allclose(label_mean_map(image, mask, 3), [[[0.5, 0.5], [0.5, 0.5]]])


@pytest.mark.parametrize("override", ["finetune.appearance.probability=-0.1", "finetune.appearance.probability=1.5",
                                      "finetune.appearance.texture=[1.0,0.5]",
                                      "finetune.appearance.corruption.noise_p=-1",
                                      "generate.appearance_probability=-0.5"])
def test_bad_appearance_values_are_config_errors(override):
    with pytest.raises(ConfigError, match=override.split("=")[0].split(".")[-1]):
        load_config(ProjectConfig, None, dotted=[override])


def test_the_cli_stops_on_a_negative_probability_with_exit_status_2(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "s2s2.cli", "finetune", "--set", f"run_dir={tmp_path}",
                             "--set", "finetune.appearance.probability=-0.2"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "finetune.appearance.probability = -0.2" in result.stderr and "Traceback" not in result.stderr


def test_each_stack_image_draws_its_appearance_from_its_own_sample_and_k():
    dataset = toy_dataset()
    rows = [3, 4]
    cfg = AppearanceRemapConfig(enabled=True)
    originals = (dataset.images[rows] * 255).astype(np.uint8)  # as the store holds them
    every = draw_appearances(originals, dataset.masks[rows], rows, range(0, 4), dataset.num_classes, cfg, 1.0, 0)
    tail = draw_appearances(originals[1:], dataset.masks[rows[1:]], rows[1:], range(2, 4), dataset.num_classes,
                            cfg, 1.0, 0)
    assert np.array_equal(every[1:, 2:], tail)  # neither the other samples nor the other k matter
    assert not np.array_equal(every[0, 0], every[0, 1])  # each k its own appearance
    kept = draw_appearances(originals, dataset.masks[rows], rows, range(0, 2), dataset.num_classes, cfg, 0.0, 0)
    np.testing.assert_allclose(kept, np.repeat(originals[:, None] / 255.0, 2, axis=1), atol=1e-6)
