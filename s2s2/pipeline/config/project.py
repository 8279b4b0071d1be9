"""The root config: one YAML file describes a whole experiment; each command reads its sections."""

from __future__ import annotations

from pydantic import Field, model_validator

from s2s2.pipeline.config.base import StrictModel
from s2s2.pipeline.config.data import DataConfig, Icbm152Data
from s2s2.pipeline.config.generator import FinetuneConfig, GenerateConfig, GeneratorConfig, apply_base_recipe
from s2s2.pipeline.config.store import StoreConfig
from s2s2.pipeline.config.train import EvalConfig, ModelConfig, TrainConfig


class ProjectConfig(StrictModel):
    """All sections, each with its defaults. `run_dir` is where a run's outputs go (the stack store too,
    unless `store.path` names another place)."""

    run_dir: str = "runs/default"
    data: DataConfig = Field(default_factory=Icbm152Data)
    store: StoreConfig = Field(default_factory=StoreConfig)
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _finetune_follows_base(self) -> "ProjectConfig":
        apply_base_recipe(self.finetune, self.generator.base_model)
        return self

    @model_validator(mode="after")
    def _store_follows_run_dir(self) -> "ProjectConfig":
        if self.store.path is None:
            self.store.path = f"{self.run_dir}/stack.zarr"
        return self
