"""`s2s2 predict` / `s2s2 export`: model folders, parity with evaluate, input geometry kept, bad inputs refused."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from s2s2.cli import run as cli
from s2s2.pipeline.config.data import data_config
from s2s2.pipeline.config.train import ModelConfig
from s2s2.pipeline.segmenters import build_segmenter, from_pretrained, predict, predict_with_probabilities
from s2s2.pipeline.segmenters.normalization import input_normalization
from s2s2.stages.evaluate import evaluate_set, run_evaluate, shared_classes
from s2s2.stages.predict import run_export, segment_volume
from s2s2.stages.train import run_train
from fixtures_data import blob_pair, write_folder_dataset
from test_train_support import tiny_config


@pytest.fixture(scope="module")
def brain_run(tmp_path_factory, repo_cache_dir):
    """A 2-step baseline U-Net on the embedded default (64 px), exported as a model folder."""
    tmp = tmp_path_factory.mktemp("brain")
    cfg = tiny_config(tmp, stack=False, steps=2, val_every=2, checkpoint_every=2)
    cfg.data = data_config(cache_dir=repo_cache_dir)
    folder = run_train(cfg)
    return cfg, folder, run_export(folder, tmp / "model")


@pytest.fixture(scope="module")
def template_nifti(tmp_path_factory):
    """The embedded template's T1 as a NIfTI file (what a user would pass)."""
    from s2s2.pipeline.data.icbm152 import icbm152_volumes

    volumes, grid = icbm152_volumes()
    path = tmp_path_factory.mktemp("scan") / "icbm_0000.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(volumes["T1"]), grid.affine), path)
    return path


def test_predict_reproduces_evaluates_per_volume_dice_on_the_embedded_test_volume(brain_run, template_nifti,
                                                                                  icbm152_dataset):
    cfg, run, model_folder = brain_run
    results = run_evaluate(cfg, sets=["in_domain"], folder=run)["test_sets"]["in_domain"]
    model, card = from_pretrained(model_folder)
    segmented, _ = segment_volume(model, card, [template_nifti], torch.device("cpu"))
    indices = icbm152_dataset.indices("test")
    positions = [int(icbm152_dataset.positions[i]) for i in indices]
    classes = shared_classes(card.class_names, icbm152_dataset.class_names, None, "in_domain")
    again = evaluate_set(segmented.model_labels[positions], icbm152_dataset, indices, classes, 95.0)
    assert again["volume"]["dice"] == results["volume"]["dice"]
    assert again["volume"]["dice_mean"] == results["volume"]["dice_mean"]
    assert again["dice"] == results["dice"]
    # and a model folder is evaluated like its run
    from_folder = run_evaluate(cfg, sets=["in_domain"], model_folder=model_folder)["test_sets"]["in_domain"]
    assert from_folder["volume"]["dice"] == results["volume"]["dice"]


def test_nifti_round_trip_keeps_affine_header_and_shape(brain_run, template_nifti, tmp_path):
    _, _, model_folder = brain_run
    original = nib.load(template_nifti)
    flipped_data = np.asarray(original.dataobj)[::-1, :, ::-1]  # stored as LAI instead of RAS
    flip = np.diag([-1.0, 1.0, -1.0, 1.0])
    flip[:3, 3] = [original.shape[0] - 1, 0, original.shape[2] - 1]
    flipped = nib.Nifti1Image(np.ascontiguousarray(flipped_data), original.affine @ flip)
    flipped.header["descrip"] = b"a user scan"
    nib.save(flipped, tmp_path / "flipped.nii.gz")
    assert cli(["predict", "-m", str(model_folder), "-i", str(template_nifti), "-o", str(tmp_path / "ras.nii.gz")]) == 0
    assert cli(["predict", "-m", str(model_folder), "-i", str(tmp_path / "flipped.nii.gz"),
                "-o", str(tmp_path / "out")]) == 0
    mask = nib.load(tmp_path / "out" / "flipped.nii.gz")
    assert mask.shape == flipped.shape and np.array_equal(mask.affine, flipped.affine)
    assert mask.header["descrip"] == flipped.header["descrip"]
    assert np.array_equal(mask.header.get_zooms(), flipped.header.get_zooms())
    assert mask.get_data_dtype() == np.uint8
    ras = np.asarray(nib.load(tmp_path / "ras.nii.gz").dataobj)
    assert np.array_equal(np.asarray(mask.dataobj), ras[::-1, :, ::-1])  # the same anatomy gets the same labels
    assert set(np.unique(ras)) <= {0, 1, 2, 3} and (ras > 0).any()


