"""Fine-tuning: what moves and what stays frozen, and `--resume` reproducing an uninterrupted run."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionControlNetPipeline
from safetensors.torch import load_file

from s2s2.pipeline.errors import S2S2Error
from s2s2.pipeline.generator.loading import generator_appearance, load_base, make_controlnet
from s2s2.pipeline.generator.paths import finetune_work_dir
from s2s2.pipeline.generator.tiny import BUILD_STATS
from s2s2.stages.finetune import learning_rate_schedule, run_finetune
from fixtures_toy import toy_dataset, toy_project_config

TINY = toy_project_config("unused").generator.tiny.model_dump()


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
    summary = json.loads((out / "s2s2_finetune.json").read_text())
    assert summary["steps"] == 1 and summary["stopped_by_max_seconds"] is False and summary["appearance"] is None
    assert _weights(out, "controlnet")["controlnet_cond_embedding.conv_in.weight"].shape[1] == 3  # the mask alone
    assert (finetune_work_dir(cfg) / "validation" / "final.png").is_file()


def test_unlocked_unet_is_trained_too(tmp_path):
    out = run_finetune(toy_project_config(str(tmp_path), finetune={"steps": 1}), toy_dataset())
    base = load_base(str(tmp_path / "tiny-base"))
    trained = _weights(out, "unet")
    assert any(not torch.equal(value, trained[name]) for name, value in base.unet.state_dict().items())


@pytest.mark.parametrize("appearance", [False, True])
def test_resume_continues_at_the_saved_step_like_an_uninterrupted_run(tmp_path, caplog, appearance):
    dataset = toy_dataset()
    remap = {"appearance": {"enabled": appearance, "probability": 0.5}}
    whole = toy_project_config(str(tmp_path / "whole"), finetune={"steps": 4, **remap})
    run_finetune(whole, dataset)
    split = toy_project_config(str(tmp_path / "split"), finetune={"steps": 2, **remap})
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


def test_a_run_stopped_by_max_seconds_is_saved_and_flagged(tmp_path, caplog):
    cfg = toy_project_config(str(tmp_path), finetune={"steps": 50, "max_seconds": 1e-6},
                             generator={"base_model": "tiny", "tiny": {**TINY, "vae_steps": 5, "vae_max_seconds": 1e-6}})
    with caplog.at_level("WARNING", logger="s2s2"):
        out = run_finetune(cfg, toy_dataset())
    base = json.loads((tmp_path / "tiny-base" / BUILD_STATS).read_text())
    assert base["stopped_by_max_seconds"] is True and base["vae_steps"] == 1 and base["vae_steps_planned"] == 5
    summary = json.loads((out / "s2s2_finetune.json").read_text())
    assert summary["stopped_by_max_seconds"] is True and summary["steps"] < summary["steps_planned"] == 50
    assert "vae_max_seconds" in caplog.text and "finetune.max_seconds" in caplog.text


def test_steps_alone_decide_a_run_that_no_cap_stops(tmp_path):
    out = run_finetune(toy_project_config(str(tmp_path), finetune={"steps": 2}), toy_dataset())
    base = json.loads((tmp_path / "tiny-base" / BUILD_STATS).read_text())
    summary = json.loads((out / "s2s2_finetune.json").read_text())
    assert base["stopped_by_max_seconds"] is False and base["vae_steps"] == base["vae_steps_planned"]
    assert summary["stopped_by_max_seconds"] is False and summary["steps"] == 2


def test_appearance_finetuning_adds_control_channels_and_records_its_settings(tmp_path):
    dataset = toy_dataset()
    cfg = toy_project_config(str(tmp_path), finetune={"steps": 2, "appearance": {"enabled": True, "probability": 1.0}})
    out = run_finetune(cfg, dataset)
    pipe = StableDiffusionControlNetPipeline.from_pretrained(out, safety_checker=None)
    assert pipe.controlnet.config.conditioning_channels == 3 + dataset.image_shape[0]  # palette + painted means
    assert generator_appearance(out) == cfg.finetune.appearance
    # diffusers hands a control tensor of this many channels to the ControlNet unchanged
    control = torch.rand(2, 4, 16, 16)
    assert torch.equal(pipe.control_image_processor.preprocess(control, height=16, width=16), control)


def test_a_checkpoint_with_another_control_width_is_refused(tmp_path):
    dataset = toy_dataset()
    out = run_finetune(toy_project_config(str(tmp_path / "plain"), finetune={"steps": 1}), dataset)
    cfg = toy_project_config(str(tmp_path / "remap"), finetune={"steps": 1, "appearance": {"enabled": True}},
                             generator={"base_model": "tiny", "tiny": TINY, "controlnet": str(out / "controlnet")})
    with pytest.raises(S2S2Error, match="appearance"):
        run_finetune(cfg, dataset)


def test_a_resumed_learning_rate_schedule_continues_the_uninterrupted_one():
    ft = toy_project_config("unused", finetune={"steps": 6, "lr_schedule": "cosine", "lr_warmup_steps": 2}).finetune
    weight = torch.nn.Parameter(torch.ones(2))

    def optimizer() -> torch.optim.Optimizer:
        return torch.optim.AdamW([weight], lr=ft.learning_rate)

    whole, rates = optimizer(), []
    schedule = learning_rate_schedule(whole, ft)
    for step in range(6):
        rates.append(whole.param_groups[0]["lr"])
        whole.step(), schedule.step()
        if step == 2:
            saved = copy.deepcopy(whole.state_dict())
    resumed = optimizer()
    resumed.load_state_dict(saved)  # as a checkpoint at step 3 holds it
    schedule = learning_rate_schedule(resumed, ft, start_step=3)
    replayed = []
    for _ in range(3):
        replayed.append(resumed.param_groups[0]["lr"])
        resumed.step(), schedule.step()
    assert rates[0] == 0 and max(rates) == ft.learning_rate and rates[-1] < ft.learning_rate  # warmup, then decay
    assert replayed == rates[3:]


def test_max_grad_norm_clips_the_fine_tune_gradients(tmp_path):
    """As diffusers' train_controlnet.py: the gradient norm is clipped before each step. A bound no gradient
    reaches leaves the run unchanged; a tight one changes the weights."""
    dataset = toy_dataset()
    trained = {}
    for name, bound in (("plain", None), ("loose", 1e9), ("tight", 1e-9)):
        cfg = toy_project_config(str(tmp_path / name), finetune={"steps": 2, "max_grad_norm": bound})
        trained[name] = _weights(run_finetune(cfg, dataset), "controlnet")
    assert all(torch.equal(trained["plain"][k], trained["loose"][k]) for k in trained["plain"])
    assert not all(torch.equal(trained["plain"][k], trained["tight"][k]) for k in trained["plain"])
