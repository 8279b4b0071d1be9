"""`s2s2 evaluate --run DIR` reads and writes DIR wherever the run was trained, and evaluating some
test sets adds them to metrics.json instead of replacing it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import yaml
from typer.testing import CliRunner

from s2s2.cli import app
from s2s2.pipeline.config.project import ProjectConfig
from s2s2.stages.train.loop import run_train
from test_train_support import CLASSES, blob_dataset


def blob_project(folder: Path) -> ProjectConfig:
    """Blob slices as an npz dataset on disk, an intensity-inverted copy as an out-of-domain set."""
    ds = blob_dataset(n=24, size=32)
    for name, images in (("slices", ds.images), ("inverted", 1 - ds.images)):
        (folder / name).mkdir()
        for i in range(len(ds)):
            np.savez(folder / name / f"case{i:02d}_slice0.npz", image=images[i, 0], label=ds.masks[i])
    data = {"adapter": "npz", "size": 32, "class_names": list(CLASSES), "cache_dir": str(folder / "cache")}
    return ProjectConfig.model_validate({
        "run_dir": str(folder / "run"),
        "data": {**data, "root": str(folder / "slices")},
        "train": {"name": "base", "stack": False, "steps": 2, "batch_size": 4, "val_every": 2},
        "evaluate": {"out_of_domain": {"inverted": {**data, "root": str(folder / "inverted")}}},
    })


def evaluate(*args: str) -> None:
    result = CliRunner().invoke(app, ["evaluate", *args])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"


def test_evaluate_run_dir_is_the_folder_given_and_test_sets_merge(tmp_path):
    cfg = blob_project(tmp_path)
    trained = run_train(cfg)
    moved = tmp_path / "archive" / "base"
    shutil.copytree(trained, moved)  # its config.yaml still names run_dir tmp/run
    assert yaml.safe_load((moved / "config.yaml").read_text())["run_dir"] == str(tmp_path / "run")

    evaluate("--run", str(moved))
    assert not (trained / "metrics.json").exists()  # the original run is not touched
    metrics = json.loads((moved / "metrics.json").read_text())
    assert set(metrics["test_sets"]) == {"in_domain", "inverted"}
    assert Path(metrics["checkpoint"]) == moved / "model.safetensors"
    inverted = metrics["test_sets"]["inverted"]

    evaluate("--run", str(moved), "--test-set", "in_domain")
    again = json.loads((moved / "metrics.json").read_text())
    assert set(again["test_sets"]) == {"in_domain", "inverted"}  # the set not re-evaluated is kept
    assert again["test_sets"]["inverted"] == inverted
    assert again["test_sets"]["in_domain"] == metrics["test_sets"]["in_domain"]  # same weights, same numbers
