"""The adapters of the paper's releases and the preprocessing fields the paper settings need."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from scipy import ndimage

from fixtures_paper import organ_slice, write_acdc, write_cvc, write_slaug_abdominal, write_slaug_cardiac, write_synapse
from s2s2.pipeline.config.data import DataConfig, data_config
from s2s2.pipeline.data.geometry import resize_image, resize_mask
from s2s2.pipeline.data.prepare import load_raw, prepare_dataset
from s2s2.pipeline.data.slaug import abdominal_split, cardiac_split
from s2s2.pipeline.data.split import fcbformer_split
from s2s2.pipeline.errors import DataError


def config(tmp_path, **fields) -> DataConfig:
    return data_config(**{"size": 32, "cache_dir": str(tmp_path / "cache"), **fields})


def test_synapse_reads_the_listed_training_slices_and_every_slice_of_the_test_volumes(tmp_path):
    root = write_synapse(tmp_path / "Synapse")
    dataset = prepare_dataset(config(tmp_path, adapter="synapse", root=root))
    train = [dataset.ids[i] for i in dataset.indices("train")]
    assert train == ["case0005_slice000", "case0005_slice001", "case0006_slice000", "case0006_slice001",
                     "case0007_slice000"]  # case0007_slice001 is not in lists_Synapse/train.txt
    test = [dataset.ids[i] for i in dataset.indices("test")]
    assert test == [f"case000{c}_slice00{z}" for c in (1, 2) for z in range(3)]  # empty slices kept
    assert dataset.indices("val") == [] and dataset.num_classes == 9
    assert not dataset.masks[dataset.indices("test")[0]].any()
    assert dataset.prompt(0).startswith("A abdomen CT slice showing background, Aorta")  # library template


def test_synapse_refuses_raw_intensities_unless_a_window_is_set(tmp_path):
    root = write_synapse(tmp_path / "Synapse")
    image, label = organ_slice(0, (40, 40), 9)
    np.savez(root / "train_npz" / "case0005_slice000.npz", image=image * 400 - 125, label=label)
    with pytest.raises(DataError, match=r"(?s)case0005_slice000.npz: holds intensities in \[-125.*intensity_window"):
        load_raw(config(tmp_path, adapter="synapse", root=root))
    with pytest.raises(DataError, match="look normalised already"):  # the window on [0, 1] test volumes
        load_raw(config(tmp_path, adapter="synapse", root=root, intensity_window=(-125, 275)))


def test_acdc_splits_by_patient_and_trains_from_the_slice_files(tmp_path):
    root = write_acdc(tmp_path / "ACDC")
    with h5py.File(root / "ACDC_training_slices" / "patient031_frame01_slice_0.h5", "r+") as handle:
        handle["image"][0, 0] = 0.999  # only the slice file, not its volume: training must read this one
    cfg = config(tmp_path, adapter="acdc", root=root, keep_aspect=False,
                 prompt_template="A 2D slice of a cardiac MRI scan showing {classes}",
                 prompt_class_names=("background", " right ventricle", "left ventricle", "myocardium"))
    dataset = prepare_dataset(cfg)
    cases = {split: sorted({dataset.ids[i].split("_frame")[0] for i in dataset.indices(split)})
             for split in ("train", "val", "test")}
    assert cases == {"train": ["patient031", "patient032", "patient033"], "val": ["patient021"],
                     "test": ["patient001", "patient002"]}
    raw = load_raw(cfg)
    first = next(s for s in raw.slices if s.id == "patient031_frame01_slice_0")
    assert first.split == "train" and first.image[0, 0, 0] == pytest.approx(0.999)
    assert dataset.class_names == ("background", "right ventricle", "myocardium", "left ventricle")
    index = dataset.indices("train")[0]
    assert dataset.prompt(index) == ("A 2D slice of a cardiac MRI scan showing background,  right ventricle, "
                                     "left ventricle, myocardium")


def test_acdc_without_slice_folder_cuts_training_volumes(tmp_path):
    root = write_acdc(tmp_path / "ACDC")
    for path in (root / "ACDC_training_slices").iterdir():
        path.unlink()
    (root / "ACDC_training_slices").rmdir()
    dataset = prepare_dataset(config(tmp_path, adapter="acdc", root=root))
    assert len(dataset.indices("train")) == 3 * 3


def test_slaug_splits_as_the_authors_loaders():
    assert [list(abdominal_split(list(range(1, 31))).values()).count(s) for s in ("test", "val", "train")] == [6, 3, 21]
    assert [list(abdominal_split(list(range(1, 21))).values()).count(s) for s in ("test", "val", "train")] == [4, 2, 14]
    assert list(abdominal_split([3, 1, 2, 10, 4, 5, 6, 7, 8, 9]).items())[:3] == [(1, "test"), (2, "test"), (3, "val")]
    assert [cardiac_split("bSSFP", s) for s in (1, 35, 36, 45, 46)] == ["train", "train", "test", "test", None]
    assert [cardiac_split("LGE", s) for s in (1, 5, 6, 45)] == ["test", "test", "train", "train"]


def test_slaug_slices_keep_the_array_order_and_scale_per_volume(tmp_path):
    import nibabel as nib

    root = write_slaug_abdominal(tmp_path / "abdominal")
    raw = load_raw(config(tmp_path, adapter="slaug", root=root, domain="CHAOST2"))
    volume = np.asarray(nib.load(str(root / "CHAOST2" / "processed" / "image_4.nii.gz")).dataobj)
    scaled = (volume - volume.min()) / (volume.max() - volume.min())
    item = next(s for s in raw.slices if s.id == "CHAOST2_4_1")
    np.testing.assert_allclose(item.image[0], scaled[:, :, 1].T, atol=1e-6)  # SimpleITK's [z] plane
    assert item.case == "CHAOST2_4" and item.spacing == (1.25, 1.25)
    assert raw.class_names == ("bg", "liver", "rk", "lk", "spleen") and raw.modality == "abdominal T2-SPIR MRI"
    ct = load_raw(config(tmp_path, adapter="slaug", root=root, domain="SABSCT", intensity_window=(-125, 275)))
    ct_volume = np.asarray(nib.load(str(root / "SABSCT" / "processed" / "image_1.nii.gz")).dataobj)
    np.testing.assert_allclose(ct.slices[0].image[0], ((ct_volume[:, :, 0] + 125) / 400).T, atol=1e-6)


def test_slaug_cardiac_domains_and_a_helpful_error(tmp_path):
    root = write_slaug_cardiac(tmp_path / "cardiac")
    dataset = prepare_dataset(config(tmp_path, adapter="slaug", root=root, domain="LGE"))
    by_split = {s: sorted({dataset.ids[i].rsplit("_", 1)[0] for i in dataset.indices(s)}) for s in ("train", "test")}
    assert by_split == {"train": ["LGE_6", "LGE_7"], "test": ["LGE_1"]}
    with pytest.raises(DataError, match="no image_<id>.nii.gz files in CHAOST2/processed/"):
        load_raw(config(tmp_path, adapter="slaug", root=root, domain="CHAOST2"))
    with pytest.raises(ValueError, match="data.domain"):
        data_config(adapter="slaug", root=root)


def test_fcbformer_split_matches_the_authors_counts_and_the_folder_adapter_uses_it(tmp_path):
    for n, expected in ((1000, (800, 100, 100)), (612, (490, 61, 61))):
        labels = fcbformer_split(n)
        assert (labels.count("train"), labels.count("val"), labels.count("test")) == expected
    from sklearn.model_selection import train_test_split

    _, test = train_test_split(np.arange(1000), test_size=100, random_state=42)
    assert sorted(i for i, label in enumerate(fcbformer_split(1000)) if label == "test") == sorted(test.tolist())
    root = write_cvc(tmp_path / "CVC-ClinicDB")
    cfg = config(tmp_path, adapter="folder", root=root, image_dir="Original", mask_dir="Ground Truth",
                 split_rule="fcbformer", class_names=("background", "polyps"))
    dataset = prepare_dataset(cfg)
    by_name = sorted(dataset.ids, key=lambda i: f"{i}.tif")  # the authors sort the file names
    assert [dataset.ids[i] for i in dataset.indices("test")] == [by_name[i] for i, label in
                                                                  enumerate(fcbformer_split(12)) if label == "test"]
    assert dataset.image_shape[0] == 3


def test_resize_orders_follow_scipy_zoom_and_the_default_is_unchanged():
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 1, (1, 50, 40)).astype(np.float32)
    mask = rng.integers(0, 3, (50, 40)).astype(np.uint8)
    cubic = resize_image(image, 32, "cubic")
    np.testing.assert_allclose(cubic[0], np.clip(ndimage.zoom(image[0], (32 / 50, 32 / 40), order=3), 0, 1), atol=1e-6)
    np.testing.assert_array_equal(resize_mask(mask, 32, 3, "nearest"), ndimage.zoom(mask, (32 / 50, 32 / 40), order=0))
    np.testing.assert_array_equal(resize_image(image, 32), resize_image(image, 32, "antialias"))
    assert resize_image(image, 32, "nearest").shape == (1, 32, 32)


def test_prompt_names_must_match_the_classes(tmp_path):
    with pytest.raises(ValueError, match="one prompt name per class"):
        data_config(adapter="folder", root=tmp_path, class_names=("background", "polyp"),
                   prompt_class_names=("background",))
    with pytest.raises(ValueError, match="low < high"):
        data_config(adapter="npz", root=tmp_path, intensity_window=(275, -125))
