"""Stage one configuration: generator, fine-tuning and generation.

Defaults follow the paper (SD 2.1-base, ControlNet locked-SD fine-tuning, DDIM 50 / guidance 9.0).
`configs/default.yaml` switches to the embedded tiny generator and the fast CPU settings.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from s2s2.pipeline.config.appearance import AppearanceRemapConfig, LabelsToImageConfig
from s2s2.pipeline.config.base import StrictModel
from s2s2.pipeline.errors import ConfigError

TINY_BASE = "tiny"
SourceKind = Literal["controlnet", "synth"]


class TinyBaseConfig(StrictModel):
    """The embedded SD-like base (same diffusers classes, small widths), built when missing.

    Its VAE is trained on the training images for `vae_steps` steps; UNet and text encoder stay
    random (the UNet is then trained jointly with the ControlNet by `finetune`).
    """

    vae_channels: tuple[int, ...] = (16, 32)  # n blocks -> downsampling factor 2**(n-1)
    vae_attention: bool = False  # self-attention in the VAE's mid blocks (SD has it; costly at 32x32 latents)
    latent_channels: int = Field(4, ge=1)
    unet_channels: tuple[int, ...] = (32, 64, 64)
    # which UNet levels (top = full latent resolution first) hold cross-/self-attention blocks
    unet_attention: tuple[bool, ...] = (False, False, True)
    layers_per_block: int = Field(1, ge=1)
    norm_num_groups: int = Field(16, ge=1)
    attention_head_dim: int = Field(8, ge=1)
    text_width: int = Field(64, ge=8)
    text_layers: int = Field(2, ge=1)
    max_prompt_tokens: int = Field(128, ge=8)  # prompts spell class names letter by letter
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    vae_steps: int = Field(1000, ge=1)
    vae_max_seconds: Optional[float] = Field(None, gt=0)  # optional cap; a build it stops is flagged
    vae_batch_size: int = Field(16, ge=1)
    vae_learning_rate: float = Field(1e-3, gt=0)
    # diffusers' schedules; on the default data cosine decay reconstructed appearance remaps worse
    vae_lr_schedule: Literal["constant", "cosine"] = "constant"
    vae_kl_weight: float = Field(1e-6, ge=0)
    seed: int = 0

    @model_validator(mode="after")
    def _attention_per_level(self) -> "TinyBaseConfig":
        if len(self.unet_attention) != len(self.unet_channels):
            raise ValueError(f"unet_attention has {len(self.unet_attention)} entries but unet_channels has "
                             f"{len(self.unet_channels)} levels: give one true/false per level")
        return self


class SourceShare(StrictModel):
    """One source of a mixed stack and its share of the K images (shares are relative weights)."""

    kind: SourceKind
    share: int = Field(1, ge=1)


class GeneratorConfig(StrictModel):
    """What fills the stack (`kind`), which base model and ControlNet to load, and where the
    fine-tuned pipeline goes.

    kind: `controlnet` (the paper's fine-tuned ControlNet), `synth` (training-free SynthSeg-style
    labels-to-image, settings in `synth`), or `mixed`: the K images of every mask are split across
    `sources` in proportion to their shares, in order (e.g. [controlnet, synth] with K=4: k 0-1 from
    the ControlNet, k 2-3 from synth).
    """

    kind: Literal["controlnet", "synth", "mixed"] = "controlnet"
    sources: list[SourceShare] = Field(default_factory=list)  # kind: mixed only
    synth: LabelsToImageConfig = Field(default_factory=LabelsToImageConfig)
    base_model: str = "stabilityai/stable-diffusion-2-1-base"  # hub id, local folder, or "tiny"
    tiny_dir: Optional[str] = None  # where the tiny base is built; default {run_dir}/tiny-base
    controlnet: Optional[str] = None  # ControlNet to start from (hub id/folder); None = from the UNet
    # base_model and controlnet weights are read as safetensors only; True also reads pickled .bin
    # weights (unpickling runs code stored in the file: only for files you trust)
    pickled_weights: bool = False
    output_dir: Optional[str] = None  # fine-tuned pipeline folder; default {run_dir}/generator
    resolution: Optional[int] = Field(None, ge=8)  # generation size in px; None = the data size
    attention: Literal["auto", "sdpa", "xformers"] = "auto"  # auto = xformers if installed on GPU
    tiny: TinyBaseConfig = Field(default_factory=TinyBaseConfig)

    @model_validator(mode="after")
    def _sources_only_when_mixed(self) -> "GeneratorConfig":
        if self.kind == "mixed" and not self.sources:
            raise ValueError("generator.kind: mixed needs generator.sources, e.g. [{kind: controlnet}, {kind: synth}]")
        if self.kind != "mixed" and self.sources:
            raise ValueError(f"generator.sources is used with generator.kind: mixed only (kind is {self.kind!r})")
        return self

    def source_shares(self) -> list[SourceShare]:
        """The sources in order: `sources` when mixed, else the one source of `kind`."""
        return list(self.sources) if self.kind == "mixed" else [SourceShare(kind=self.kind)]

    def k_ranges(self, k: int) -> list[tuple[SourceKind, int, int]]:
        """(kind, k_start, k_stop) of each source: K split in proportion to the shares, in order."""
        shares = self.source_shares()
        total = sum(source.share for source in shares)
        if k % total:
            split = ":".join(str(source.share) for source in shares)
            raise ConfigError(f"store.k={k} cannot be split {split} between generator.sources "
                              f"({', '.join(source.kind for source in shares)}); fix: make store.k a multiple of "
                              f"{total}, or change the shares")
        ranges, start = [], 0
        for source in shares:
            stop = start + k * source.share // total
            ranges.append((source.kind, start, stop))
            start = stop
        return ranges


class FinetuneConfig(StrictModel):
    """ControlNet fine-tuning. The field defaults are the paper's SD 2.1 recipe (AdamW, lr 1e-5, batch 16,
    SD locked, epsilon loss, 20,000 steps); with `generator.base_model: tiny` the fields of
    `TINY_FINETUNE_RECIPE` default to that recipe instead. A field set in the config always wins."""

    steps: int = Field(20000, ge=1)
    max_seconds: Optional[float] = Field(None, gt=0)  # optional cap: stop early, save, flag the run
    batch_size: int = Field(16, ge=1)
    learning_rate: float = Field(1e-5, gt=0)
    # diffusers' schedules over `steps` (cosine and linear decay to 0; warmup where the name says so)
    lr_schedule: Literal["constant", "constant_with_warmup", "cosine", "linear"] = "constant"
    lr_warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(1e-2, ge=0)
    unlock_unet: bool = False  # train the base UNet jointly (the tiny random base needs it)
    prompt_dropout: float = Field(0.0, ge=0, le=1)  # share of empty prompts, for guidance
    snr_gamma: Optional[float] = Field(None, gt=0)  # min-SNR loss weighting (Hang et al. 2023); None = plain MSE
    hflip: bool = True  # random left-right flips of image and mask together
    split: str = "train"
    mixed_precision: Literal["no", "fp16", "bf16"] = "fp16"  # used on GPU only
    # Clip the gradient norm of the trained weights before each step (diffusers' train_controlnet.py
    # uses 1.0); None: no clipping
    max_grad_norm: Optional[float] = Field(None, gt=0)
    gradient_checkpointing: bool = True  # used on GPU only
    validate_every: int = Field(500, ge=1)
    validation_samples: int = Field(4, ge=1)
    checkpoint_every: int = Field(1000, ge=1)
    seed: int = 0
    appearance: AppearanceRemapConfig = Field(default_factory=AppearanceRemapConfig)  # off unless enabled


# The fine-tune recipe a tiny base brings (the one `make generate` runs, measured on the embedded default):
# the tiny base is random, so its UNet trains with the ControlNet at a CPU-sized step count and rate.
TINY_FINETUNE_RECIPE: dict[str, object] = {"steps": 800, "batch_size": 8, "learning_rate": 1.0e-3,
                                           "unlock_unet": True, "snr_gamma": 5.0, "validate_every": 400,
                                           "checkpoint_every": 200}


def apply_base_recipe(finetune: FinetuneConfig, base_model: str) -> list[str]:
    """Give the fields of `TINY_FINETUNE_RECIPE` that the config does not set the tiny recipe's values
    when the base is tiny (an SD base keeps the field defaults: the paper's); returns the fields filled."""
    if base_model != "tiny":
        return []
    filled = [name for name in TINY_FINETUNE_RECIPE if name not in finetune.model_fields_set]
    for name in filled:
        setattr(finetune, name, TINY_FINETUNE_RECIPE[name])
    return filled


def recipe_summary(finetune: FinetuneConfig, base_model: str) -> str:
    """One line saying which recipe the fine-tune runs and which of its fields were set explicitly."""
    recipe = "the tiny-base recipe" if base_model == "tiny" else "the paper's SD recipe"
    shown = ", ".join(f"{name}={getattr(finetune, name)}" for name in TINY_FINETUNE_RECIPE)
    return f"finetune: base {base_model} -> {recipe} ({shown}); fields set in the config win"


class GenerateConfig(StrictModel):
    """Bulk generation of the stack (paper: DDIM 50 steps, eta 0, guidance 9.0, empty negative)."""

    scheduler: Literal["ddim", "unipc", "dpmsolver++"] = "ddim"
    steps: int = Field(50, ge=1)
    guidance_scale: float = Field(9.0, ge=0)  # <= 1 disables classifier-free guidance
    eta: float = Field(0.0, ge=0)
    control_strength: float = Field(1.0, ge=0)
    negative_prompt: str = ""
    seed: int = 0
    images_per_call: int = Field(16, ge=1)  # K images of one mask, several masks when K is small
    max_retries: int = Field(3, ge=0)  # regenerations of a NaN/black image with a new seed
    # share of stack images that render a random appearance, when the generator was fine-tuned with
    # finetune.appearance (the rest render the original's); each (sample, k) draws its own
    appearance_probability: float = Field(1.0, ge=0, le=1)
    workers: Optional[int] = Field(None, ge=1)  # dask worker processes; None = one per GPU, else 1
    scheduler_address: Optional[str] = None  # tcp://host:port of an existing dask scheduler
    claim_seconds: float = Field(120.0, gt=0)  # a shard claim lapses this long after its writer's last renewal
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"  # auto = fp16 on GPU, fp32 on CPU
    generator_dir: Optional[str] = None  # pipeline to sample from; default generator.output_dir
    # also draw K images for each val-split mask into store.val_path (same generator): stack-val
    # validation sees appearance shift without any target data; those images never reach training
    val_stack: bool = False
