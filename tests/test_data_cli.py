"""`s2s2 data prepare` and `s2s2 data show` on the default dataset and on a user folder."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from fixtures_data import write_folder_dataset
from PIL import Image

from s2s2.cli import main


def run_ok(monkeypatch, capsys, *args: str) -> str:
    """Run `s2s2 ARGS` through `main()`; it must succeed; return stdout."""
    monkeypatch.setattr(sys, "argv", ["s2s2", *args])
    main()
    return capsys.readouterr().out


def test_prepare_prints_summary_of_default(icbm152_dataset, repo_cache_dir, monkeypatch, capsys) -> None:
    out = run_ok(monkeypatch, capsys, "data", "prepare", "--set", f"data.cache_dir={repo_cache_dir}")
    n = {name: len(icbm152_dataset.indices(name)) for name in ("train", "val", "test")}
    assert f"samples     {len(icbm152_dataset)}: train {n['train']}, val {n['val']}, test {n['test']}" in out
    assert f"fingerprint {icbm152_dataset.fingerprint()}" in out
    assert "3 white matter:" in out and str(repo_cache_dir / "prepared" / "icbm152-") in out
    assert "Copyright (C) 1993-2009 Louis Collins" in out


def test_show_writes_grid_and_counts(icbm152_dataset, repo_cache_dir, tmp_path, monkeypatch, capsys) -> None:
    png = tmp_path / "show.png"
    out = run_ok(monkeypatch, capsys, "data", "show", "--split", "test", "--n", "4", "--out", str(png),
                 "--set", f"data.cache_dir={repo_cache_dir}")
    counts = np.bincount(icbm152_dataset.masks[icbm152_dataset.indices("test")].ravel(), minlength=4)
    assert f"2 {'grey matter':<16} {counts[2]:>9} px" in out and "showing 4" in out
    picture = np.asarray(Image.open(png).convert("RGB"))
    assert picture.shape[0] > 64 * 3 and picture.shape[1] > 8 * 64 * 3  # 4 pairs at scale 3
    assert (picture == [0, 128, 0]).all(axis=-1).sum() > 0  # the grey-matter legend swatch


def test_prepare_user_folder_with_size(tmp_path, monkeypatch, capsys) -> None:
    root = write_folder_dataset(tmp_path / "polyps")
    out = run_ok(monkeypatch, capsys, "data", "prepare", "--adapter", "folder", "--root", str(root), "--size", "32",
                 "--set", f"data.cache_dir={tmp_path / 'cache'}")
    assert "samples     6: train 4, val 1, test 1" in out and "image shape (1, 32, 32)" in out
    assert "1 foreground:" in out and "notice" not in out


def test_show_unknown_split_is_a_user_error(tmp_path, monkeypatch, capsys) -> None:
    root = write_folder_dataset(tmp_path / "polyps")
    monkeypatch.setattr(sys, "argv", ["s2s2", "data", "show", "--adapter", "folder", "--root", str(root),
                                      "--split", "holdout", "--out", str(tmp_path / "x.png"),
                                      "--set", f"data.cache_dir={tmp_path / 'cache'}"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2 and "no split 'holdout'" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
