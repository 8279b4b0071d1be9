"""Stage one is a function of its config: two builds (tiny base, fine-tune, stack) store the same bytes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from s2s2.pipeline.generator.paths import ensure_base
from s2s2.stages.finetune import run_finetune
from s2s2.stages.generate import run_generate
from fixtures_toy import toy_dataset, toy_project_config


def _files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def _build(run_dir: Path, base_first: bool) -> Path:
    """Tiny base + appearance-randomised fine-tune + stack, all from one config, in one run folder.

    `base_first` builds the tiny base in a call of its own and then disturbs the global RNGs, as a
    rerun of `s2s2 finetune --overwrite` next to an existing base would find them."""
    cfg = toy_project_config(str(run_dir), finetune={"steps": 3, "appearance": {"enabled": True, "probability": 0.7}},
                             generate={"scheduler": "unipc", "steps": 2, "guidance_scale": 1.0, "workers": 1,
                                       "device": "cpu", "appearance_probability": 0.8})
    dataset = toy_dataset()
    if base_first:
        ensure_base(cfg, dataset, cfg.finetune.split)
        torch.rand(123), np.random.rand(45)
    run_finetune(cfg, dataset)
    run_generate(cfg, dataset)
    return Path(cfg.store.path)


def test_two_builds_from_one_config_store_identical_stack_bytes(tmp_path):
    # The second build runs in this same process, after the first has used the global RNGs: nothing
    # may depend on them, on the clock or on which worker draws a shard.
    first, second = _build(tmp_path / "a", base_first=False), _build(tmp_path / "b", base_first=True)
    for part in ("unet", "controlnet", "vae"):
        weights = Path(part) / "diffusion_pytorch_model.safetensors"
        assert (tmp_path / "a" / "generator" / weights).read_bytes() == (tmp_path / "b" / "generator" / weights).read_bytes()
    stack_a, stack_b = _files(first / "stack"), _files(second / "stack")
    assert stack_a and stack_a == stack_b
