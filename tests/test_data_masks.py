"""Masks whose values cannot be what the user declared are refused; a split with a class at 0 pixels warns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from fixtures_data import write_folder_dataset
from PIL import Image

from s2s2.cli import run
from s2s2.pipeline.config.data import data_config
from s2s2.pipeline.data.prepare import empty_classes, prepare_dataset


def _label_id_masks(root: Path) -> Path:
    """A folder dataset whose masks hold label ids {0, 1, 2, 9} (a multi-class map), not 0/255."""
    root = write_folder_dataset(root)
    for i, path in enumerate(sorted((root / "masks").iterdir())):
        mask = (np.asarray(Image.open(path)) > 0).astype(np.uint8)
        mask[:2, :2], mask[-2:, -2:] = 2, 9 if i == 0 else 1
        Image.fromarray(mask).save(path)
    return root


def _prepare(tmp_path: Path, root: Path, *extra: str) -> int:
    return run(["data", "prepare", "--adapter", "folder", "--root", str(root), "--size", "16",
                "--set", f"data.cache_dir={tmp_path / 'cache'}", *extra])


def test_label_ids_with_two_declared_classes_are_refused_with_the_values_and_the_fix(tmp_path, capsys) -> None:
    """Before: thresholded at 127, every pixel became background, and `prepare` exited 0 and cached it."""
    root = _label_id_masks(tmp_path / "d")
    assert _prepare(tmp_path, root) == 2
    err = capsys.readouterr().err
    assert "img0.png: holds mask values [0, 1, 2, 9]" in err and "every pixel would be background" in err
    assert "data.class_names" in err and "data.binary_threshold explicitly" in err and "Traceback" not in err
    assert not (tmp_path / "cache" / "prepared").exists() or not any((tmp_path / "cache" / "prepared").iterdir())


def test_declared_classes_or_an_explicit_threshold_read_the_same_masks(tmp_path, capsys) -> None:
    root = _label_id_masks(tmp_path / "d")
    names = ",".join(f"c{i}" for i in range(10))
    assert _prepare(tmp_path, root, "--set", f"data.class_names=[{names}]") == 0
    assert _prepare(tmp_path, root, "--set", "data.binary_threshold=0") == 0  # the user says: 0/255-style masks
    explicit = prepare_dataset(data_config(adapter="folder", root=root, size=16, binary_threshold=0,
                                           cache_dir=tmp_path / "cache"))
    assert explicit.class_names == ("background", "foreground") and explicit.masks.max() == 1


def test_default_0_255_masks_still_threshold(tmp_path) -> None:
    root = write_folder_dataset(tmp_path / "d")
    dataset = prepare_dataset(data_config(adapter="folder", root=root, size=16, cache_dir=tmp_path / "cache"))
    assert set(np.unique(dataset.masks)) == {0, 1}


def test_a_class_at_0_pixels_in_a_split_warns(tmp_path, capsys) -> None:
    """Three classes declared, masks hold only 0/1: each split with samples names the empty class."""
    root = write_folder_dataset(tmp_path / "d")
    for path in (root / "masks").iterdir():
        Image.fromarray((np.asarray(Image.open(path)) > 0).astype(np.uint8)).save(path)
    cfg = data_config(adapter="folder", root=root, size=16, cache_dir=tmp_path / "cache",
                      class_names=("background", "polyp", "tool"))
    dataset = prepare_dataset(cfg)
    warnings = empty_classes(dataset)
    assert warnings and all("0 pixels of class(es) ['tool']" in w for w in warnings)
    assert {w.split("split ")[1].split(" ")[0] for w in warnings} == {s for s in ("train", "val", "test")
                                                                     if dataset.splits.get(s)}
    assert empty_classes(prepare_dataset(data_config(adapter="folder", root=root, size=16,
                                                     cache_dir=tmp_path / "cache"))) == []
