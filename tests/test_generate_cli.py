"""`s2s2 finetune` then `s2s2 generate` through the real CLI on a small npz dataset (subprocesses)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from s2s2.pipeline.config.base import dump_config
from s2s2.pipeline.config.data import data_config
from s2s2.store.stack_store import StackStore
from fixtures_toy import TOY_CLASSES, toy_dataset, toy_project_config

ROOT = Path(__file__).resolve().parents[1]


def _s2s2(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "s2s2.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_finetune_then_generate_from_one_config_file(tmp_path):
    toy = toy_dataset(n=12, size=16)
    data = tmp_path / "slices"
    data.mkdir()
    for i in range(len(toy)):
        np.savez(data / f"case{i:02d}_slice0.npz", image=toy.images[i, 0], label=toy.masks[i])
    cfg = toy_project_config(str(tmp_path / "run"), store={"split": "train"})
    cfg = cfg.model_copy(update={"data": data_config(
        adapter="npz", root=data, size=16, class_names=TOY_CLASSES, modality="toy image",
        cache_dir=str(tmp_path / "cache"))})
    config = tmp_path / "config.yaml"
    dump_config(cfg, config)

    finetune = _s2s2("finetune", "--config", str(config), "--steps", "2")
    assert finetune.returncode == 0, finetune.stderr[-3000:]
    assert (tmp_path / "run" / "generator" / "model_index.json").is_file()
    again = _s2s2("finetune", "--config", str(config))
    assert again.returncode == 0 and "skipping fine-tuning" in again.stderr

    generate = _s2s2("generate", "--config", str(config), "--k", "2")
    assert generate.returncode == 0, generate.stderr[-3000:]
    store = StackStore.open(cfg.store.path)
    assert store.k == 2 and store.done_ledger().all() and store.manifest.generator.sources[0].identity.steps == cfg.generate.steps
    stack = np.asarray(store._group["stack"][:])
    assert stack.shape[1:] == (2, 1, 16, 16) and stack.max() > 0

    bad = _s2s2("generate", "--config", str(config), "--k", "2", "--set", "generate.seed=7")
    assert bad.returncode == 2 and "another generator" in bad.stderr and "--overwrite" in bad.stderr
