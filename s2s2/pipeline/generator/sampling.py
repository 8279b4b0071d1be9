"""Sampling K images per mask from a ControlNet pipeline, with per-image seeds and a NaN/black guard.

Work is flattened to (mask, k) pairs in mask-major order and cut into calls of `images_per_call`
images: K images of one mask per call when K is large, several masks per call when K is small.
Each image draws its initial noise from its own CPU generator seeded by (base seed, sample, k), so
its pixels do not depend on which other images share the call or on the device's RNG.

A generator trained with appearance randomisation also gets, per image, the appearance to render:
the painted label means of an appearance remap of the original, drawn from its own seed
(base seed, sample, k) with the remap settings it was trained with.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers import StableDiffusionControlNetPipeline

from s2s2.pipeline.config.appearance import AppearanceRemapConfig
from s2s2.pipeline.config.generator import GenerateConfig
from s2s2.pipeline.errors import S2S2Error
from s2s2.pipeline.generator.control import appearance_controls, control_images, from_generator_rgb, is_bad_image
from s2s2.pipeline.generator.loading import appearance_channels
from s2s2.pipeline.seeding import derive_seed, image_seed


@dataclass(frozen=True)
class ImageJob:
    """One stack image to make: row in the batch of masks, its store sample index, k, and attempt."""

    row: int
    sample_index: int
    k: int
    attempt: int = 0


def appearance_seed(base_seed: int, sample_index: int, k: int) -> int:
    """Seed of the appearance drawn for stack image k of a sample (kept across NaN/black retries)."""
    return derive_seed("appearance", base_seed, sample_index, k)


def draw_appearances(originals: np.ndarray, masks: np.ndarray, sample_indices: list[int], ks: range, num_classes: int,
                     cfg: AppearanceRemapConfig, probability: float, base_seed: int) -> np.ndarray:
    """The images whose appearance stack images `ks` render, float32 [m,len(ks),C,H,W] in [0,1]: an
    appearance remap of the original with `probability`, else the original, per (sample, k) seed."""
    from s2s2.pipeline.appearance import appearance_remap

    scale = 255.0 if originals.dtype == np.uint8 else 1.0
    out = np.empty((len(masks), len(ks), *originals.shape[1:]), dtype=np.float32)
    for row, (original, mask, index) in enumerate(zip(originals.astype(np.float32) / scale, masks, sample_indices)):
        for column, k in enumerate(ks):
            rng = np.random.default_rng(appearance_seed(base_seed, index, k))
            remap = rng.random() < probability
            out[row, column] = appearance_remap(original, mask, num_classes, rng, cfg) if remap else original
    return out


def _run_pipeline(pipe: StableDiffusionControlNetPipeline, jobs: list[ImageJob], control: torch.Tensor,
                  prompts: list[str], settings: GenerateConfig, resolution: int, first_k: int) -> np.ndarray:
    """One pipeline call: float RGB [len(jobs),R,R,3] in [0,1] (NaN where the model diverged).

    `control` is [m,K,c,R,R]: one control image per (mask row, k - first_k)."""
    generators = [torch.Generator("cpu").manual_seed(image_seed(settings.seed, job.sample_index, job.k, job.attempt))
                  for job in jobs]
    with torch.inference_mode():
        result = pipe(
            prompt=[prompts[job.row] for job in jobs],
            negative_prompt=[settings.negative_prompt] * len(jobs),
            image=control[[job.row for job in jobs], [job.k - first_k for job in jobs]].to(pipe.device, pipe.controlnet.dtype),
            height=resolution, width=resolution,
            num_inference_steps=settings.steps, guidance_scale=settings.guidance_scale, eta=settings.eta,
            controlnet_conditioning_scale=settings.control_strength,
            generator=generators, output_type="np",
        )
    return np.asarray(result.images, dtype=np.float32)


def generate_stack(pipe: StableDiffusionControlNetPipeline, masks: np.ndarray, prompts: list[str],
                   sample_indices: list[int], k: int, num_classes: int, image_shape: tuple[int, int, int],
                   settings: GenerateConfig, resolution: int, first_k: int = 0, originals: np.ndarray | None = None,
                   appearance: AppearanceRemapConfig | None = None) -> tuple[np.ndarray, int, int]:
    """K images for each mask [m,H,W]: uint8 [m,K,C,H,W], the number regenerated, the number still bad.

    The images are stack images first_k .. first_k+K-1 (their seeds follow k), so a source that owns
    a range of k in a mixed stack draws the same pixels as in a store of its own. A generator with
    appearance channels needs the `originals` [m,C,H,W] and the `appearance` remap settings it was
    trained with. A NaN or all-black image is drawn again with the next attempt's seed, up to
    `max_retries` times.
    """
    channels, height, width = image_shape
    control = control_images(masks, num_classes, resolution)[:, None].expand(-1, k, -1, -1, -1)
    wanted = appearance_channels(pipe.controlnet)
    if wanted:
        if originals is None or appearance is None:
            raise S2S2Error("this generator renders a requested appearance (its ControlNet reads "
                            f"{wanted} appearance channels) but no originals/appearance settings were given\n"
                            "fix: generate from a generator folder fine-tuned by `s2s2 finetune` (its "
                            "s2s2_finetune.json holds the appearance settings)")
        looks = draw_appearances(originals, masks, sample_indices, range(first_k, first_k + k), num_classes,
                                 appearance, settings.appearance_probability, settings.seed)
        painted = appearance_controls(looks.reshape(-1, *looks.shape[2:]), np.repeat(masks, k, axis=0),
                                      num_classes, resolution)
        control = torch.cat([control, painted.reshape(len(masks), k, *painted.shape[1:])], dim=2)
    out = np.zeros((len(masks), k, channels, height, width), dtype=np.uint8)
    pending = [ImageJob(row, index, kk) for row, index in enumerate(sample_indices) for kk in range(first_k, first_k + k)]
    regenerated, attempt = 0, 0
    while True:
        failed: list[ImageJob] = []
        for start in range(0, len(pending), settings.images_per_call):
            jobs = pending[start:start + settings.images_per_call]
            rgb = _run_pipeline(pipe, jobs, control, prompts, settings, resolution, first_k)
            images = from_generator_rgb(np.nan_to_num(rgb, nan=0.0), channels, (height, width))
            for job, image, raw in zip(jobs, images, rgb):
                out[job.row, job.k - first_k] = image
                if is_bad_image(raw):
                    failed.append(ImageJob(job.row, job.sample_index, job.k, attempt + 1))
        if not failed or attempt == settings.max_retries:
            return out, regenerated, len(failed)
        regenerated += len(failed)
        pending, attempt = failed, attempt + 1
