"""Stage one, part one: fine-tune a ControlNet (and, for the tiny random base, the UNet) on the masks.

One step, as in the ControlNet paper: encode the image, add noise at a random timestep, let the
ControlNet read the mask's control image, and regress the UNet's output on the noise (epsilon) or
the velocity (v-prediction), whichever the base model's scheduler declares. Every step draws its
batch, noise and timesteps from a seed derived from (seed, step), so `--resume` from a checkpoint
reproduces an uninterrupted run exactly. The output is a complete
`StableDiffusionControlNetPipeline` folder.

With `finetune.appearance.enabled`, a share of each batch's targets is replaced by a label-driven
appearance remap of the image (new per-label intensities, its own texture, corruptions), encoded
on the fly, and the ControlNet reads the target's per-label mean intensities in extra control
channels: it learns anatomy and texture from the data and contrast from the randomisation.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import ControlNetModel, DDPMScheduler, StableDiffusionControlNetPipeline, UNet2DConditionModel
from diffusers.optimization import get_scheduler
from torch.optim.lr_scheduler import LambdaLR
from tqdm.auto import tqdm

from s2s2.pipeline.appearance import AppearanceSource
from s2s2.pipeline.atomic import atomic_path
from s2s2.pipeline.checkpoint import load_module, load_state, save_module, save_state
from s2s2.pipeline.config.appearance import AppearanceRemapConfig
from s2s2.pipeline.config.generator import FinetuneConfig, recipe_summary
from s2s2.pipeline.config.project import ProjectConfig
from s2s2.pipeline.data.prepared import PreparedDataset
from s2s2.pipeline.distributed import any_process
from s2s2.pipeline.errors import S2S2Error
from s2s2.pipeline.generator.control import appearance_controls, control_images, to_generator_rgb
from s2s2.pipeline.generator.loading import (
    FINETUNE_SUMMARY,
    BaseParts,
    load_base,
    make_controlnet,
    make_scheduler,
    set_attention,
)
from s2s2.pipeline.generator.paths import ensure_base, finetune_work_dir, generator_dir, resolution_of
from s2s2.pipeline.generator.sampling import generate_stack
from s2s2.pipeline.seeding import step_seed

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint"
LOSS_LOG = "losses.jsonl"
_APPEARANCE_STREAM = 1  # the step's random stream for appearance remaps (0: batch, noise, timesteps)


@dataclass
class TrainingSet:
    """Everything a step samples from, prepared once: latents (or images), controls, prompt embeddings."""

    latent_mean: torch.Tensor  # [F, N, c, h, w], F = 2 with horizontal flips, else 1
    latent_std: torch.Tensor
    controls: torch.Tensor  # [F, N, 3 (+ C appearance channels), R, R] in [0, 1]
    prompt_ids: torch.Tensor  # [N] row of `embeddings` per sample
    embeddings: torch.Tensor  # [P + 1, L, D]; the last row is the empty prompt
    appearance: AppearanceSource | None = None


@torch.no_grad()
def prepare_training_set(parts: BaseParts, dataset: PreparedDataset, indices: list[int], resolution: int,
                         hflip: bool, device: torch.device,
                         appearance: AppearanceRemapConfig | None = None) -> TrainingSet:
    """Encode the training images once (the VAE is frozen) with their flips, controls and prompts.

    With `appearance` enabled the controls carry the originals' painted label means too, and the
    set keeps the images and masks that per-step appearance remaps start from.
    """
    images = to_generator_rgb(torch.from_numpy(dataset.images[indices]).float(), resolution)
    controls = control_images(dataset.masks[indices], dataset.num_classes, resolution)
    source = None
    if appearance is not None and appearance.enabled:
        source = AppearanceSource(images=dataset.images[indices], masks=dataset.masks[indices],
                                  num_classes=dataset.num_classes, cfg=appearance)
        controls = torch.cat([controls, appearance_controls(source.images, source.masks, source.num_classes,
                                                            resolution)], dim=1)
    flips = [False, True] if hflip else [False]
    means, stds = [], []
    for flip in flips:
        batch_means, batch_stds = [], []
        for chunk in tqdm((images.flip(-1) if flip else images).split(32), desc="encode latents", leave=False):
            dist = parts.vae.encode(chunk.to(device, parts.vae.dtype)).latent_dist
            batch_means.append(dist.mean.float().cpu())
            batch_stds.append(dist.std.float().cpu())
        means.append(torch.cat(batch_means))
        stds.append(torch.cat(batch_stds))
    prompts = [dataset.prompt(i) for i in indices]
    unique = sorted(set(prompts))
    tokens = parts.tokenizer(unique + [""], padding="max_length", max_length=parts.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
    embeddings = torch.cat([parts.text_encoder(chunk.to(device))[0].float().cpu() for chunk in tokens.split(64)])
    return TrainingSet(
        latent_mean=torch.stack(means) * parts.vae.config.scaling_factor,
        latent_std=torch.stack(stds) * parts.vae.config.scaling_factor,
        controls=torch.stack([controls.flip(-1) if flip else controls for flip in flips]),
        prompt_ids=torch.tensor([unique.index(p) for p in prompts]),
        embeddings=embeddings,
        appearance=source,
    )


@dataclass
class Batch:
    latents: torch.Tensor
    controls: torch.Tensor
    embeddings: torch.Tensor
    noise: torch.Tensor
    timesteps: torch.Tensor
    rows: torch.Tensor  # which training samples, and whether flipped: what appearance remaps start from
    flips: torch.Tensor


def draw_batch(data: TrainingSet, batch_size: int, prompt_dropout: float, num_timesteps: int, seed: int) -> Batch:
    """A batch and its noise, all from one seed (the step's), so any step can be replayed exactly."""
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    rows = torch.from_numpy(rng.integers(0, data.latent_mean.shape[1], size=batch_size))
    flips = torch.from_numpy(rng.integers(0, data.latent_mean.shape[0], size=batch_size))
    dropped = torch.from_numpy(rng.random(batch_size) < prompt_dropout)
    mean, std = data.latent_mean[flips, rows], data.latent_std[flips, rows]
    latents = mean + std * torch.randn(mean.shape, generator=generator)
    prompt_rows = torch.where(dropped, data.embeddings.shape[0] - 1, data.prompt_ids[rows])
    return Batch(latents=latents, controls=data.controls[flips, rows], embeddings=data.embeddings[prompt_rows],
                 noise=torch.randn(latents.shape, generator=generator),
                 timesteps=torch.randint(0, num_timesteps, (batch_size,), generator=generator),
                 rows=rows, flips=flips)


@torch.no_grad()
def remap_appearance(batch: Batch, source: AppearanceSource, vae: torch.nn.Module, resolution: int,
                     seed: int) -> Batch:
    """Replace a random share (`probability`) of the batch's targets by appearance remaps of
    themselves: new latents (encoded now, posterior sampled) and the matching painted label means.

    All draws come from `seed` (the step's), so a resumed run remaps exactly as an uninterrupted one.
    """
    rng = np.random.default_rng([seed, _APPEARANCE_STREAM])
    chosen, remapped = source.draw(batch.rows.numpy(), rng)
    if not len(chosen):
        return batch
    images = to_generator_rgb(torch.from_numpy(remapped), resolution)
    painted = appearance_controls(remapped, source.masks[batch.rows[chosen].numpy()], source.num_classes, resolution)
    flipped = batch.flips[chosen].bool()[:, None, None, None]
    images, painted = torch.where(flipped, images.flip(-1), images), torch.where(flipped, painted.flip(-1), painted)
    dist = vae.encode(images.to(vae.device, vae.dtype)).latent_dist
    generator = torch.Generator().manual_seed(int(rng.integers(2**63)))
    latents = dist.mean.float().cpu() + dist.std.float().cpu() * torch.randn(dist.mean.shape, generator=generator)
    batch.latents[chosen] = latents * vae.config.scaling_factor
    batch.controls[chosen, 3:] = painted
    return batch


def min_snr_weights(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, gamma: float,
                    prediction_type: str) -> torch.Tensor:
    """Per-sample loss weights of min-SNR-gamma: min(SNR, gamma) / SNR for epsilon targets,
    min(SNR, gamma) / (SNR + 1) for velocity targets, SNR = alpha_bar / (1 - alpha_bar).

    Down-weights the easy low-noise timesteps, which speeds up convergence (Hang et al. 2023).
    """
    alpha_bar = alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = alpha_bar / (1 - alpha_bar)
    clipped = snr.clamp(max=gamma)
    return clipped / (snr + 1) if prediction_type == "v_prediction" else clipped / snr


def diffusion_loss(unet: UNet2DConditionModel, controlnet: ControlNetModel, noise_scheduler: DDPMScheduler,
                   batch: Batch, dtype: torch.dtype, snr_gamma: float | None = None) -> torch.Tensor:
    """MSE between the ControlNet-guided UNet output and the target (noise or velocity),
    optionally min-SNR weighted per sample."""
    noisy = noise_scheduler.add_noise(batch.latents, batch.noise, batch.timesteps)
    down, mid = controlnet(noisy, batch.timesteps, encoder_hidden_states=batch.embeddings,
                           controlnet_cond=batch.controls, return_dict=False)
    prediction = unet(noisy.to(dtype), batch.timesteps, encoder_hidden_states=batch.embeddings.to(dtype),
                      down_block_additional_residuals=[d.to(dtype) for d in down],
                      mid_block_additional_residual=mid.to(dtype)).sample
    if noise_scheduler.config.prediction_type == "epsilon":
        target = batch.noise
    elif noise_scheduler.config.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(batch.latents, batch.noise, batch.timesteps)
    else:
        raise S2S2Error(f"prediction type {noise_scheduler.config.prediction_type!r} of the base scheduler is "
                        "not supported; use epsilon or v_prediction")
    if snr_gamma is None:
        return F.mse_loss(prediction.float(), target.float())
    per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    weights = min_snr_weights(noise_scheduler.alphas_cumprod, batch.timesteps, snr_gamma,
                              noise_scheduler.config.prediction_type)
    return (per_sample * weights).mean()


def _cast(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast floating weights to `dtype` only when they differ (diffusers warns on no-op casts)."""
    if any(param.dtype != dtype for param in module.parameters()):
        module.to(dtype=dtype)
    return module


def _to_device(batch: Batch, device: torch.device) -> Batch:
    return Batch(*(getattr(batch, name).to(device) for name in Batch.__dataclass_fields__))


def _pipeline(parts: BaseParts, unet: UNet2DConditionModel, controlnet: ControlNetModel) -> StableDiffusionControlNetPipeline:
    return StableDiffusionControlNetPipeline(
        vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer, unet=unet,
        controlnet=controlnet, scheduler=parts.scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)


def save_validation(cfg: ProjectConfig, pipe: StableDiffusionControlNetPipeline, dataset: PreparedDataset,
                    resolution: int, path: Path) -> None:
    """Grid of (original | mask | two generated images) for a few validation masks, as PNG."""
    from s2s2.pipeline.viz import overlay_mask, save_grid, to_rgb_uint8

    split = "val" if dataset.splits.get("val") else cfg.finetune.split
    indices = dataset.indices(split)[: cfg.finetune.validation_samples]
    sampler = StableDiffusionControlNetPipeline(**pipe.components, requires_safety_checker=False)
    sampler.scheduler = make_scheduler(cfg.generate.scheduler, pipe.scheduler.config)
    sampler.set_progress_bar_config(disable=True)
    appearance = cfg.finetune.appearance if cfg.finetune.appearance.enabled else None
    stack, _, _ = generate_stack(sampler, dataset.masks[indices], [dataset.prompt(i) for i in indices], indices,
                                 2, dataset.num_classes, dataset.image_shape, cfg.generate, resolution,
                                 originals=dataset.images[indices], appearance=appearance)
    rows = [[to_rgb_uint8(dataset.images[i]), overlay_mask(dataset.images[i], dataset.masks[i], dataset.num_classes, 1.0)]
            + [to_rgb_uint8(image.astype(np.float32) / 255.0) for image in stack[row]]
            for row, i in enumerate(indices)]
    save_grid(rows, path, col_titles=["original", "mask", "k=0", "k=1"])


def learning_rate_schedule(optimizer: torch.optim.Optimizer, ft: FinetuneConfig, start_step: int = 0) -> LambdaLR:
    """diffusers' `finetune.lr_schedule` over `finetune.steps`, advanced to `start_step`.

    The rate is a function of the step alone (stepped once per global step, also under DDP), so a
    resumed run, whose optimizer state holds the initial rate, continues the schedule exactly.
    """
    schedule = get_scheduler(ft.lr_schedule, optimizer, num_warmup_steps=ft.lr_warmup_steps, num_training_steps=ft.steps)
    for _ in range(start_step):
        schedule.step()
    return schedule


def _write_log(path: Path, log: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in log))


def _save_checkpoint(folder: Path, step: int, controlnet: ControlNetModel, unet: UNet2DConditionModel | None,
                     optimizer: torch.optim.Optimizer, log: list[dict]) -> None:
    """Weights, optimizer state, step and the loss log so far, replaced atomically as one folder
    (the checkpoint scheme of `s2s2.pipeline.checkpoint`)."""
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        save_module(controlnet, tmp / "controlnet.safetensors")
        if unet is not None:
            save_module(unet, tmp / "unet.safetensors")
        save_state(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step}))
        _write_log(tmp / LOSS_LOG, log)


def _load_checkpoint(folder: Path, controlnet: ControlNetModel, unet: UNet2DConditionModel | None,
                     optimizer: torch.optim.Optimizer) -> tuple[int, list[dict]]:
    """Restore a checkpoint in place; returns its step and its loss log. Weights and optimizer state
    are read without unpickling; a damaged file is a clear error."""
    if not (folder / "state.json").is_file():
        raise S2S2Error(f"--resume: no checkpoint in {folder}\nfix: run without --resume to start from step 0")
    fix = "fix: run without --resume to start from step 0 (or restore the checkpoint folder from a copy)"
    load_module(controlnet, folder / "controlnet.safetensors", missing_fix=fix, unreadable_fix=fix)
    if unet is not None:
        if not (folder / "unet.safetensors").is_file():
            raise S2S2Error(f"--resume: {folder} was saved with the UNet locked, but finetune.unlock_unet is on\n"
                            "fix: use the same finetune.unlock_unet as the interrupted run")
        load_module(unet, folder / "unet.safetensors", missing_fix=fix, unreadable_fix=fix)
    optimizer.load_state_dict(load_state(folder / "optimizer.pt", ("state", "param_groups"), "--resume", fix))
    log = [json.loads(line) for line in (folder / LOSS_LOG).read_text().splitlines()]
    return int(json.loads((folder / "state.json").read_text())["step"]), log


def run_finetune(cfg: ProjectConfig, dataset: PreparedDataset | None = None, resume: bool = False,
                 overwrite: bool = False) -> Path:
    """Fine-tune and save the pipeline folder; an existing one is kept unless `overwrite` or `resume`."""
    out = generator_dir(cfg)
    if (out / "model_index.json").is_file() and not (overwrite or resume):
        logger.info(f"{out} exists: skipping fine-tuning (pass --overwrite to train again, --resume to continue)")
        return out
    if dataset is None:
        from s2s2.pipeline.data.prepare import prepare_dataset

        dataset = prepare_dataset(cfg.data)
    ft = cfg.finetune
    logger.info(recipe_summary(ft, cfg.generator.base_model))
    indices = dataset.indices(ft.split)
    parts = load_base(ensure_base(cfg, dataset, ft.split), allow_pickle=cfg.generator.pickled_weights)
    appearance = ft.appearance if ft.appearance.enabled else None
    torch.manual_seed(ft.seed)  # the ControlNet's fresh layers: the same whether or not the base was just built
    controlnet = make_controlnet(parts.unet, parts.vae, cfg.generator.controlnet,
                                 dataset.image_shape[0] if appearance else 0, cfg.generator.pickled_weights)
    resolution = resolution_of(cfg, dataset.image_shape[-1])

    use_gpu = torch.cuda.is_available()
    accelerator = Accelerator(mixed_precision=ft.mixed_precision if use_gpu else "no", cpu=not use_gpu)
    device = accelerator.device
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    for frozen in (parts.vae, parts.text_encoder):
        _cast(frozen.requires_grad_(False).to(device), weight_dtype)
    _cast(parts.unet.requires_grad_(ft.unlock_unet).to(device), torch.float32 if ft.unlock_unet else weight_dtype)
    controlnet.train().to(device)
    attention = set_attention([parts.unet, controlnet], cfg.generator.attention, device)
    if use_gpu and ft.gradient_checkpointing:
        controlnet.enable_gradient_checkpointing()
        if ft.unlock_unet:
            parts.unet.enable_gradient_checkpointing()
    trainable = list(controlnet.parameters()) + (list(parts.unet.parameters()) if ft.unlock_unet else [])
    optimizer = torch.optim.AdamW(trainable, lr=ft.learning_rate, weight_decay=ft.weight_decay)

    work = finetune_work_dir(cfg)
    work.mkdir(parents=True, exist_ok=True)
    start_step, log = _load_checkpoint(work / CHECKPOINT, controlnet, parts.unet if ft.unlock_unet else None,
                                       optimizer) if resume else (0, [])
    schedule = learning_rate_schedule(optimizer, ft, start_step)
    if ft.unlock_unet:
        parts.unet.train()
        unet, controlnet, optimizer = accelerator.prepare(parts.unet, controlnet, optimizer)
    else:
        unet = parts.unet.eval()
        controlnet, optimizer = accelerator.prepare(controlnet, optimizer)
    noise_scheduler = DDPMScheduler.from_config(parts.scheduler.config)
    data = prepare_training_set(parts, dataset, indices, resolution, ft.hflip, device, appearance)
    logger.info(f"fine-tuning on {len(indices)} images at {resolution} px, device={device}, attention={attention}, "
          f"unet {'unlocked' if ft.unlock_unet else 'locked'}, prediction={noise_scheduler.config.prediction_type}, "
          f"steps {start_step}->{ft.steps}")

    started, step, capped = time.monotonic(), start_step, False
    bar = tqdm(total=ft.steps, initial=start_step, desc="finetune", unit="step",
               disable=not accelerator.is_main_process)
    while step < ft.steps:
        if ft.max_seconds is not None and any_process(accelerator, time.monotonic() - started > ft.max_seconds):
            capped = True
            logger.warning(f"finetune.max_seconds={ft.max_seconds:g} reached at step {step} of {ft.steps}: the "
                           f"generator is saved and flagged stopped_by_max_seconds in {FINETUNE_SUMMARY}")
            break
        step += 1
        seed = step_seed(ft.seed, step, accelerator.process_index)
        batch = draw_batch(data, ft.batch_size, ft.prompt_dropout, noise_scheduler.config.num_train_timesteps, seed)
        if data.appearance is not None:
            batch = remap_appearance(batch, data.appearance, parts.vae, resolution, seed)
        loss = diffusion_loss(unet, controlnet, noise_scheduler, _to_device(batch, device), weight_dtype, ft.snr_gamma)
        accelerator.backward(loss)
        if ft.max_grad_norm is not None:
            accelerator.clip_grad_norm_(trainable, ft.max_grad_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        log.append({"step": step, "loss": loss.item()})
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if accelerator.is_main_process and step % ft.checkpoint_every == 0:
            _save_checkpoint(work / CHECKPOINT, step, accelerator.unwrap_model(controlnet),
                             accelerator.unwrap_model(unet) if ft.unlock_unet else None, optimizer, log)
        if accelerator.is_main_process and step % ft.validate_every == 0:
            save_validation(cfg, _pipeline(parts, accelerator.unwrap_model(unet), accelerator.unwrap_model(controlnet)),
                            dataset, resolution, work / "validation" / f"step_{step:06d}.png")
    bar.close()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final_unet = _cast(accelerator.unwrap_model(unet), torch.float32)
        final_controlnet = _cast(accelerator.unwrap_model(controlnet), torch.float32)
        for frozen in (parts.vae, parts.text_encoder):
            _cast(frozen, torch.float32)
        _save_checkpoint(work / CHECKPOINT, step, final_controlnet, final_unet if ft.unlock_unet else None, optimizer, log)
        _write_log(work / LOSS_LOG, log)
        pipe = _pipeline(parts, final_unet, final_controlnet)
        save_validation(cfg, pipe, dataset, resolution, work / "validation" / "final.png")
        recent = [row["loss"] for row in log[-100:]]
        summary = {"base_model": cfg.generator.base_model, "steps": step, "steps_planned": ft.steps,
                   "stopped_by_max_seconds": capped, "seconds": time.monotonic() - started,
                   "final_loss_mean100": float(np.mean(recent)) if recent else math.nan,
                   "resolution": resolution, "unlock_unet": ft.unlock_unet, "attention": attention,
                   "appearance": appearance.model_dump(mode="json") if appearance else None}
        with atomic_path(out) as tmp:
            pipe.save_pretrained(tmp, safe_serialization=True)
            (tmp / FINETUNE_SUMMARY).write_text(json.dumps(summary, indent=1))
        logger.info(f"saved the fine-tuned pipeline to {out}: " + json.dumps(summary))
    return out
