"""A user's own data with library defaults only: a Kvasir-layout `folder` dataset goes through
prepare -> finetune -> generate -> train -> evaluate -> report via the console script.

Only sizes are set (a tiny generator, a few steps); no field of the embedded brain-MRI demo is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def write_kvasir_layout(root: Path, n: int = 10) -> Path:
    """`images/*.jpg` (RGB, sizes vary) and `masks/*.png` (0/255): a reddish polyp on pink mucosa."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        height, width = 40 + 4 * (i % 3), 48
        yy, xx = np.mgrid[:height, :width]
        cy, cx, r = rng.uniform(0.35, 0.65) * height, rng.uniform(0.35, 0.65) * width, rng.uniform(6, 11)
        polyp = np.hypot(yy - cy, xx - cx) < r
        image = np.empty((height, width, 3), np.float32)
        image[:] = (200, 120, 120)
        image[polyp] = (150, 40, 50)
        image += rng.normal(0, 8, image.shape)
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / "images" / f"cju{i:04d}.jpg", quality=95)
        Image.fromarray((polyp * 255).astype(np.uint8)).save(root / "masks" / f"cju{i:04d}.png")
    return root


def s2s2(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "s2s2.cli", *args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, f"s2s2 {' '.join(args)}:\n{result.stderr[-3000:]}"
    return result


def test_kvasir_layout_goes_through_every_stage_with_library_defaults(tmp_path):
    data = write_kvasir_layout(tmp_path / "Kvasir-SEG")
    config = tmp_path / "polyp.yaml"
    config.write_text(yaml.safe_dump({
        "run_dir": str(tmp_path / "run"),
        "data": {"adapter": "folder", "root": str(data), "size": 32, "cache_dir": str(tmp_path / "cache")},
        "store": {"k": 2, "shard_size": 4},
        "generator": {"base_model": "tiny", "tiny": {
            "vae_channels": [8, 16], "unet_channels": [16, 32], "unet_attention": [False, True],
            "norm_num_groups": 8, "text_width": 16, "text_layers": 1, "max_prompt_tokens": 48, "vae_steps": 2,
            "vae_max_seconds": None}},
        "finetune": {"steps": 2, "batch_size": 2, "unlock_unet": True, "validate_every": 100,
                     "checkpoint_every": 100},
        "generate": {"steps": 2, "workers": 1, "device": "cpu"},
        "train": {"steps": 2, "batch_size": 2, "val_every": 2, "checkpoint_every": 2},
    }))
    cfg = ["--config", str(config)]

    prepared = s2s2("data", "prepare", *cfg, cwd=tmp_path)
    assert "background" in prepared.stdout and "foreground" in prepared.stdout
    s2s2("finetune", *cfg, cwd=tmp_path)
    assert (tmp_path / "run" / "generator" / "model_index.json").is_file()
    s2s2("generate", *cfg, cwd=tmp_path)
    assert (tmp_path / "run" / "stack.zarr").is_dir()  # the store follows run_dir

    s2s2("train", *cfg, "--name", "polyp_s2s2", "--stack", cwd=tmp_path)
    folder = tmp_path / "run" / "train" / "polyp_s2s2"
    resolved = yaml.safe_load((folder / "config.yaml").read_text())
    assert resolved["evaluate"]["eval_classes"] is None and resolved["evaluate"]["out_of_domain"] == {}
    assert resolved["data"]["adapter"] == "folder" and resolved["store"]["path"] == f"{tmp_path}/run/stack.zarr"

    evaluated = s2s2("evaluate", "--run", str(folder), cwd=tmp_path)
    assert "polyp_s2s2 in_domain: Dice" in evaluated.stdout
    metrics = json.loads((folder / "metrics.json").read_text())
    assert list(metrics["test_sets"]) == ["in_domain"]
    assert list(metrics["test_sets"]["in_domain"]["dice"]) == ["foreground"]
    assert metrics["test_sets"]["in_domain"]["n_cases"] >= 1

    reported = s2s2("report", *cfg, cwd=tmp_path)
    assert "| polyp_s2s2 | unet | s2s2 |" in reported.stdout and "foreground" in reported.stdout
    assert (tmp_path / "run" / "results.md").is_file()
