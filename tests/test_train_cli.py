"""`s2s2 train | evaluate | report` end to end through the console script on the default data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

S2S2 = [sys.executable, "-c", "from s2s2.cli import main; main()"]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*S2S2, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_train_evaluate_report_and_a_clear_error(tmp_path):
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({
        "run_dir": str(tmp_path / "run"),
        "data": {"cache_dir": str(tmp_path / "cache")},
        "store": {"path": str(tmp_path / "missing.zarr")},
        "train": {"steps": 3, "batch_size": 4, "val_every": 3},
        "evaluate": {"out_of_domain": {}},
    }))
    missing = cli("train", "-c", str(config), "--name", "s2s2_run", cwd=tmp_path)
    assert missing.returncode == 2, missing.stderr[-2000:]
    assert "missing.zarr: no stack store here" in missing.stderr and "Traceback" not in missing.stderr

    trained = cli("train", "-c", str(config), "--name", "base", "--baseline", "--model", "transunet", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-2000:]
    folder = tmp_path / "run" / "train" / "base"
    resolved = yaml.safe_load((folder / "config.yaml").read_text())
    assert resolved["model"]["name"] == "transunet" and resolved["train"]["stack"] is False

    again = cli("train", "-c", str(config), "--name", "base", "--baseline", cwd=tmp_path)
    assert again.returncode == 2 and "already holds a run" in again.stderr and "--overwrite" in again.stderr
    assert "Traceback" not in again.stderr and (folder / "model.safetensors").is_file()

    evaluated = cli("evaluate", "--run", str(folder), cwd=tmp_path)  # config from the run folder
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert "base in_domain: Dice" in evaluated.stdout
    assert json.loads((folder / "metrics.json").read_text())["model"] == "transunet"

    wrong = cli("evaluate", "-c", str(config), "--name", "base", cwd=tmp_path)  # config says unet
    assert wrong.returncode == 2 and "made for another model" in wrong.stderr

    reported = cli("report", "-c", str(config), cwd=tmp_path)
    assert reported.returncode == 0, reported.stderr[-2000:]
    assert "| base | transunet | baseline | 0 | 3 |" in reported.stdout
    assert (tmp_path / "run" / "results.json").is_file()
