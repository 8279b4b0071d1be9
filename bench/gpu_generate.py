"""Images/s of an SD-2.1-base-sized ControlNet pipeline on a GPU, per setting, and the fraction of
the card's peak it reaches.

Random weights (speed does not depend on them): UNet and ControlNet with SD 2.1-base's UNet
config, the real-sized VAE (f = 8) and a text encoder of OpenCLIP ViT-H's size, all built from the
configs below, never downloaded. One call = K images of one mask (batch 16; 32 and 64 = several
masks per call), classifier-free guidance 9.0 (the UNet sees 2x the batch), 20 UniPC steps at
512 px (64x64 latents). Settings that keep the images the same, added one by one: channels-last
memory format, fused QKV projections, the prompt encoded once per call instead of once per image,
torch.compile (default, max-autotune with CUDA graphs), larger batches. FLOPs per image are counted
with torch.utils.flop_counter.FlopCounterMode on one eager call (not estimated); fraction of peak
= images/s x FLOPs per image / the card's dense bf16 peak. Each row also reports how far its
images are from the eager bf16 row's (same seeds). A row that fails or runs out of time is
reported as such; the others still run.

    python bench/gpu_generate.py                 # on a CUDA machine: < 9 minutes on one H100/H200
    python bench/gpu_generate.py --dry-run       # the same code at tiny size on the CPU (~1 minute)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import traceback
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

# SD 2.1-base (stabilityai/stable-diffusion-2-1-base) unet/config.json, the fields that set its size.
SD21_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024, use_linear_projection=True,
    norm_num_groups=32, flip_sin_to_cos=True, freq_shift=0, act_fn="silu",
)
SD21_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512,
    norm_num_groups=32, scaling_factor=0.18215,
)
SD21_TEXT = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                 max_position_embeddings=77, hidden_act="gelu", projection_dim=512)
TINY_UNET = dict(SD21_UNET, sample_size=8, layers_per_block=1, block_out_channels=(32, 32, 64, 64),
                 attention_head_dim=(2, 2, 4, 4), cross_attention_dim=32, norm_num_groups=8)
TINY_VAE = dict(SD21_VAE, block_out_channels=(16, 16, 32, 32), layers_per_block=1, sample_size=64, norm_num_groups=8)
TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                 max_position_embeddings=77, hidden_act="gelu", projection_dim=32)
PROMPT = "A T1-weighted brain MRI slice showing background, csf, grey matter, white matter"


# Dense (no sparsity) bf16/fp16 tensor-core peaks in TFLOP/s, by a substring of the device name.
PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "A10G": 70.0, "L4": 121.0}


@dataclass(frozen=True)
class Setting:
    """One row: what is switched on. Every option keeps the computation (and so the images) the same."""

    name: str
    precision: str = "bf16"
    channels_last: bool = False
    fused_qkv: bool = False
    embeds_once: bool = False  # text encoder once per call, embeddings broadcast to the batch
    compile_mode: str | None = None  # torch.compile mode for UNet and ControlNet; None = eager
    batch: int = 16


ALL_EAGER = dict(channels_last=True, fused_qkv=True, embeds_once=True)
SETTINGS = [
    Setting("eager fp16", precision="fp16"),
    Setting("eager bf16"),
    Setting("+ channels-last", channels_last=True),
    Setting("+ fused QKV", channels_last=True, fused_qkv=True),
    Setting("+ prompt encoded once", **ALL_EAGER),
    Setting("+ torch.compile", **ALL_EAGER, compile_mode="default"),
    Setting("+ compile, batch 32", **ALL_EAGER, compile_mode="default", batch=32),
    Setting("+ compile, batch 64", **ALL_EAGER, compile_mode="default", batch=64),
    Setting("+ compile max-autotune (CUDA graphs)", **ALL_EAGER, compile_mode="max-autotune"),
]
REFERENCE = "eager bf16"


def build_parts(dry_run: bool, device: torch.device) -> dict[str, Any]:
    """UNet, VAE, text encoder, tokenizer and DDIM scheduler with random weights, SD 2.1-base-sized
    unless `dry_run` (the components of a diffusers Stable Diffusion folder)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from s2s2.pipeline.generator.tokenizer import build_byte_tokenizer

    tokenizer = build_byte_tokenizer(77)
    text = TINY_TEXT if dry_run else SD21_TEXT
    torch.manual_seed(0)
    with torch.device(device):
        parts = {
            "unet": UNet2DConditionModel(**(TINY_UNET if dry_run else SD21_UNET)),
            "vae": AutoencoderKL(**(TINY_VAE if dry_run else SD21_VAE)),
            "text_encoder": CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), bos_token_id=len(tokenizer) - 2,
                                                         eos_token_id=len(tokenizer) - 1,
                                                         pad_token_id=len(tokenizer) - 1, **text)),
        }
    parts["tokenizer"] = tokenizer
    parts["scheduler"] = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return parts


