"""Fine-tune defaults follow the base: a tiny base brings the CPU recipe, an SD base the paper's; set fields win."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from s2s2.cli import run as cli
from s2s2.pipeline.config.base import load_config
from s2s2.pipeline.config.generator import TINY_FINETUNE_RECIPE, FinetuneConfig, recipe_summary
from s2s2.pipeline.config.project import ProjectConfig

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_own_data_config(base_model: str) -> dict:
    """The README's "Your own data" YAML (polyp.yaml), with the generator line's base swapped."""
    block = re.search(r"```yaml\n(# polyp\.yaml.*?)```", README.read_text(), re.S).group(1)
    tree = yaml.safe_load(block)
    tree["generator"] = {"base_model": base_model}
    return tree


def test_the_readme_own_data_config_with_a_tiny_base_runs_the_tiny_recipe(tmp_path):
    path = tmp_path / "polyp.yaml"
    path.write_text(yaml.safe_dump(readme_own_data_config("tiny")))
    cfg = load_config(ProjectConfig, path)
    assert {name: getattr(cfg.finetune, name) for name in TINY_FINETUNE_RECIPE} == TINY_FINETUNE_RECIPE
    assert "tiny-base recipe" in recipe_summary(cfg.finetune, "tiny") and "steps=800" in recipe_summary(cfg.finetune, "tiny")
    paper = load_config(ProjectConfig, path, overrides={"generator.base_model": "stabilityai/stable-diffusion-2-1-base"})
    defaults = FinetuneConfig()
    assert (paper.finetune.steps, paper.finetune.learning_rate, paper.finetune.batch_size, paper.finetune.unlock_unet) \
        == (20000, 1e-5, 16, False) == (defaults.steps, defaults.learning_rate, defaults.batch_size, defaults.unlock_unet)


def test_an_explicit_field_wins_over_the_bases_recipe(tmp_path):
    tree = readme_own_data_config("tiny")
    tree["finetune"] = {"learning_rate": 2e-4}
    path = tmp_path / "polyp.yaml"
    path.write_text(yaml.safe_dump(tree))
    cfg = load_config(ProjectConfig, path, overrides={"finetune.steps": 7})
    assert (cfg.finetune.steps, cfg.finetune.learning_rate, cfg.finetune.batch_size) == (7, 2e-4, 8)


def test_finetune_help_states_both_recipes(capsys):
    assert cli(["finetune", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "tiny base" in text and "800 steps" in text and "20,000 steps" in text and "wins" in text


def test_the_embedded_default_takes_its_fine_tune_recipe_from_the_tiny_base():
    """configs/default.yaml sets none of the recipe's fields: the recipe has one home, and the stack of
    `make generate` is built with exactly its values."""
    default = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"
    written = yaml.safe_load(default.read_text()).get("finetune") or {}
    assert not set(written) & set(TINY_FINETUNE_RECIPE)
    cfg = load_config(ProjectConfig, default)
    assert {name: getattr(cfg.finetune, name) for name in TINY_FINETUNE_RECIPE} == TINY_FINETUNE_RECIPE
