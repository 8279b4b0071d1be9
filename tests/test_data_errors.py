"""Bad input through the real CLI entry point: one clear message, exit status 2, nothing left in the cache."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from fixtures_data import write_folder_dataset, write_nnunet_nifti, write_npz_dataset

from s2s2.cli import main


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """Run `s2s2 ARGS` in-process through `main()`; return (exit status, stderr)."""
    monkeypatch.setattr(sys, "argv", ["s2s2", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code, capsys.readouterr().err


def prepare_args(tmp_path: Path, adapter: str, root: Path, *extra: str) -> list[str]:
    return ["data", "prepare", "--adapter", adapter, "--root", str(root), "--size", "16",
            "--set", f"data.cache_dir={tmp_path / 'cache'}", *extra]


def assert_nothing_cached(tmp_path: Path) -> None:
    prepared = tmp_path / "cache" / "prepared"
    assert not prepared.exists() or not any(prepared.iterdir()), list(prepared.iterdir())


def _missing_folder(tmp_path):
    return "folder", tmp_path / "nowhere", ["does not exist", "nowhere"]


def _image_without_mask(tmp_path):
    root = write_folder_dataset(tmp_path / "d")
    (root / "masks" / "img2.png").unlink()
    return "folder", root, ["1 image(s) have no mask", "img2.png", "add the missing masks"]


def _mask_without_image(tmp_path):
    root = write_folder_dataset(tmp_path / "d")
    (root / "images" / "img4.png").unlink()
    return "folder", root, ["1 mask(s) have no image", "img4.png"]


def _value_outside_classes(tmp_path):
    root = write_folder_dataset(tmp_path / "d")
    from PIL import Image

    for path in (root / "masks").iterdir():  # multi-class masks hold class ids, here 0/1 ...
        Image.fromarray((np.asarray(Image.open(path)) > 0).astype(np.uint8)).save(path)
    Image.fromarray(np.full((24, 20), 7, np.uint8)).save(root / "masks" / "img1.png")  # ... but one holds 7
    return "folder", root, ["img1.png", "label value(s) [7] outside the declared classes 0..2",
                            "data.class_names"], "--set", "data.class_names=[background,polyp,tool]"


def _shape_mismatch(tmp_path):
    root = write_folder_dataset(tmp_path / "d")
    from PIL import Image

    Image.fromarray(np.zeros((30, 20), np.uint8)).save(root / "masks" / "img0.png")
    return "folder", root, ["img0.png", "has shape (30, 20)", "(24, 20)", "same size"]


def _unreadable_image(tmp_path):
    root = write_folder_dataset(tmp_path / "d")
    (root / "images" / "img5.png").write_text("this is not a picture")
    return "folder", root, ["img5.png", "is not a readable image"]


def _duplicate_stems(tmp_path):
    root = write_folder_dataset(tmp_path / "d")
    from PIL import Image

    Image.open(root / "images" / "img0.png").save(root / "images" / "img0.jpg")
    return "folder", root, ["two files share the name stem 'img0'", "img0.jpg", "img0.png"]


def _empty_dataset(tmp_path):
    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    return "folder", root, ["is empty", "no images found"]


def _nan_in_volume(tmp_path):
    root = write_nnunet_nifti(tmp_path / "Dataset003_Nan")
    path = root / "imagesTr" / "case001_0000.nii.gz"
    volume = nib.load(path)
    data = np.asarray(volume.dataobj, dtype=np.float32).copy()
    data[2, 3, 4] = np.nan
    data[5, 5, 5] = np.inf
    nib.save(nib.Nifti1Image(data, volume.affine), path)
    return "nnunet", root, ["case001_0000.nii.gz", "holds 2 NaN/Inf values"]


def _mask_3d_beside_2d_image(tmp_path):
    root = write_npz_dataset(tmp_path / "d", cases=1, slices=2)
    path = root / "case0000_slice001.npz"
    np.savez(path, image=np.zeros((24, 20), np.float32), label=np.zeros((24, 20, 5), np.uint8))
    return "npz", root, ["case0000_slice001.npz", "3-D label (24, 20, 5)", "2-D label"]


def _malformed_json(tmp_path):
    root = write_nnunet_nifti(tmp_path / "Dataset004_Bad", cases=1)
    (root / "dataset.json").write_text('{"labels": {"background": 0, "organ": 1,}')
    return "nnunet", root, ["dataset.json", "malformed dataset.json: not valid JSON", "nnU-Net v2 format"]


def _json_label_gap(tmp_path):
    root = write_nnunet_nifti(tmp_path / "Dataset005_Gap", cases=1)
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "organ": 2}
    (root / "dataset.json").write_text(json.dumps(meta))
    return "nnunet", root, ["malformed dataset.json", "ids must be 0..1 without gaps, got [0, 2]"]


BAD_INPUTS = [_missing_folder, _image_without_mask, _mask_without_image, _value_outside_classes, _shape_mismatch,
              _unreadable_image, _duplicate_stems, _empty_dataset, _nan_in_volume, _mask_3d_beside_2d_image,
              _malformed_json, _json_label_gap]


@pytest.mark.parametrize("make", BAD_INPUTS, ids=[f.__name__.strip("_") for f in BAD_INPUTS])
def test_bad_input_exits_2_with_one_message(make, tmp_path, monkeypatch, capsys) -> None:
    adapter, root, expected, *extra = make(tmp_path)
    status, err = run_cli(monkeypatch, capsys, *prepare_args(tmp_path, adapter, root, *extra))
    assert status == 2
    assert err.startswith("error: ") and "Traceback" not in err
    for fragment in expected:
        assert fragment in err, (fragment, err)
    assert_nothing_cached(tmp_path)


def test_bad_config_value_exits_2(tmp_path, monkeypatch, capsys) -> None:
    status, err = run_cli(monkeypatch, capsys, "data", "prepare", "--size", "8",
                          "--set", f"data.cache_dir={tmp_path / 'cache'}")
    assert status == 2 and "data.size = 8" in err and "between 16 and 1024" in err
    status, err = run_cli(monkeypatch, capsys, "data", "prepare", "--adapter", "folder")
    assert status == 2 and "set data.root" in err
    assert_nothing_cached(tmp_path)


def test_cli_process_exit_status(tmp_path) -> None:
    """A real `s2s2` process (`python -m s2s2.cli`, what the console script runs): status 2, no traceback."""
    result = subprocess.run([sys.executable, "-m", "s2s2.cli", *prepare_args(tmp_path, "folder", tmp_path / "absent")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "absent: dataset folder does not exist" in result.stderr and "Traceback" not in result.stderr
