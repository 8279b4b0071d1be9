"""Fine-tuning: what moves and what stays frozen, and `--resume` reproducing an uninterrupted run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from s2s2.pipeline.errors import S2S2Error
from s2s2.pipeline.generator.loading import load_base, make_controlnet
from s2s2.pipeline.generator.paths import finetune_work_dir
from s2s2.pipeline.generator.toy import toy_dataset, toy_project_config
from s2s2.stages.finetune import run_finetune


def _weights(folder: Path, part: str) -> dict[str, torch.Tensor]:
    return load_file(folder / part / "diffusion_pytorch_model.safetensors")


def _losses(cfg) -> list[float]:
    lines = (finetune_work_dir(cfg) / "losses.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


def test_one_step_moves_the_controlnet_and_leaves_a_locked_unet(tmp_path):
    cfg = toy_project_config(str(tmp_path), finetune={"steps": 1, "unlock_unet": False})
    dataset = toy_dataset()
    out = run_finetune(cfg, dataset)
    base = load_base(str(tmp_path / "tiny-base"))
    initial = make_controlnet(base.unet, base.vae, None).state_dict()
    trained = _weights(out, "controlnet")
    changed = [name for name, value in initial.items() if not torch.equal(value, trained[name])]
    assert changed and any("zero_conv" in name or "controlnet_down_blocks" in name for name in changed)
    for name, value in base.unet.state_dict().items():
        assert torch.equal(value, _weights(out, "unet")[name]), name
    assert json.loads((out / "s2s2_finetune.json").read_text())["steps"] == 1
    assert (finetune_work_dir(cfg) / "validation" / "final.png").is_file()


def test_unlocked_unet_is_trained_too(tmp_path):
    out = run_finetune(toy_project_config(str(tmp_path), finetune={"steps": 1}), toy_dataset())
    base = load_base(str(tmp_path / "tiny-base"))
    trained = _weights(out, "unet")
    assert any(not torch.equal(value, trained[name]) for name, value in base.unet.state_dict().items())


def test_resume_continues_at_the_saved_step_like_an_uninterrupted_run(tmp_path, caplog):
    dataset = toy_dataset()
    whole = toy_project_config(str(tmp_path / "whole"), finetune={"steps": 4})
    run_finetune(whole, dataset)
    split = toy_project_config(str(tmp_path / "split"), finetune={"steps": 2})
    run_finetune(split, dataset)  # "interrupted" after step 2 (its checkpoint holds step 2)
    state = json.loads((finetune_work_dir(split) / "checkpoint" / "state.json").read_text())
    assert state == {"step": 2}
    resumed = split.model_copy(update={"finetune": split.finetune.model_copy(update={"steps": 4})})
    caplog.clear()
    with caplog.at_level("INFO", logger="s2s2"):
        out = run_finetune(resumed, dataset, resume=True)
    assert "steps 2->4" in caplog.text  # it trained steps 3 and 4 only
    assert json.loads((out / "s2s2_finetune.json").read_text())["steps"] == 4
    assert _losses(resumed) == _losses(whole) and len(_losses(whole)) == 4
    for part in ("controlnet", "unet"):
        expected = _weights(Path(whole.run_dir) / "generator", part)
        for name, value in _weights(out, part).items():
            assert torch.equal(value, expected[name]), (part, name)


def test_resume_without_checkpoint_and_existing_output(tmp_path, caplog):
    cfg = toy_project_config(str(tmp_path), finetune={"steps": 1})
    with pytest.raises(S2S2Error, match="no checkpoint"):
        run_finetune(cfg, toy_dataset(), resume=True)
    out = run_finetune(cfg, toy_dataset())
    stamp = (out / "model_index.json").stat().st_mtime_ns
    with caplog.at_level("INFO", logger="s2s2"):
        assert run_finetune(cfg, toy_dataset()) == out  # an existing generator is kept
    assert "skipping" in caplog.text and (out / "model_index.json").stat().st_mtime_ns == stamp
