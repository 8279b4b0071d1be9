"""Every config in configs/paper stays loadable and runnable: on a tiny fake copy of its data in the
release's layout, `prepare`, a few S2S2 training steps (small model preset, a stand-in stack store)
and the evaluation (in-domain and out-of-domain) run end to end; `s2s2 paper list` works offline."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fixtures_paper import write_dataset
from s2s2.pipeline.config.base import load_config
from s2s2.pipeline.config.project import ProjectConfig
from s2s2.pipeline.data.prepare import prepare_dataset
from s2s2.stages.evaluate import run_evaluate
from s2s2.stages.paper import PAPER_DIR, SETTINGS, config_path, epoch_steps, setting_steps
from s2s2.stages.train import run_train
from test_train_support import filled_store

ROOT = Path(__file__).resolve().parents[1]


def test_every_paper_config_is_a_registered_setting_and_states_the_paper_numbers():
    assert sorted(p.stem for p in PAPER_DIR.glob("*.yaml")) == sorted(s.name for s in SETTINGS)
    for item in SETTINGS:
        text = config_path(item.name).read_text()
        comments = " ".join(line for line in text.splitlines() if line.lstrip().startswith("#"))
        for number in re.findall(r"\d+\.\d+", item.result):
            assert number in comments, (item.name, number)
        cfg = load_config(ProjectConfig, config_path(item.name))
        assert len(item.datasets) == 1 + len(cfg.evaluate.out_of_domain), item.name
        assert cfg.generator.base_model == "stabilityai/stable-diffusion-2-1-base" and cfg.store.k == 16
        assert (cfg.generate.scheduler, cfg.generate.steps, cfg.generate.guidance_scale) == ("ddim", 50, 9.0)


@pytest.mark.parametrize("name", [s.name for s in SETTINGS])
def test_paper_config_runs_the_setting_s2s2_paper_names(name):
    """Stages of L_enc (named in the config, not left to the model's default), loss weights, step counts
    and augmentation of every paper config are those of its setting in `s2s2 paper`."""
    item = next(s for s in SETTINGS if s.name == name)
    raw = yaml.safe_load(config_path(name).read_text())
    assert "sc_stages" in raw["model"], f"{name}: name model.sc_stages explicitly"
    cfg = load_config(ProjectConfig, config_path(name))
    recipe = item.recipe
    assert (cfg.model.name, tuple(cfg.model.sc_stages)) == (recipe.model, recipe.sc_stages)
    assert {key: getattr(cfg.train.loss, key) for key in recipe.loss} == recipe.loss
    assert {key: getattr(cfg.train.augment, key) for key in recipe.augment} == recipe.augment
    assert cfg.train.location_scale == recipe.location_scale
    expected = setting_steps(item, item.train_samples, cfg.finetune.batch_size, cfg.train.batch_size)
    assert {"finetune.steps": cfg.finetune.steps, "train.steps": cfg.train.steps} == expected


def small_overrides(item, tmp_path: Path) -> list[str]:
    """--set items that point the config at the fake data and shrink every size to a CPU test."""
    cfg = load_config(ProjectConfig, config_path(item.name))
    roots = [write_dataset(name, tmp_path / "data") for name in item.datasets]
    dotted = [f"run_dir={tmp_path / 'run'}", f"data.root={roots[0]}", "data.size=32",
              f"data.cache_dir={tmp_path / 'cache'}", f"store.path={tmp_path / 'stack.zarr'}",
              "model.preset=small", "model.pretrained=false", "train.steps=2", "train.batch_size=2",
              "train.num_workers=0", "train.val_every=2", "train.checkpoint_every=2", "evaluate.figure_cases=1"]
    for name, root in zip(cfg.evaluate.out_of_domain, roots[1:]):
        dotted += [f"evaluate.out_of_domain.{name}.root={root}", f"evaluate.out_of_domain.{name}.size=32"]
    return dotted


@pytest.mark.parametrize("name", [s.name for s in SETTINGS])
def test_paper_config_prepares_trains_and_evaluates_on_fake_data(name, tmp_path):
    item = next(s for s in SETTINGS if s.name == name)
    cfg = load_config(ProjectConfig, config_path(name), dotted=small_overrides(item, tmp_path))
    dataset = prepare_dataset(cfg.data)
    assert dataset.indices("train") and dataset.indices("test")
    assert dataset.prompt(dataset.indices("train")[0]).startswith(cfg.data.prompt_template.split("{")[0])
    filled_store(Path(cfg.store.path), dataset, k=2)  # a stand-in stack: real store, no generator
    folder = run_train(cfg, dataset=dataset)
    summary = json.loads((folder / "summary.json").read_text())
    assert (summary["method"], summary["steps"]) == ("s2s2", 2)
    results = run_evaluate(cfg)
    assert list(results["test_sets"]) == ["in_domain", *cfg.evaluate.out_of_domain]
    checkpoint = "last.safetensors" if cfg.evaluate.checkpoint == "last" else "model.safetensors"
    assert results["checkpoint"].endswith(checkpoint)
    for entry in results["test_sets"].values():
        assert entry["n_cases"] > 0 and list(entry["dice"]) == list(dataset.class_names[1:])


def test_cross_dataset_evaluation_reads_the_target_test_split_only(tmp_path):
    item = next(s for s in SETTINGS if s.name == "fcbformer_kvasir")
    cfg = load_config(ProjectConfig, config_path(item.name), dotted=small_overrides(item, tmp_path))
    from s2s2.stages.evaluate import test_datasets

    target, indices = test_datasets(cfg, ["cvc_clinicdb"])["cvc_clinicdb"]
    assert indices == target.indices("test") and len(indices) == 1  # 10 % of 12 images, as FCBFormer's split


def test_epoch_steps_follow_the_authors_loaders():
    assert epoch_steps(2211, 24, 150, drop_last=False) == 13950  # TransUNet Synapse: 93 iterations per epoch
    assert epoch_steps(800, 16, 200, drop_last=True) == 10000  # FCBFormer Kvasir
    assert epoch_steps(490, 16, 200, drop_last=True) == 6000  # FCBFormer CVC: the partial batch is dropped
    assert epoch_steps(2211, 16, 100, drop_last=False) == 13900  # ControlNet, 100 epochs


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "s2s2.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def test_paper_list_and_steps_through_the_cli(tmp_path):
    listed = cli("paper", "list")
    assert listed.returncode == 0, listed.stderr[-2000:]
    for item in SETTINGS:
        assert f"{item.name}: {item.title}" in listed.stdout and item.result in listed.stdout
    assert "data/SLAug/abdominal/" in listed.stdout and "test_vol_h5/case*.npy.h5" in listed.stdout

    root = write_dataset("LGE", tmp_path / "data")
    steps = cli("paper", "steps", "slaug_lge_to_bssfp", "--set", f"data.root={root}",
                "--set", f"data.cache_dir={tmp_path / 'cache'}", "--set", "data.size=32")
    assert steps.returncode == 0, steps.stderr[-2000:]
    # LGE scans 6 and 7 train: 2 volumes x 3 slices = 6 slices; ceil(6/16) x 100, ceil(6/32) x 1,100
    *described, options = steps.stdout.strip().splitlines()
    assert options.split() == ["--set", "finetune.steps=100", "--set", "train.steps=1100"]
    assert "L_enc on encoder stage(s) stage5" in described[1]
    assert "1.0 L_seg(original) + 0.1 L_seg(generated) + 0.1 L_enc + 0.0 L_dec" in described[2]
    assert "on 6 training slices" in described[-1] and "stack_photometric True" in described[3]

    missing = cli("paper", "steps", "transunet_synapse", "--set", f"data.root={tmp_path / 'nowhere'}")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr and "nowhere" in missing.stderr
    resolved = yaml.safe_load(config_path("transunet_acdc").read_text())
    assert resolved["data"]["prompt_class_names"][1] == " right ventricle"
