"""Stage two configuration: segmenter, losses, augmentation, training and evaluation."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from s2s2.pipeline.config.base import StrictModel


def is_plain_name(name: str) -> bool:
    """A name usable as one folder: not empty, not '.' or '..', no path separator ('/' or '\\') or NUL."""
    return bool(name) and name not in (".", "..") and not any(c in name for c in "/\\\0")


class ModelConfig(StrictModel):
    """Which segmenter to build: an architecture, a size preset and a few overrides.

    Presets (see `s2s2.pipeline.segmenters.PRESETS`): `small` trains on a CPU in minutes at 64 px;
    `full` is the paper's size (U-Net/EfficientNet-B2, R50-ViT-B/16, PVTv2-B3) for a GPU.
    """

    name: Literal["unet", "transunet", "fcbformer"] = "unet"
    preset: Literal["small", "full"] = "small"
    encoder: Optional[str] = None  # U-Net only: any smp/timm encoder name; None = the preset's
    pretrained: bool = False  # timm/smp ImageNet weights; needs the hub, so off by default
    # Encoder stage(s) whose features L_enc compares (names in `segmenters.ENCODER_STAGES`);
    # None = the model's default (`segmenters.DEFAULT_SC_STAGES`, chosen on the validation split).
    sc_stages: Optional[list[str]] = Field(None, min_length=1)


class LossConfig(StrictModel):
    """The S2S2 objective: L = w_seg*L_seg(p0) + w_seg_gen*L_seg(pk) + a_enc*L_enc + a_dec*L_dec."""

    # ce_dice: softmax CE + softmax Dice (mutually exclusive classes); bce_dice: sigmoid BCE + sigmoid
    # Dice on every class channel against the one-hot mask (per-channel, as for region-based labels)
    seg: Literal["ce_dice", "bce_dice"] = "ce_dice"
    lambda_ce: float = Field(1.0, ge=0)  # weight of the CE (ce_dice) or BCE (bce_dice) term
    lambda_dice: float = Field(1.0, ge=0)
    # Defaults chosen on validation only, real val + stack-val (bench/recipe_sweep.py, BENCHMARKS.md
    # "The recipe"): on the appearance-randomised default stack w_seg_gen = 1 beat 0.1 on the mean of
    # the two (the real val alone prefers 0.1: it cannot see what robustness buys). The paper's
    # TransUNet recipe is w_seg_gen = a_enc = a_dec = 1.
    w_seg: float = Field(1.0, ge=0)  # segmentation loss on the original image
    w_seg_gen: float = Field(1.0, ge=0)  # segmentation loss on the stack image; 0 = "no generated seg loss"
    a_enc: float = Field(1.0, ge=0)  # weight of L_sc on each encoder feature
    a_dec: float = Field(0.0, ge=0)  # weight of L_sc on the last decoder feature map
    distance: Literal["cosine", "l1"] = "cosine"
    class_weighted: bool = False  # weight each position by (1 - frequency of its class in the mask)


class AugmentConfig(StrictModel):
    """Pair augmentation: one geometric transform shared by both images and the mask, and an
    independent photometric jitter per image. Used by the S2S2 pairs and the baseline alike."""

    enabled: bool = True
    hflip_p: float = Field(0.5, ge=0, le=1)
    vflip_p: float = Field(0.0, ge=0, le=1)
    rot90_p: float = Field(0.0, ge=0, le=1, description="probability of a random multiple of 90 degrees")
    affine_p: float = Field(0.5, ge=0, le=1)
    max_rotate_deg: float = Field(10.0, ge=0, le=180)
    max_scale: float = Field(0.1, ge=0, lt=1, description="scale drawn in [1-max_scale, 1+max_scale]")
    max_translate: float = Field(0.05, ge=0, le=0.5, description="shift as a fraction of the image size")
    photometric_p: float = Field(0.8, ge=0, le=1)
    brightness: float = Field(0.1, ge=0, le=1, description="additive shift in [-b, b]")
    contrast: float = Field(0.2, ge=0, lt=1, description="multiplier about the mean in [1-c, 1+c]")
    gamma: float = Field(0.2, ge=0, le=2, description="gamma = exp(u), u in [-g, g]")
    noise_std: float = Field(0.02, ge=0, le=1, description="Gaussian noise sigma drawn in [0, noise_std]")
    stack_photometric: bool = Field(True, description="photometric jitter on the stack image too, drawn "
                                    "independently of the original's (False: the stack image gets the shared "
                                    "geometric transforms only)")
    on_device: bool = Field(True, description="hand images over in their stored dtype (uint8 stack images) and "
                            "apply the photometric jitter on the trainer's device (same draws; the noise is "
                            "another realisation of the same sigma); False: the whole augmentation in the data "
                            "loader and float32 hand-over, which reproduces runs made that way bit for bit")


class TrainConfig(StrictModel):
    """Segmenter training, baseline (`stack: false`) or S2S2 (`stack: true`, reads `store.path`)."""

    name: str = "s2s2"  # run folder: {run_dir}/train/{name}; a plain name (no path separators, not '.' or '..')
    stack: bool = True  # False = the baseline: same trainer, no store, L = L_seg(p0)
    loss: LossConfig = Field(default_factory=LossConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    location_scale: bool = False  # SLAug-style global location-scale intensity aug on the original
    gin: bool = False  # GIN random shallow-convolution intensity aug on the original (Ouyang et al. 2022)
    seed: int = 0
    steps: int = Field(300, ge=1)
    # Optional safety cap on wall time: runs are defined by `steps`; a run this cap stopped is flagged
    # (`stopped_by_time_cap` in summary.json and in every results table).
    max_seconds: Optional[float] = Field(None, gt=0)
    batch_size: int = Field(8, ge=1)  # global batch B of originals; S2S2 forwards 2B images
    # Drop each epoch's last partial batch (False: train on it, as the TransUNet and SLAug loaders do)
    drop_last: bool = True
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.9, ge=0)  # SGD only
    schedule: Literal["poly", "cosine", "constant"] = "poly"
    poly_power: float = 0.9
    warmup_steps: int = Field(0, ge=0)
    grad_clip: Optional[float] = Field(None, gt=0)
    # Stack images drawn per training mask: the first `stack_k` of the store's K (None = all K), so
    # that the effect of K is measured on one stack without regenerating it
    stack_k: Optional[int] = Field(None, ge=1)
    # Which validation Dice picks the best checkpoint (model.safetensors): `val` the real val split,
    # `stack_val` the model segmenting the stack images of the val masks (store.val_path, all K),
    # `mean` the mean of the two. No choice reads an out-of-domain test set.
    select_on: Literal["val", "stack_val", "mean"] = "val"
    # True: S2S2's one forward of 2B images puts the stack images into the batch-norm running
    # statistics. False: running statistics from the originals only, as the baseline's (each half of
    # the batch is normalised by its own batch statistics; the stack half leaves the running ones alone).
    bn_stack_stats: bool = True
    val_every: int = Field(50, ge=1)  # validation on the val split every this many steps (and at the end)
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(50, ge=1)  # last checkpoint + resume state
    num_workers: int = Field(0, ge=0)
    deterministic: bool = True  # torch.use_deterministic_algorithms (warn_only) for exact resume
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Autocast of the forward pass through accelerate (fp16 with a gradient scaler, GPU only; bf16 on a GPU
    # or CPU); the losses are computed in float32
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    # Also log every row of log.csv to TensorBoard (accelerate's tracker), in {run folder}/tensorboard
    tensorboard: bool = False

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        if not is_plain_name(name):
            raise ValueError(f"{name!r} is not a plain name: the run folder is {{run_dir}}/train/{{name}}, so the "
                             "name may not be empty, '.' or '..', nor hold '/' or '\\'")
        return name

    @model_validator(mode="after")
    def _warmup_below_steps(self) -> "TrainConfig":
        if self.warmup_steps >= self.steps and self.warmup_steps > 0:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be below steps ({self.steps})")
        return self


class EvalConfig(StrictModel):
    """In-domain and out-of-domain evaluation: Dice and HD95 per case, per class."""

    eval_classes: Optional[list[str]] = None  # classes averaged in validation and evaluation; None = every foreground class
    out_of_domain: dict[str, dict] = Field(default_factory=dict)  # test-set name -> DataConfig fields
    checkpoint: Literal["best", "last"] = "best"  # best validation Dice (model.safetensors) or the final weights
    hd95_percentile: float = Field(95.0, gt=0, le=100)
    figure_cases: int = Field(4, ge=0)  # rows of image | truth | prediction per test set
    batch_size: int = Field(16, ge=1)
