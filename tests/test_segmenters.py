"""Every segmenter answers the same questions (logits, encoder features, decoder map) and learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from s2s2.pipeline.config.train import LossConfig, ModelConfig
from s2s2.pipeline.errors import ConfigError, S2S2Error
from s2s2.stages.train.location_scale import bezier_remap, global_location_scale
from s2s2.pipeline.losses import build_seg_loss, s2s2_loss, split_output
from s2s2.pipeline.segmenters import (ENCODER_STAGES, PRESETS, REGISTRY, build_segmenter, load_weights,
                                      model_identity, register, save_weights)
from test_train_support import blob_dataset

# Documented shapes at 32 px, batch 2, 1 channel, 4 classes (small presets).
SHAPES = {
    "unet": ([(2, 256, 2, 2)], (2, 16, 32, 32)),  # resnet18 stage 4 (the default sc_stages); smp decoder output
    "transunet": ([(2, 4, 192)], (2, 16, 32, 32)),  # tokens [B, (32/16)^2, 192]; DecoderCup output
    "fcbformer": ([(2, 32, 8, 8), (2, 128, 2, 2)], (2, 32, 32, 32)),  # TB output (stride 4), FCB bottleneck
}


@pytest.mark.parametrize("name", list(SHAPES))
def test_outputs_have_documented_shapes(name):
    model = build_segmenter(ModelConfig(name=name), 1, 4, 32)
    out = model(torch.rand(2, 1, 32, 32))
    assert out.logits.shape == (2, 4, 32, 32)
    assert [tuple(f.shape) for f in out.encoder_features] == SHAPES[name][0]
    assert tuple(out.decoder_feature.shape) == SHAPES[name][1]


@pytest.mark.parametrize("name", list(SHAPES))
def test_trains_a_few_s2s2_steps_with_falling_loss(name):
    torch.manual_seed(0)
    ds = blob_dataset(n=8, size=32)
    model = build_segmenter(ModelConfig(name=name), 1, 4, 32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    cfg = LossConfig(w_seg_gen=1.0, a_enc=1.0, a_dec=1.0)  # every term on
    seg_loss = build_seg_loss(cfg)
    original = torch.from_numpy(ds.images[:4])
    stack_image = torch.from_numpy(1.0 - ds.images[:4])  # another appearance of the same masks
    mask = torch.from_numpy(ds.masks[:4]).long()
    losses = []
    for _ in range(8):
        out0, outk = split_output(model(torch.cat([original, stack_image])), 4)
        parts = s2s2_loss(cfg, seg_loss, out0, outk, mask)
        optimizer.zero_grad()
        parts.total.backward()
        optimizer.step()
        losses.append(parts.total.item())
    assert np.isfinite(losses).all()
    assert np.mean(losses[-2:]) < 0.8 * np.mean(losses[:2]), losses


def test_image_size_must_fit_the_architecture():
    with pytest.raises(ConfigError, match="divisible by 32"):
        build_segmenter(ModelConfig(name="unet"), 1, 4, 48)


def test_encoder_override_is_unet_only():
    with pytest.raises(ConfigError, match="unet only"):
        build_segmenter(ModelConfig(name="fcbformer", encoder="resnet34"), 1, 4, 32)


def test_checkpoint_round_trip_and_refusal_of_another_architecture(tmp_path):
    cfg = ModelConfig(name="unet")
    model = build_segmenter(cfg, 1, 4, 32)
    path = tmp_path / "model.safetensors"
    save_weights(model, path, model_identity(cfg, 1, 4, 32))
    again = build_segmenter(cfg, 1, 4, 32)
    load_weights(again, path, model_identity(cfg, 1, 4, 32))
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        torch.testing.assert_close(a, b)
    other = ModelConfig(name="transunet")
    with pytest.raises(S2S2Error, match="another model.*name: checkpoint 'unet' vs config 'transunet'"):
        load_weights(build_segmenter(other, 1, 4, 32), path, model_identity(other, 1, 4, 32))
    with pytest.raises(S2S2Error, match="num_classes: checkpoint '4' vs config '3'"):
        load_weights(build_segmenter(cfg, 1, 3, 32), path, model_identity(cfg, 1, 3, 32))


def test_location_scale_is_a_monotone_remap_inside_unit_range():
    rng = np.random.default_rng(0)
    image = np.linspace(0, 1, 256, dtype=np.float32).reshape(1, 16, 16)
    for seed in range(5):
        remapped = bezier_remap(image, np.random.default_rng(seed))
        assert np.all(np.diff(remapped.ravel()) >= -1e-6)  # order of intensities kept
        out = global_location_scale(image, np.random.default_rng(seed))
        assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
        assert not np.allclose(out, image)
    inverted = bezier_remap(image, rng, inverse_prob=1.0)
    assert inverted.ravel()[0] > inverted.ravel()[-1]


# Every encoder stage a model offers to L_enc, at 64 px (batch 2): what `model.sc_stages` can name.
STAGE_SHAPES = {
    "unet": {"stage1": (2, 64, 32, 32), "stage2": (2, 64, 16, 16), "stage3": (2, 128, 8, 8),
             "stage4": (2, 256, 4, 4), "stage5": (2, 512, 2, 2)},
    "transunet": {"stem": (2, 32, 32, 32), "stage1": (2, 64, 16, 16), "stage2": (2, 128, 8, 8),
                  "tokens": (2, 16, 192)},
    "fcbformer": {"tb": (2, 32, 16, 16), "fcb": (2, 128, 4, 4)},
}


@pytest.mark.parametrize("name", list(STAGE_SHAPES))
def test_sc_stages_pick_the_encoder_features_and_default_per_model(name):
    from s2s2.pipeline.segmenters import DEFAULT_SC_STAGES, ENCODER_STAGES

    assert tuple(STAGE_SHAPES[name]) == ENCODER_STAGES[name]
    torch.manual_seed(0)
    model = build_segmenter(ModelConfig(name=name, sc_stages=list(ENCODER_STAGES[name])), 1, 4, 64)
    x = torch.rand(2, 1, 64, 64)
    everything = model(x)
    assert [tuple(f.shape) for f in everything.encoder_features] == list(STAGE_SHAPES[name].values())
    torch.manual_seed(0)
    default = build_segmenter(ModelConfig(name=name), 1, 4, 64)(x)  # same init: same features
    by_name = dict(zip(ENCODER_STAGES[name], everything.encoder_features))
    assert len(default.encoder_features) == len(DEFAULT_SC_STAGES[name])
    for stage, feature in zip(DEFAULT_SC_STAGES[name], default.encoder_features):
        torch.testing.assert_close(feature, by_name[stage])
    torch.testing.assert_close(default.logits, everything.logits)  # the choice never changes the prediction


def test_unknown_or_repeated_sc_stages_are_refused():
    with pytest.raises(ConfigError, match=r"unet offers the encoder stages \['stage1'.*'stage5'\]"):
        build_segmenter(ModelConfig(name="unet", sc_stages=["tokens"]), 1, 4, 32)
    with pytest.raises(ConfigError, match="at most once"):
        build_segmenter(ModelConfig(name="transunet", sc_stages=["tokens", "tokens"]), 1, 4, 32)


@pytest.mark.parametrize("name", list(SHAPES))
def test_features_come_from_the_feature_api_without_hooks(name):
    """No forward hook and no state kept between calls: a forward is re-entrant (and compile-friendly)."""
    model = build_segmenter(ModelConfig(name=name, sc_stages=list(ENCODER_STAGES[name])), 1, 4, 32)
    assert not [m for m in model.modules() if m._forward_hooks]
    x = torch.rand(2, 1, 32, 32)
    model.eval()
    with torch.no_grad():
        first = model(x)
        model(torch.rand(3, 1, 32, 32))
        again = model(x)
    assert all(torch.equal(a, b) for a, b in zip(first.encoder_features, again.encoder_features))


def test_the_registry_chooses_the_builder():
    """`build_segmenter` asks the registry (no if-chain): a builder registered under a name is the one used."""
    assert set(REGISTRY) == set(ENCODER_STAGES) == set(PRESETS)
    with pytest.raises(ValueError, match="registered twice"):
        register("unet")(REGISTRY["unet"])
    original = REGISTRY.pop("unet")
    try:
        register("unet")(lambda cfg, cin, classes, size, preset, stages: torch.nn.Conv2d(cin, classes, 1))
        model = build_segmenter(ModelConfig(name="unet"), 2, 3, 32)
        assert isinstance(model, torch.nn.Conv2d) and model.in_channels == 2 and model.out_channels == 3
    finally:
        REGISTRY["unet"] = original


def test_monai_imports_without_the_torch_jit_warning_and_other_warnings_still_show():
    import subprocess
    import sys

    code = ("import warnings; warnings.simplefilter('error');"
            "from s2s2.pipeline.config.train import LossConfig, ModelConfig;"
            "from s2s2.pipeline.losses import build_seg_loss; build_seg_loss(LossConfig());"
            "from s2s2.pipeline.segmenters import build_segmenter; build_segmenter(ModelConfig(name='fcbformer'), 1, 2, 32);"
            "import s2s2.pipeline.metrics as m; m.import_monai();"
            "import pytest\n"
            "with pytest.raises(FutureWarning): warnings.warn('another', FutureWarning)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_saved_weights_are_readable_like_every_other_output(tmp_path):
    """A weights file gets the permissions the umask gives any new file (safetensors alone writes 0600)."""
    import os

    from s2s2.pipeline.checkpoint import save_module

    save_module(torch.nn.Linear(2, 2), tmp_path / "w.safetensors")
    (tmp_path / "plain.txt").write_text("x")
    assert os.stat(tmp_path / "w.safetensors").st_mode & 0o777 == os.stat(tmp_path / "plain.txt").st_mode & 0o777
