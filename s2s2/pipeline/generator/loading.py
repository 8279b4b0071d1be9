"""Loading SD-like parts (hub id or local folder), making the ControlNet, picking devices and attention.

The same code loads `stabilityai/stable-diffusion-2-1-base` and the embedded tiny base: both are
diffusers folders with `unet/ vae/ text_encoder/ tokenizer/ scheduler/` subfolders.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    StableDiffusionControlNetPipeline,
    UNet2DConditionModel,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import logging as diffusers_logging
from transformers import CLIPTextModel, CLIPTokenizer
from transformers.utils import logging as transformers_logging

from s2s2.pipeline.config.appearance import AppearanceRemapConfig
from s2s2.pipeline.errors import ConfigError, S2S2Error

logger = logging.getLogger(__name__)

CONTROL_EMBEDDING_CHANNELS = (16, 32, 96, 256)  # diffusers' default, for a VAE factor of 8
PALETTE_CHANNELS = 3  # the mask drawn in VOC colours
CONTROLNET_WEIGHTS = "diffusion_pytorch_model.safetensors"
FINETUNE_SUMMARY = "s2s2_finetune.json"  # written by `s2s2 finetune` into the generator folder


@dataclass
class BaseParts:
    """The frozen-or-not parts of an SD-like base model."""

    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    scheduler: SchedulerMixin


PICKLE_OPT_IN = "generator.pickled_weights: true"


def _pickled_only(folder: Path) -> list[str]:
    """Pickled weight files under `folder` whose part has no safetensors beside them."""
    found = []
    for weights in sorted(folder.rglob("*")):
        if weights.suffix in PICKLED_WEIGHTS and not any(weights.parent.glob("*.safetensors")):
            found.append(str(weights.relative_to(folder)))
    return found


def _weights_format(name: str, allow_pickle: bool) -> dict[str, bool]:
    """`from_pretrained` options: safetensors only, unless the user opted in to pickled weights (then
    say that unpickling runs code from the files)."""
    if not allow_pickle:
        return {"use_safetensors": True}
    logger.warning(f"{PICKLE_OPT_IN}: pickled weights of {name} may be read; unpickling runs code stored in "
                   "the file, so use it only for files you trust")
    return {}


def _load_error(name: str, what: str, err: Exception) -> S2S2Error:
    local = Path(name).expanduser()
    pickled = _pickled_only(local) if local.is_dir() else []
    if pickled:
        return S2S2Error(f"cannot load the {what} from {name!r}: it holds pickled weights only ({', '.join(pickled[:4])}), "
                         "which are not read by default (unpickling runs code stored in the file)\n"
                         "fix: convert them to safetensors (load and save_pretrained them once), or set "
                         f"{PICKLE_OPT_IN} if you trust these files")
    if local.is_absolute() or name.startswith(".") or local.exists():
        hint = "check the folder (it must hold model_index.json and the unet/vae/... subfolders)"
    else:
        hint = ("it is neither a local folder nor a cached hub id; download it once with network "
                "access (or set HF_HUB_OFFLINE=0), or point the config at a local diffusers folder")
    first_line = (str(err).splitlines() or [""])[0]
    return S2S2Error(f"cannot load the {what} from {name!r}: {type(err).__name__}: {first_line}\n"
                     f"fix: {hint}")


def load_base(name: str, allow_pickle: bool = False) -> BaseParts:
    """Load tokenizer, text encoder, VAE, UNet and scheduler of an SD-like model (hub id or folder);
    weights as safetensors only unless `allow_pickle` (the user's explicit opt-in)."""
    local = Path(name).expanduser()
    if (local.is_absolute() or name.startswith(".")) and not local.is_dir():
        raise S2S2Error(f"base model folder {name} does not exist\nfix: build it (generator.base_model: tiny) "
                        "or point generator.base_model at a diffusers folder or hub id")
    try:
        weights = _weights_format(name, allow_pickle)
        return BaseParts(
            tokenizer=CLIPTokenizer.from_pretrained(name, subfolder="tokenizer"),
            text_encoder=CLIPTextModel.from_pretrained(name, subfolder="text_encoder", **weights),
            vae=AutoencoderKL.from_pretrained(name, subfolder="vae", **weights),
            unet=UNet2DConditionModel.from_pretrained(name, subfolder="unet", **weights),
            scheduler=DDIMScheduler.from_pretrained(name, subfolder="scheduler"),
        )
    except (OSError, ValueError, EnvironmentError) as err:
        raise _load_error(name, "base model", err) from None


def make_controlnet(unet: UNet2DConditionModel, vae: AutoencoderKL, source: str | None,
                    appearance_channels: int = 0, allow_pickle: bool = False) -> ControlNetModel:
    """Load a ControlNet from `source`, or initialise one from the UNet (zero convs, copied encoder).

    It reads the 3 palette channels of the mask plus `appearance_channels` painted label means
    (0 = the mask alone, as in the paper). The conditioning embedding gets one stage per VAE block
    so the control image is downsampled by exactly the VAE factor (diffusers' default assumes 8).
    """
    wanted = PALETTE_CHANNELS + appearance_channels
    if source is not None:
        try:
            controlnet = ControlNetModel.from_pretrained(source, **_weights_format(source, allow_pickle))
        except (OSError, ValueError, EnvironmentError) as err:
            raise _load_error(source, "ControlNet", err) from None
        if controlnet.config.conditioning_channels != wanted:
            raise S2S2Error(f"the ControlNet {source!r} reads {controlnet.config.conditioning_channels} control "
                            f"channels, but this fine-tune feeds {wanted} (3 palette + {appearance_channels} "
                            "appearance)\nfix: set finetune.appearance.enabled to match the checkpoint, or start "
                            "from the UNet (generator.controlnet: null)")
        return controlnet
    blocks = len(vae.config.block_out_channels)
    channels = CONTROL_EMBEDDING_CHANNELS[:blocks] if blocks <= 4 else CONTROL_EMBEDDING_CHANNELS + (256,) * (blocks - 4)
    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=channels, conditioning_channels=wanted)


