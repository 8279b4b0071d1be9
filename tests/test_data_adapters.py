"""Every file adapter on small datasets written here: shapes, classes, spacing, splits, cache, fingerprint."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from fixtures_data import write_folder_dataset, write_nnunet_nifti, write_nnunet_png, write_npz_dataset
from PIL import Image

from s2s2.pipeline.config.base import load_config
from s2s2.pipeline.config.data import DATA_MODELS, DataConfig, data_config
from s2s2.pipeline.config.project import ProjectConfig
from s2s2.pipeline.data.adapters import ADAPTERS
from s2s2.pipeline.data.prepare import prepare_dataset, prepared_folder
from s2s2.pipeline.errors import ConfigError, DataError


def _cfg(tmp_path, **fields) -> DataConfig:
    return data_config(cache_dir=tmp_path / "cache", **fields)


def _split_of(dataset) -> dict[int, str]:
    return {i: name for name in ("train", "val", "test") for i in dataset.indices(name)}


def test_folder_binary_masks_are_thresholded(tmp_path) -> None:
    root = write_folder_dataset(tmp_path / "kvasir")
    dataset = prepare_dataset(_cfg(tmp_path, adapter="folder", root=root, size=32))
    assert dataset.images.shape == (6, 1, 32, 32) and dataset.masks.shape == (6, 32, 32)
    assert dataset.class_names == ("background", "foreground")
    assert set(np.unique(dataset.masks)) == {0, 1}
    assert dataset.ids == [f"img{i}" for i in range(6)]
    assert 0.0 <= dataset.images.min() and dataset.images.max() <= 1.0
    # the rectangle is bright in the image exactly where the mask says foreground
    assert dataset.images[:, 0][dataset.masks == 1].mean() > 0.4 > dataset.images[:, 0][dataset.masks == 0].mean()
    sizes = {name: len(dataset.indices(name)) for name in ("train", "val", "test")}
    assert sizes == {"train": 4, "val": 1, "test": 1}
    # 24x20 padded to 24x24, then shrunk to 32: 24/32 of an original pixel (no spacing known: unit px)
    assert np.allclose(dataset.spacings, 24 / 32) and dataset.spacing_unit == "px"


def test_folder_palette_masks_keep_class_ids_and_stray_files_are_ignored(tmp_path) -> None:
    root = write_folder_dataset(tmp_path / "voc")
    for path in (root / "masks").iterdir():  # VOC style: class ids as palette indices
        ids = (np.asarray(Image.open(path)) > 0).astype(np.uint8) * 2
        palette_mask = Image.fromarray(ids, mode="L").convert("P")
        palette_mask.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * 759)
        palette_mask.save(path)
    (root / "images" / "README.txt").write_text("not a picture, not a case")
    dataset = prepare_dataset(_cfg(tmp_path, adapter="folder", root=root, size=32,
                                   class_names=("background", "polyp", "tool")))
    assert len(dataset) == 6 and set(np.unique(dataset.masks)) == {0, 2}


def test_folder_colour_images_keep_three_channels(tmp_path) -> None:
    root = write_folder_dataset(tmp_path / "cvc", n=4, colour=True)
    dataset = prepare_dataset(_cfg(tmp_path, adapter="folder", root=root, size=32))
    assert dataset.images.shape == (4, 3, 32, 32)
    # green was written at half the red value
    assert dataset.images[:, 1].mean() < 0.6 * dataset.images[:, 0].mean()


def test_nnunet_nifti_volumes_are_sliced_with_spacing(tmp_path) -> None:
    root = write_nnunet_nifti(tmp_path / "Dataset001_Toy")
    cfg = _cfg(tmp_path, adapter="nnunet", root=root, size=32, min_foreground_fraction=0.05)
    dataset = prepare_dataset(cfg)
    assert dataset.class_names == ("background", "organ", "lesion")
    assert dataset.modality == "CT image"
    # label boxes cover slices 1..8 of 10 along the axial axis
    assert len(dataset) == 3 * 8
    assert set(np.unique(dataset.masks)) == {0, 1, 2}
    # (rows, cols) = (y, x) spacing (0.9, 0.8) mm on an 18x16 slice padded to 18x18, then 32 px
    assert np.allclose(dataset.spacings[0], (0.9 * 18 / 32, 0.8 * 18 / 32))
    assert dataset.images[:, 0][dataset.masks == 2].mean() > dataset.images[:, 0][dataset.masks == 1].mean() \
        > dataset.images[:, 0][dataset.masks == 0].mean()
    # three cases: whole cases go to one split each
    split = _split_of(dataset)
    for case in ("case000", "case001", "case002"):
        assert len({split[i] for i, sid in enumerate(dataset.ids) if sid.startswith(case)}) == 1
    coronal = prepare_dataset(cfg.model_copy(update={"axis": 1}))
    assert len(coronal) == 3 * 12 and np.allclose(coronal.spacings[0], (2.5 * 16 / 32, 0.8 * 16 / 32))
    # each slice knows its volume, its position in it and the distance to the next slice (volume metrics)
    assert dataset.spacing_unit == "mm" and dataset.perturbations == {}
    assert dataset.cases[:8] == ["case000"] * 8 and list(dataset.positions[:8]) == list(range(1, 9))
    assert np.allclose(dataset.thickness, 2.5) and np.allclose(coronal.thickness, 0.9)
    assert dataset.is_volume_slice(0)


def test_nnunet_volumes_get_a_fixed_recorded_perturbation(tmp_path) -> None:
    root = write_nnunet_nifti(tmp_path / "Dataset001_Toy")
    cfg = _cfg(tmp_path, adapter="nnunet", root=root, size=32, perturb={"enabled": True, "max_rotate_deg": 20})
    plain = prepare_dataset(cfg.model_copy(update={"perturb": cfg.perturb.model_copy(update={"enabled": False})}))
    moved = prepare_dataset(cfg)
    assert sorted(moved.perturbations) == ["case000", "case001", "case002"]  # one draw per volume
    assert len({json.dumps(m) for m in moved.perturbations.values()}) == 3
    assert all(abs(a) <= 20 for m in moved.perturbations.values() for a in m["rotate_deg"])
    assert set(np.unique(moved.masks)) <= {0, 1, 2}  # labels resampled by nearest neighbour stay labels
    assert (moved.masks == 2).sum() > 0 and moved.fingerprint() != plain.fingerprint()
    again = prepare_dataset(cfg.model_copy(update={"cache_dir": tmp_path / "other"}))
    assert again.fingerprint() == moved.fingerprint()  # fixed: the same draw in every run
    provenance = json.loads((prepared_folder(cfg) / "provenance.json").read_text())
    assert provenance["perturbations"] == moved.perturbations
    with pytest.raises(DataError, match="moves 3-D volumes"):
        prepare_dataset(_cfg(tmp_path, adapter="nnunet", root=write_nnunet_png(tmp_path / "png"),
                             perturb={"enabled": True}))


def test_nnunet_png_cases(tmp_path) -> None:
    root = write_nnunet_png(tmp_path / "Dataset002_Png")
    dataset = prepare_dataset(_cfg(tmp_path, adapter="nnunet", root=root, size=32))
    assert len(dataset) == 5 and dataset.images.shape[1] == 1
    assert dataset.spacing_unit == "px" and not dataset.is_volume_slice(0)  # PNG files carry no spacing
    assert dataset.class_names == ("background", "polyp", "tool")
    assert set(np.unique(dataset.masks)) == {0, 1, 2}
    assert dataset.prompt(0) == "A endoscopy image slice showing background, polyp, tool"


def test_npz_slices_grouped_by_case(tmp_path) -> None:
    root = write_npz_dataset(tmp_path / "synapse")
    dataset = prepare_dataset(_cfg(tmp_path, adapter="npz", root=root, size=32))
    assert len(dataset) == 12 and dataset.images.shape == (12, 1, 32, 32)
    split = _split_of(dataset)
    by_case: dict[str, set[str]] = {}
    for i, sid in enumerate(dataset.ids):
        by_case.setdefault(sid.split("_slice")[0], set()).add(split[i])
    assert set(by_case) == {"case0000", "case0001", "case0002"}
    assert all(len(names) == 1 for names in by_case.values())
    assert sorted(next(iter(n)) for n in by_case.values()) == ["test", "train", "val"]


def test_split_is_deterministic_and_seeded(tmp_path) -> None:
    root = write_npz_dataset(tmp_path / "synapse", cases=10, slices=1)
    first = prepare_dataset(_cfg(tmp_path, adapter="npz", root=root, size=16))
    again = prepare_dataset(_cfg(tmp_path / "other", adapter="npz", root=root, size=16))
    assert first.splits == again.splits
    assert first.fingerprint() == again.fingerprint()
    seeds = {json.dumps(prepare_dataset(_cfg(tmp_path, adapter="npz", root=root, size=16, seed=s)).splits)
             for s in range(4)}
    assert len(seeds) > 1


def test_cache_is_reused_and_split_file_honoured(tmp_path) -> None:
    root = write_folder_dataset(tmp_path / "kvasir")
    cfg = _cfg(tmp_path, adapter="folder", root=root, size=32)
    dataset = prepare_dataset(cfg)
    folder = prepared_folder(cfg)
    assert sorted(p.name for p in folder.iterdir()) == ["arrays.npz", "meta.json", "provenance.json", "split.json"]
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no temporaries left
    stamp = os.stat(folder / "arrays.npz").st_mtime_ns
    split_ids = json.loads((folder / "split.json").read_text())
    assert split_ids["test"] == [dataset.ids[i] for i in dataset.indices("test")]
    moved = split_ids["train"].pop()
    split_ids["test"].append(moved)
    (folder / "split.json").write_text(json.dumps(split_ids))
    reloaded = prepare_dataset(cfg)
    assert os.stat(folder / "arrays.npz").st_mtime_ns == stamp  # not rebuilt
    assert reloaded.ids.index(moved) in reloaded.indices("test")
    assert reloaded.ids.index(moved) not in reloaded.indices("train")


def test_fingerprint_stability(tmp_path) -> None:
    root = write_folder_dataset(tmp_path / "kvasir")
    copy = write_folder_dataset(tmp_path / "copy")
    first = prepare_dataset(_cfg(tmp_path, adapter="folder", root=root, size=32))
    same = prepare_dataset(_cfg(tmp_path, adapter="folder", root=copy, size=32))
    assert first.fingerprint() == same.fingerprint()  # same pixels elsewhere on disk: same hash
    picture = np.asarray(Image.open(root / "images" / "img3.png")).copy()
    picture[5, 5] = 255 - picture[5, 5]
    Image.fromarray(picture).save(root / "images" / "img3.png")
    changed = prepare_dataset(_cfg(tmp_path, adapter="folder", root=root, size=32))
    assert changed.fingerprint() != first.fingerprint()
    assert len(list((tmp_path / "cache" / "prepared").iterdir())) == 3  # edited source: a new cache entry
    tweaked = first.images.copy()
    tweaked[0, 0, 0, 0] += 1e-3
    assert type(first)(**{**first.__dict__, "images": tweaked}).fingerprint() != first.fingerprint()


@pytest.mark.parametrize("field,value,message", [
    ("size", 8, "size must be between 16 and 1024"),
    ("class_names", ("background",), "needs the background and at least one class"),
    ("test_fraction", 0.95, "must leave cases for training"),
    ("prompt_template", "A {colour} image", "may only use {modality} and {classes}"),
    ("adapter", "dicom", "data.adapter must be one of icbm152, spm152, folder"),
])
def test_config_validation_messages(field, value, message) -> None:
    with pytest.raises(ValueError, match=message):
        data_config(**{field: value})


def test_a_field_of_another_adapter_is_refused_naming_the_adapter(tmp_path) -> None:
    with pytest.raises(ValueError, match="data.contrast is not a setting of adapter 'folder'.*spm152"):
        data_config(adapter="folder", root=tmp_path, contrast="PD")
    with pytest.raises(ConfigError, match="data.image_dir is not a setting of adapter 'icbm152'.*folder"):
        load_config(ProjectConfig, dotted=["data.image_dir=Original"])
    assert load_config(ProjectConfig, dotted=["data.adapter=spm152", "data.contrast=PD"]).data.contrast == "PD"
    assert type(data_config(adapter="folder", root=tmp_path)) is DATA_MODELS["folder"]


def test_every_config_model_has_an_adapter_and_back() -> None:
    assert set(ADAPTERS) == set(DATA_MODELS)


@pytest.mark.parametrize("fields,folder", [
    (dict(adapter="folder", root="/nonexistent/kvasir", image_dir="Original", mask_dir="Ground Truth",
          split_rule="fcbformer", size=352, channels=3, keep_aspect=False), "folder-63507badbed88ceb"),
    (dict(adapter="slaug", root="/nonexistent/abd", domain="SABSCT", size=192, intensity_window=(-125, 275)),
     "slaug-de3ed9930136e4a7"),
    (dict(adapter="nnunet", root="/nonexistent/nn", axis=0, perturb={"enabled": True, "seed": 3}),
     "nnunet-c26219798ee8cd60"),
    (dict(adapter="synapse", root="/nonexistent/syn", size=224, image_resize="cubic", mask_resize="nearest",
          keep_aspect=False), "synapse-13fe659a7ab2976a"),
])
def test_cache_folders_are_those_of_the_flat_config(fields, folder) -> None:
    """The names the single flat data config gave these settings: existing caches and stores stay valid."""
    assert prepared_folder(data_config(**fields)).name == folder
