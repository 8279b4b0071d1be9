"""The root config: one YAML file describes a whole experiment; each command reads its sections."""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationError, model_validator

from s2s2.pipeline.config.base import StrictModel, relocated
from s2s2.pipeline.config.data import DATA_MODELS, DataConfig, Icbm152Data, data_config
from s2s2.pipeline.config.generator import FinetuneConfig, GenerateConfig, GeneratorConfig, apply_base_recipe
from s2s2.pipeline.config.store import StoreConfig
from s2s2.pipeline.config.train import EvalConfig, ModelConfig, TrainConfig


def out_of_domain_config(data: DataConfig, fields: dict[str, Any]) -> DataConfig:
    """An out-of-domain set's data config: every field of the training `data` that the set's adapter has,
    overridden by the ones it names (nested sections such as `perturb` field by field).

    So a test set is cut, resized and scaled as the training data is (a model trained on sagittal
    slices is tested on sagittal slices)."""
    def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
        return {**base, **{k: merged(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
                           for k, v in override.items()}}

    target = DATA_MODELS.get(str(fields.get("adapter", data.adapter)), type(data))
    inherited = {k: v for k, v in data.model_dump().items() if k in target.model_fields}
    return data_config(**merged(inherited, fields))


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
        if self.store.val_path is None:
            self.store.val_path = val_store_path(self.store.path)
        return self

    @model_validator(mode="after")
    def _out_of_domain_sets_valid(self) -> "ProjectConfig":
        """Each `evaluate.out_of_domain` entry must give a valid data config over the training data's
        fields: a mistake there is refused when the config is loaded (by `train` too), not at `evaluate`."""
        for name, fields in self.evaluate.out_of_domain.items():
            try:
                out_of_domain_config(self.data, fields)
            except ValidationError as err:
                raise relocated(err, lambda loc, name=name: ("evaluate", "out_of_domain", name, *loc)) from None
        return self


def val_store_path(path: str) -> str:
    """The stack-val store beside a training store: `.../stack.zarr` -> `.../stack-val.zarr`."""
    stem = path.rstrip("/")
    return f"{stem[:-5] if stem.endswith('.zarr') else stem}-val.zarr"