def appearance_channels(controlnet: ControlNetModel) -> int:
    """How many painted-appearance control channels a ControlNet reads after the palette (0: none)."""
    return int(controlnet.config.conditioning_channels) - PALETTE_CHANNELS


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda when available, else cpu; an explicit `cuda` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise S2S2Error("generate.device is 'cuda' but no GPU is visible\nfix: set generate.device=auto or cpu")
    return torch.device(name)


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """`auto` -> fp16 on GPU, fp32 on CPU (half precision on CPU is slow and lossy)."""
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def xformers_available() -> bool:
    """True when the soft dependency xformers is importable."""
    return importlib.util.find_spec("xformers") is not None


def set_attention(models: list[torch.nn.Module], mode: str, device: torch.device) -> str:
    """Use xformers when asked (or `auto` on GPU with xformers installed), else PyTorch SDPA.

    Returns the backend used. diffusers' default processors already call SDPA.
    """
    want_xformers = mode == "xformers" or (mode == "auto" and device.type == "cuda" and xformers_available())
    if not want_xformers:
        return "sdpa"
    if not xformers_available():
        raise S2S2Error("generator.attention is 'xformers' but xformers is not installed\n"
                        "fix: pip install xformers, or set generator.attention=auto")
    for model in models:
        model.enable_xformers_memory_efficient_attention()
    return "xformers"


SCHEDULERS = {
    "ddim": lambda config: DDIMScheduler.from_config(config),
    "unipc": lambda config: UniPCMultistepScheduler.from_config(config),
    "dpmsolver++": lambda config: DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++"),
}


def make_scheduler(name: str, config: dict) -> SchedulerMixin:
    """A sampling scheduler by name, sharing the base model's noise schedule and prediction type."""
    if name not in SCHEDULERS:
        raise S2S2Error(f"unknown scheduler {name!r}; choose one of {sorted(SCHEDULERS)}")
    return SCHEDULERS[name](config)


PICKLED_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt")


def check_pipeline_folder(folder: str | Path) -> None:
    """Refuse a generator folder whose weights cannot be loaded safely, before any work starts:
    every model subfolder (one with a config.json) needs safetensors weights with an intact header.
    Pickled weights (.bin, .pt, ...) are never loaded: unpickling runs arbitrary code."""
    from safetensors import SafetensorError, safe_open

    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        raise ConfigError(f"generator folder {folder} has no model_index.json\n"
                          "fix: run `s2s2 finetune` first, or set generate.generator_dir to a fine-tuned pipeline")
    for part in sorted(p for p in folder.iterdir() if (p / "config.json").is_file()):
        weights = sorted(part.glob("*.safetensors"))
        if not weights:
            pickled = sorted(p.name for p in part.iterdir() if p.suffix in PICKLED_WEIGHTS)
            found = f"only pickled weights ({', '.join(pickled)})" if pickled else "no weights"
            raise S2S2Error(f"generator folder {folder}: {part.name}/ holds {found}; s2s2 loads safetensors only "
                            "(unpickling can run arbitrary code)\nfix: convert it once where you trust the file: "
                            "load the pipeline with diffusers and save it with `save_pretrained(folder, "
                            "safe_serialization=True)`, or re-run `s2s2 finetune --overwrite`")
        for path in weights:
            try:
                with safe_open(str(path), framework="pt") as tensors:
                    tensors.keys()  # parses the header: a truncated file fails here, not mid-generation
            except (SafetensorError, OSError) as err:
                raise S2S2Error(f"generator weights {path} cannot be read ({err}): the file is truncated or "
                                "corrupt\nfix: copy the generator folder again, or re-run "
                                "`s2s2 finetune --overwrite`") from None


def load_pipeline(folder: str | Path, scheduler: str, device: torch.device, dtype: torch.dtype,
                  attention: str = "auto") -> StableDiffusionControlNetPipeline:
    """Load a fine-tuned generator folder for sampling, with the named scheduler, on `device`
    (safetensors weights only, checked first)."""
    folder = Path(folder)
    check_pipeline_folder(folder)
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        pipe = StableDiffusionControlNetPipeline.from_pretrained(folder, safety_checker=None, dtype=dtype,
                                                                 use_safetensors=True)
    except (OSError, ValueError, RuntimeError) as err:  # a damaged config or weights file (JSON errors are ValueErrors)
        raise _load_error(str(folder), "generator", err) from None
    pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to(device)
    set_attention([pipe.unet, pipe.controlnet], attention, device)
    return pipe


def controlnet_hash(folder: str | Path) -> str:
    """sha256 of the fine-tuned ControlNet's weights file: the generator identity in the manifest."""
    path = Path(folder) / "controlnet" / CONTROLNET_WEIGHTS
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def generator_appearance(folder: str | Path) -> AppearanceRemapConfig | None:
    """The appearance remap a generator folder was fine-tuned with (from its `FINETUNE_SUMMARY`),
    or None when it was fine-tuned on the masks alone or made elsewhere."""
    path = Path(folder) / FINETUNE_SUMMARY
    if not path.is_file():
        return None
    settings = json.loads(path.read_text()).get("appearance")
    return AppearanceRemapConfig.model_validate(settings) if settings else None