def build_pipeline(dry_run: bool, device: torch.device, dtype: torch.dtype) -> Any:
    """A StableDiffusionControlNetPipeline (ControlNet from the UNet, UniPC) with random weights."""
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, UniPCMultistepScheduler

    parts = build_parts(dry_run, device)
    with torch.device(device):
        controlnet = ControlNetModel.from_unet(parts["unet"])
    scheduler = UniPCMultistepScheduler.from_config(parts.pop("scheduler").config)
    pipe = StableDiffusionControlNetPipeline(**parts, controlnet=controlnet, scheduler=scheduler, safety_checker=None,
                                             feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device, dtype)


def configure(pipe: Any, setting: Setting) -> Any:
    """Switch on the setting's options (before compiling, so the compiled graphs include them)."""
    if setting.channels_last:
        for model in (pipe.unet, pipe.controlnet, pipe.vae):
            model.to(memory_format=torch.channels_last)
    if setting.fused_qkv:
        for model in (pipe.unet, pipe.controlnet, pipe.vae):
            model.fuse_qkv_projections()
    if setting.compile_mode is not None:
        pipe.unet = torch.compile(pipe.unet, mode=setting.compile_mode, fullgraph=False)
        pipe.controlnet = torch.compile(pipe.controlnet, mode=setting.compile_mode, fullgraph=False)
    return pipe


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def call_pipeline(pipe: Any, setting: Setting, steps: int, resolution: int) -> Any:
    """One call: `setting.batch` images (16 per mask, masks differ only by seed here), fixed seeds."""
    batch = setting.batch
    control = torch.zeros(batch, 3, resolution, resolution)
    control[:, 0, resolution // 4: 3 * resolution // 4, resolution // 4: 3 * resolution // 4] = 128 / 255
    control = control.to(pipe.device, pipe.unet.dtype)
    if setting.embeds_once:
        positive, negative = pipe.encode_prompt(PROMPT, pipe.device, 1, True, negative_prompt="")
        text = {"prompt_embeds": positive.expand(batch, -1, -1), "negative_prompt_embeds": negative.expand(batch, -1, -1)}
    else:
        text = {"prompt": [PROMPT] * batch, "negative_prompt": [""] * batch}
    with torch.inference_mode():
        return pipe(**text, image=control, height=resolution, width=resolution, num_inference_steps=steps,
                    guidance_scale=9.0, generator=[torch.Generator("cpu").manual_seed(i) for i in range(batch)],
                    output_type="np").images


def count_flops(pipe: Any, setting: Setting, steps: int, resolution: int) -> float:
    """FLOPs of one eager call of `setting` (matmuls, convolutions, attention), by FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        call_pipeline(pipe, setting, steps, resolution)
    return float(counter.get_total_flops())


def peak_tflops(device_name: str, override: float | None) -> float | None:
    if override is not None:
        return override
    return next((peak for key, peak in PEAK_TFLOPS.items() if key in device_name), None)


def _sig(value: float) -> float:
    """Four significant digits (tiny dry-run values stay informative)."""
    return float(f"{value:.4g}")


def run_row(setting: Setting, args: argparse.Namespace, device: torch.device, reference: dict[int, Any],
            flops: dict[tuple[int, bool], float], peak: float | None) -> dict[str, Any]:
    """Build, configure and time one setting; FLOPs counted on its eager twin (cached per batch)."""
    row: dict[str, Any] = {"setting": setting.name, **{k: v for k, v in asdict(setting).items() if k != "name"},
                           "steps": args.steps, "resolution": args.resolution}
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[setting.precision]
    try:
        pipe = build_pipeline(args.dry_run, device, dtype)
        key = (setting.batch, setting.embeds_once)
        if key not in flops:
            flops[key] = count_flops(pipe, replace(setting, compile_mode=None), args.steps, args.resolution)
        configure(pipe, setting)
        times, images = [], None
        for _ in range(args.repeats + 1):  # the first call warms up (and compiles)
            _sync(device)
            start = time.perf_counter()
            images = call_pipeline(pipe, setting, args.steps, args.resolution)
            _sync(device)
            times.append(time.perf_counter() - start)
    except Exception as err:  # a row that fails must not stop the others
        traceback.print_exc()
        return {**row, "status": f"failed: {type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"}
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    seconds = sorted(times[1:])[len(times[1:]) // 2]
    images_per_s = setting.batch / seconds
    flops_per_image = flops[(setting.batch, setting.embeds_once)] / setting.batch
    if setting.name == REFERENCE:
        reference[setting.batch] = images
    ref = reference.get(setting.batch)
    return {**row, "status": "ok", "first_call_s": _sig(times[0]), "seconds_per_call": _sig(seconds),
            "images_per_s": _sig(images_per_s), "tflop_per_image": _sig(flops_per_image / 1e12),
            "achieved_tflops": _sig(images_per_s * flops_per_image / 1e12),
            "fraction_of_peak": _sig(images_per_s * flops_per_image / (peak * 1e12)) if peak else None,
            "max_abs_diff_vs_eager_bf16": None if ref is None else _sig(float(abs(images - ref).max())),
            "peak_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """All chosen rows, within `max_seconds` (later rows are skipped once the budget is spent)."""
    device = torch.device("cpu" if args.dry_run else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine, or pass --dry-run for the CPU check")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()})"
    peak = peak_tflops(name, args.peak_tflops)
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    reference: dict[int, Any] = {}
    flops: dict[tuple[int, bool], float] = {}
    for setting in args.settings:
        if time.monotonic() - started > args.max_seconds:
            rows.append({"setting": setting.name, "status": f"skipped: past the {args.max_seconds:.0f} s budget"})
            continue
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        rows.append(run_row(setting, args, device, reference, flops, peak))
        print(json.dumps(rows[-1]), flush=True)
    import diffusers

    return {
        "device": name,
        "date": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "command": "python bench/gpu_generate.py" + (" --dry-run" if args.dry_run else ""),
        "torch": torch.__version__, "diffusers": diffusers.__version__,
        "model": "tiny UNet/VAE/text encoder (dry run)" if args.dry_run else
                 "SD 2.1-base UNet + ControlNet.from_unet, SD VAE (f=8), ViT-H-sized text encoder; random weights",
        "guidance_scale": 9.0, "scheduler": "UniPC", "peak_tflops": peak,
        "seconds_total": round(time.monotonic() - started, 1), "rows": rows,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny model on the CPU: checks the code path")
    parser.add_argument("--settings", type=lambda s: s.split(","), default=None,
                        help="row numbers to run, e.g. 1,2,6 (default: all; the dry run: the eager ones)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--resolution", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per row after one warm-up")
    parser.add_argument("--max-seconds", type=float, default=480.0, help="start no new row after this long")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the card's dense bf16 peak, if not known")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default bench/gpu_results.json on a GPU)")
    args = parser.parse_args(argv)
    chosen = [int(i) for i in args.settings] if args.settings else None
    if args.dry_run:  # tiny sizes, fp32 (CPU), eager only; batches shrink with the model
        args.settings = [replace(s, precision="fp32", batch=s.batch // 8) for i, s in enumerate(SETTINGS, 1)
                         if s.compile_mode is None and (chosen is None or i in chosen)]
        args.steps, args.resolution = args.steps or 2, args.resolution or 64
    else:
        args.settings = [s for i, s in enumerate(SETTINGS, 1) if chosen is None or i in chosen]
        args.steps, args.resolution = args.steps or 20, args.resolution or 512
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.dry_run:
        torch.set_num_threads(1)  # other work shares the CPU
    result = measure(args)
    text = json.dumps(result, indent=1)
    print(text)
    out = args.out or (None if args.dry_run else REPO / "bench" / "gpu_results.json")
    if out is not None:
        out.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
