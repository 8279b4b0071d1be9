"""Images/s of an SD-2.1-base-sized ControlNet pipeline on a GPU: fp16/bf16, SDPA/xformers, torch.compile.

Random weights (speed does not depend on them): UNet and ControlNet with SD 2.1-base's UNet
config, the real-sized VAE (f = 8) and a text encoder of OpenCLIP ViT-H's size, all built from the
configs below, never downloaded. One call = one mask x K images (batch 16), classifier-free
guidance 9.0 (so the UNet sees 32 latents), 20 UniPC steps at 512 px (64x64 latents).
Rows that cannot run (xformers missing, a compile failure, out of time) are reported as skipped.

    python bench/gpu_generate.py                 # on a CUDA machine: < 5 minutes on one H100
    python bench/gpu_generate.py --dry-run       # the same code at tiny size on the CPU (seconds)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import traceback
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


def build_pipeline(dry_run: bool, device: torch.device, dtype: torch.dtype) -> Any:
    """A StableDiffusionControlNetPipeline with random weights, SD 2.1-base-sized unless `dry_run`."""
    from diffusers import (AutoencoderKL, ControlNetModel, DDIMScheduler, StableDiffusionControlNetPipeline,
                           UNet2DConditionModel, UniPCMultistepScheduler)
    from transformers import CLIPTextConfig, CLIPTextModel

    from s2s2.pipeline.generator.tokenizer import build_byte_tokenizer

    tokenizer = build_byte_tokenizer(77)
    text = TINY_TEXT if dry_run else SD21_TEXT
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**(TINY_UNET if dry_run else SD21_UNET))
        vae = AutoencoderKL(**(TINY_VAE if dry_run else SD21_VAE))
        text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), bos_token_id=len(tokenizer) - 2,
                                                    eos_token_id=len(tokenizer) - 1, pad_token_id=len(tokenizer) - 1,
                                                    **text))
        controlnet = ControlNetModel.from_unet(unet)
    scheduler = UniPCMultistepScheduler.from_config(DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1).config)
    pipe = StableDiffusionControlNetPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                             controlnet=controlnet, scheduler=scheduler, safety_checker=None,
                                             feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device, dtype)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(pipe: Any, batch: int, steps: int, resolution: int, repeats: int) -> list[float]:
    """Seconds per pipeline call of `batch` images of one mask (first call = warm-up, not counted)."""
    control = torch.zeros(batch, 3, resolution, resolution)
    control[:, 0, resolution // 4: 3 * resolution // 4, resolution // 4: 3 * resolution // 4] = 128 / 255
    control = control.to(pipe.device, pipe.unet.dtype)
    times = []
    for _ in range(repeats + 1):
        _sync(pipe.device)
        start = time.perf_counter()
        with torch.inference_mode():
            pipe(prompt=[PROMPT] * batch, negative_prompt=[""] * batch, image=control, height=resolution,
                 width=resolution, num_inference_steps=steps, guidance_scale=9.0,
                 generator=[torch.Generator("cpu").manual_seed(i) for i in range(batch)], output_type="np")
        _sync(pipe.device)
        times.append(time.perf_counter() - start)
    return times[1:]


def run_row(precision: str, attention: str, compiled: bool, args: argparse.Namespace, device: torch.device) -> dict:
    """Build, configure and time one (precision, attention, compile) setting."""
    from s2s2.pipeline.generator.loading import xformers_available

    row: dict[str, Any] = {"precision": precision, "attention": attention, "compile": compiled,
                           "batch": args.batch, "steps": args.steps, "resolution": args.resolution}
    if attention == "xformers" and not xformers_available():
        return {**row, "status": "skipped: xformers not installed"}
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[precision]
    try:
        pipe = build_pipeline(args.dry_run, device, dtype)
        if attention == "xformers":
            pipe.enable_xformers_memory_efficient_attention()
        if compiled:
            pipe.unet = torch.compile(pipe.unet)
            pipe.controlnet = torch.compile(pipe.controlnet)
        times = time_calls(pipe, args.batch, args.steps, args.resolution, args.repeats)
    except Exception as err:  # a row that fails must not stop the others
        traceback.print_exc()
        return {**row, "status": f"failed: {type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"}
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    seconds = sorted(times)[len(times) // 2]
    return {**row, "status": "ok", "seconds_per_call": round(seconds, 3),
            "images_per_s": round(args.batch / seconds, 2),
            "peak_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """All rows, within `max_seconds` (later rows are skipped once the budget is spent)."""
    device = torch.device("cpu" if args.dry_run else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine, or pass --dry-run for the CPU check")
    started = time.monotonic()
    rows = []
    for compiled in [c == "on" for c in args.compile]:
        for precision in args.precisions:
            for attention in args.attention:
                if time.monotonic() - started > args.max_seconds:
                    rows.append({"precision": precision, "attention": attention, "compile": compiled,
                                 "status": f"skipped: past the {args.max_seconds:.0f} s budget"})
                    continue
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                rows.append(run_row(precision, attention, compiled, args, device))
                print(json.dumps(rows[-1]), flush=True)
    import diffusers

    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()})",
        "date": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "command": "python bench/gpu_generate.py" + (" --dry-run" if args.dry_run else ""),
        "torch": torch.__version__, "diffusers": diffusers.__version__,
        "model": "tiny UNet/VAE/text encoder (dry run)" if args.dry_run else
                 "SD 2.1-base UNet + ControlNet.from_unet, SD VAE (f=8), ViT-H-sized text encoder; random weights",
        "guidance_scale": 9.0, "scheduler": "UniPC", "seconds_total": round(time.monotonic() - started, 1),
        "rows": rows,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny model on the CPU: checks the code path in seconds")
    parser.add_argument("--precisions", type=lambda s: s.split(","), default=None, help="e.g. fp16,bf16")
    parser.add_argument("--attention", type=lambda s: s.split(","), default=["sdpa", "xformers"])
    parser.add_argument("--compile", type=lambda s: s.split(","), default=None, help="off,on")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--resolution", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per row after one warm-up")
    parser.add_argument("--max-seconds", type=float, default=240.0, help="start no new row after this long")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default bench/gpu_results.json on a GPU)")
    args = parser.parse_args(argv)
    defaults = ({"precisions": ["fp32"], "compile": ["off"], "batch": 2, "steps": 2, "resolution": 64}
                if args.dry_run else
                {"precisions": ["fp16", "bf16"], "compile": ["off", "on"], "batch": 16, "steps": 20, "resolution": 512})
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
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
