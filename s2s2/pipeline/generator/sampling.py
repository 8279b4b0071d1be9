"""Sampling K images per mask from a ControlNet pipeline, with per-image seeds and a NaN/black guard.

Work is flattened to (mask, k) pairs in mask-major order and cut into calls of `images_per_call`
images: K images of one mask per call when K is large, several masks per call when K is small.
Each image draws its initial noise from its own CPU generator seeded by (base seed, sample, k), so
its pixels do not depend on which other images share the call or on the device's RNG.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers import StableDiffusionControlNetPipeline

from s2s2.pipeline.config.generator import GenerateConfig
from s2s2.pipeline.generator.control import control_images, from_generator_rgb, is_bad_image
from s2s2.pipeline.generator.seeds import image_seed


@dataclass(frozen=True)
class ImageJob:
    """One stack image to make: row in the batch of masks, its store sample index, k, and attempt."""

    row: int
    sample_index: int
    k: int
    attempt: int = 0


def _run_pipeline(pipe: StableDiffusionControlNetPipeline, jobs: list[ImageJob], control: torch.Tensor,
                  prompts: list[str], settings: GenerateConfig, resolution: int) -> np.ndarray:
    """One pipeline call: float RGB [len(jobs),R,R,3] in [0,1] (NaN where the model diverged)."""
    generators = [torch.Generator("cpu").manual_seed(image_seed(settings.seed, job.sample_index, job.k, job.attempt))
                  for job in jobs]
    with torch.inference_mode():
        result = pipe(
            prompt=[prompts[job.row] for job in jobs],
            negative_prompt=[settings.negative_prompt] * len(jobs),
            image=control[[job.row for job in jobs]].to(pipe.device, pipe.controlnet.dtype),
            height=resolution, width=resolution,
            num_inference_steps=settings.steps, guidance_scale=settings.guidance_scale, eta=settings.eta,
            controlnet_conditioning_scale=settings.control_strength,
            generator=generators, output_type="np",
        )
    return np.asarray(result.images, dtype=np.float32)


def generate_stack(pipe: StableDiffusionControlNetPipeline, masks: np.ndarray, prompts: list[str],
                   sample_indices: list[int], k: int, num_classes: int, image_shape: tuple[int, int, int],
                   settings: GenerateConfig, resolution: int, first_k: int = 0) -> tuple[np.ndarray, int, int]:
    """K images for each mask [m,H,W]: uint8 [m,K,C,H,W], the number regenerated, the number still bad.

    The images are stack images first_k .. first_k+K-1 (their seeds follow k), so a source that owns
    a range of k in a mixed stack draws the same pixels as in a store of its own.
    A NaN or all-black image is drawn again with the next attempt's seed, up to `max_retries` times.
    """
    channels, height, width = image_shape
    control = control_images(masks, num_classes, resolution)
    out = np.zeros((len(masks), k, channels, height, width), dtype=np.uint8)
    pending = [ImageJob(row, index, kk) for row, index in enumerate(sample_indices) for kk in range(first_k, first_k + k)]
    regenerated, attempt = 0, 0
    while True:
        failed: list[ImageJob] = []
        for start in range(0, len(pending), settings.images_per_call):
            jobs = pending[start:start + settings.images_per_call]
            rgb = _run_pipeline(pipe, jobs, control, prompts, settings, resolution)
            images = from_generator_rgb(np.nan_to_num(rgb, nan=0.0), channels, (height, width))
            for job, image, raw in zip(jobs, images, rgb):
                out[job.row, job.k - first_k] = image
                if is_bad_image(raw):
                    failed.append(ImageJob(job.row, job.sample_index, job.k, attempt + 1))
        if not failed or attempt == settings.max_retries:
            return out, regenerated, len(failed)
        regenerated += len(failed)
        pending, attempt = failed, attempt + 1
