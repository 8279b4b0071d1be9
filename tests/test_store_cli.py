"""`s2s2 stack init` end to end: a real dataset folder, prepared by the data adapters, into a store."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import yaml

from s2s2.store.stack_store import StackStore
from test_store_support import REPO_DIR, python_env


def s2s2(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "s2s2.cli", *args], capture_output=True, text=True,
                          env=python_env(), cwd=REPO_DIR, timeout=120)


def write_config(tmp_path, **store) -> str:
    root = tmp_path / "slices"
    root.mkdir()
    rng = np.random.default_rng(0)
    for case in range(8):
        for s in range(2):
            label = np.zeros((16, 16), np.uint8)
            label[4 + case % 3:12, 3:10 + s] = 1
            image = np.clip(0.2 + 0.6 * label + rng.normal(0, 0.02, label.shape), 0, 1).astype(np.float32)
            np.savez(root / f"case{case}_slice{s}.npz", image=image, label=label)
    config = {"run_dir": str(tmp_path / "run"),
              "data": {"adapter": "npz", "root": str(root), "size": 16, "cache_dir": str(tmp_path / "cache")},
              "store": {"path": str(tmp_path / "run" / "stack.zarr"), **store}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_stack_init_then_inspect_and_mismatch_refusal(tmp_path):
    config = write_config(tmp_path, k=2, shard_size=3)
    result = s2s2("stack", "init", "--config", config, "--k", "3")
    assert result.returncode == 0, result.stderr
    store = StackStore.open(tmp_path / "run" / "stack.zarr")
    assert store.k == 3 and store.manifest.shard_size == 3 and store.manifest.split == "train"
    assert store.manifest.class_names == ("background", "foreground")
    assert store.pending_shards() == list(range(store.num_shards)) and store.n_samples >= 8
    assert np.isin(store.read_masks(range(store.n_samples)), [0, 1]).all()

    refused = s2s2("stack", "init", "--config", config, "--k", "4")
    assert refused.returncode == 2 and "k: store has 3, asked for 4" in refused.stderr
    assert "--overwrite" in refused.stderr
    replaced = s2s2("stack", "init", "--config", config, "--k", "4", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr

    shown = s2s2("stack", "inspect", "--config", config, "--json")
    assert shown.returncode == 0, shown.stderr
    summary = json.loads(shown.stdout)
    assert summary["k"] == 4 and summary["complete_fraction"] == 0.0 and summary["mask_fidelity"] is None


def test_inspect_of_a_missing_store_exits_2_with_the_fix(tmp_path):
    result = s2s2("stack", "inspect", str(tmp_path / "missing.zarr"))
    assert result.returncode == 2
    assert "no stack store there" in result.stderr and "s2s2 stack init" in result.stderr