@pytest.fixture(scope="module")
def picture_model(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pictures")
    root = write_folder_dataset(tmp / "data", n=8)
    cfg = tiny_config(tmp, stack=False, steps=2, val_every=2, checkpoint_every=2)
    cfg.data = data_config(adapter="folder", root=root, size=32, cache_dir=tmp / "cache")
    return run_export(run_train(cfg), tmp / "model")


def test_png_folder_at_another_size_comes_back_at_its_own_size(picture_model, tmp_path):
    assert json.loads((picture_model / "config.json").read_text())["label_values"] == [0, 255]  # 0/255 masks
    (tmp_path / "in").mkdir()
    for i, (h, w) in enumerate([(70, 45), (33, 90)]):
        image, _ = blob_pair(i, height=h, width=w)
        Image.fromarray(image).save(tmp_path / "in" / f"scan{i}.png")
    Image.fromarray(np.stack([image] * 3, -1)).save(tmp_path / "in" / "colour.jpg")  # RGB in, grey model
    assert cli(["predict", "-m", str(picture_model), "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                "--save-probabilities", "--tta", "flip"]) == 0
    for name, shape in [("scan0", (70, 45)), ("scan1", (33, 90)), ("colour", (33, 90))]:
        mask = np.asarray(Image.open(tmp_path / "out" / f"{name}.png"))
        assert mask.shape == shape and set(np.unique(mask)) <= {0, 255}  # the training masks' values (0/255)
        probs = np.load(tmp_path / "out" / f"{name}_probabilities.npz")["probabilities"]
        assert probs.shape == (2, *shape) and np.allclose(probs.sum(0), 1.0, atol=1e-5)


def test_existing_outputs_are_kept_unless_overwrite(picture_model, tmp_path):
    image, _ = blob_pair(0, height=40, width=40)
    Image.fromarray(image).save(tmp_path / "a.png")
    out = tmp_path / "a_mask.png"
    out.write_bytes(b"kept")
    assert cli(["predict", "-m", str(picture_model), "-i", str(tmp_path / "a.png"), "-o", str(out)]) == 0
    assert out.read_bytes() == b"kept"
    assert cli(["predict", "-m", str(picture_model), "-i", str(tmp_path / "a.png"), "-o", str(out), "--overwrite"]) == 0
    assert np.asarray(Image.open(out)).shape == (40, 40)


def test_bad_inputs_give_one_message_exit_2_and_no_output(brain_run, picture_model, tmp_path, capsys):
    _, _, brain = brain_run
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti")
    two = tmp_path / "two"
    two.mkdir()
    for c in range(2):
        nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), two / f"case_000{c}.nii.gz")
    missing = tmp_path / "incomplete"
    missing.mkdir()
    (missing / "config.json").write_text((brain / "config.json").read_text())
    cases = [
        (brain, tmp_path / "empty", "no NIfTI"),
        (brain, tmp_path / "broken.nii.gz", "not a readable NIfTI"),
        (brain, two, "2 channel file(s), the model takes 1"),
        (missing, tmp_path / "broken.nii.gz", "missing model.safetensors"),
        (picture_model, tmp_path / "broken.nii.gz", "trained on 2-D picture"),
    ]
    for model, source, message in cases:
        out = tmp_path / "out"
        assert cli(["predict", "-m", str(model), "-i", str(source), "-o", str(out)]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
        assert not out.exists() or not any(out.iterdir())


def test_model_folder_is_self_describing(brain_run, icbm152_dataset):
    cfg, run, folder = brain_run
    card = json.loads((folder / "config.json").read_text())
    assert card["model"]["name"] == "unet" and card["class_names"] == list(icbm152_dataset.class_names)
    assert card["activation"] == "softmax" and card["normalization"] is None
    prep = card["preprocessing"]
    assert (prep["kind"], prep["axis"], prep["size"], prep["channels"]) == ("volume", 2, 64, 1)
    assert prep["intensity"] == "percentile" and prep["nonzero_only"] and prep["crop_box"]
    model, _ = from_pretrained(folder)
    images = icbm152_dataset.images[:4]
    reference = build_segmenter(cfg.model, 1, 4, 64)
    from s2s2.pipeline.segmenters import load_weights, model_identity

    load_weights(reference, run / "model.safetensors", model_identity(cfg.model, 1, 4, 64))
    assert np.array_equal(predict(model, images, torch.device("cpu")), predict(reference, images, torch.device("cpu")))


class FixedLogits(torch.nn.Module):
    """A real 1x1 convolution whose logits are set by hand (bias only)."""

    def __init__(self, bias: list[float]) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, len(bias), 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.copy_(torch.tensor(bias))

    def forward(self, x):
        from s2s2.pipeline.segmenters import SegOutput

        logits = self.conv(x)
        return SegOutput(logits, [logits], logits)


def test_sigmoid_models_threshold_each_class_at_one_half():
    images = np.zeros((1, 1, 4, 4), np.float32)
    cpu = torch.device("cpu")
    # both sigmoids above 0.5, background more confident: argmax says 0, the sigmoid protocol says 1
    assert (predict(FixedLogits([3.0, 1.0]), images, cpu, activation="sigmoid") == 1).all()
    assert (predict(FixedLogits([3.0, 1.0]), images, cpu, activation="softmax") == 0).all()
    # foreground more likely than background but below 0.5: background
    assert (predict(FixedLogits([-3.0, -1.0]), images, cpu, activation="sigmoid") == 0).all()
    # two foreground classes above 0.5: the more confident one
    assert (predict(FixedLogits([0.0, 1.0, 2.0]), images, cpu, activation="sigmoid") == 2).all()
    _, probs = predict_with_probabilities(FixedLogits([3.0, 1.0]), images, cpu, activation="sigmoid", tta=True)
    assert np.allclose(probs[0, :, 0, 0], torch.sigmoid(torch.tensor([3.0, 1.0])).numpy())


def test_flip_tta_averages_with_the_mirrored_prediction():
    torch.manual_seed(0)
    model = build_segmenter(ModelConfig(), 1, 3, 32).eval()
    images = np.random.default_rng(0).random((2, 1, 32, 32)).astype(np.float32)
    _, probs = predict_with_probabilities(model, images, torch.device("cpu"), tta=True)
    with torch.no_grad():
        x = torch.from_numpy(images)
        expected = (model(x).logits.softmax(1) + model(x.flip(-1)).logits.softmax(1).flip(-1)) / 2
    assert np.allclose(probs, expected.numpy(), atol=1e-6)


def test_pretrained_encoders_get_their_own_input_normalisation():
    from timm.models import get_pretrained_cfg

    assert input_normalization(ModelConfig(), 1) is None  # from scratch: the input as before
    pvt = get_pretrained_cfg("pvt_v2_b0")
    stats = input_normalization(ModelConfig(name="fcbformer", pretrained=True), 3)
    assert stats == {"mean": list(pvt.mean), "std": list(pvt.std)}
    grey = input_normalization(ModelConfig(name="fcbformer", pretrained=True), 1)
    assert grey["mean"] == [pytest.approx(sum(pvt.mean) / 3)]
    from s2s2.pipeline.segmenters.normalization import InputNormalization

    torch.manual_seed(0)
    model = build_segmenter(ModelConfig(name="unet", encoder="tu-resnet18"), 3, 2, 32).eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        plain = model((x - torch.tensor(pvt.mean).view(1, 3, 1, 1)) / torch.tensor(pvt.std).view(1, 3, 1, 1)).logits
        model.normalize = InputNormalization(list(pvt.mean), list(pvt.std))
        assert torch.allclose(model(x).logits, plain, atol=1e-6)
