"""The embedded tiny SD-like base: SD 2.x's diffusers classes at small widths, built offline.

UNet, text encoder and tokenizer start random; the VAE is trained for a fixed number of steps on
the training images and its `scaling_factor` recomputed, so latents have unit variance as in SD.
The result is a normal diffusers folder that `finetune` loads exactly like SD 2.1-base, plus
`s2s2_tiny_base.json` with the VAE's build statistics.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.optimization import get_scheduler
from tqdm.auto import tqdm
from transformers import CLIPTextConfig, CLIPTextModel

from s2s2.pipeline.appearance import AppearanceSource
from s2s2.pipeline.atomic import atomic_path
from s2s2.pipeline.config.generator import TinyBaseConfig
from s2s2.pipeline.generator.control import to_generator_rgb
from s2s2.pipeline.generator.tokenizer import build_byte_tokenizer

logger = logging.getLogger(__name__)

BUILD_STATS = "s2s2_tiny_base.json"


def tiny_vae(cfg: TinyBaseConfig, resolution: int) -> AutoencoderKL:
    """A small `AutoencoderKL`; n blocks downsample by 2**(n-1)."""
    n = len(cfg.vae_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=cfg.latent_channels,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=cfg.vae_channels, layers_per_block=1,
        norm_num_groups=math.gcd(*cfg.vae_channels, cfg.norm_num_groups), sample_size=resolution,
        mid_block_add_attention=cfg.vae_attention,
    )


def tiny_unet(cfg: TinyBaseConfig, latent_size: int) -> UNet2DConditionModel:
    """A small `UNet2DConditionModel` with SD 2.x's blocks (cross-attention, linear projection).

    Attention sits only on the levels `unet_attention` names: at the full latent resolution its
    cost grows with the square of the pixel count and dominates a CPU step.
    """
    down = tuple("CrossAttnDownBlock2D" if attend else "DownBlock2D" for attend in cfg.unet_attention)
    up = tuple("CrossAttnUpBlock2D" if attend else "UpBlock2D" for attend in reversed(cfg.unet_attention))
    return UNet2DConditionModel(
        sample_size=latent_size, in_channels=cfg.latent_channels, out_channels=cfg.latent_channels,
        down_block_types=down, up_block_types=up,
        block_out_channels=cfg.unet_channels, layers_per_block=cfg.layers_per_block,
        norm_num_groups=cfg.norm_num_groups, cross_attention_dim=cfg.text_width,
        attention_head_dim=tuple(max(1, c // cfg.attention_head_dim) for c in cfg.unet_channels),
        use_linear_projection=True,
    )


def tiny_text_encoder(cfg: TinyBaseConfig, vocab_size: int) -> CLIPTextModel:
    """A small random `CLIPTextModel` whose positions cover `max_prompt_tokens`."""
    config = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=cfg.text_width, intermediate_size=cfg.text_width * 2,
        num_hidden_layers=cfg.text_layers, num_attention_heads=max(1, cfg.text_width // 32),
        max_position_embeddings=cfg.max_prompt_tokens, projection_dim=cfg.text_width,
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
    )
    return CLIPTextModel(config)


def tiny_scheduler(cfg: TinyBaseConfig) -> DDIMScheduler:
    """SD 2.x's training noise schedule (scaled-linear betas, 1000 steps)."""
    return DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", prediction_type=cfg.prediction_type,
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def train_vae(vae: AutoencoderKL, images: np.ndarray, resolution: int, cfg: TinyBaseConfig,
              appearance: AppearanceSource | None = None) -> dict[str, float | bool]:
    """Train the VAE on images [N,C,H,W] in [0,1] at `resolution` (L1 + MSE + small KL), then set
    `scaling_factor`.

    With `appearance`, a share of every batch is appearance-remapped, so the VAE encodes the
    contrasts the generator will be asked to render (a VAE that saw one contrast reconstructs
    others poorly). Runs `vae_steps` steps; the optional `vae_max_seconds` cap stops it earlier,
    and the stats say so (`stopped_by_max_seconds`). Every draw comes from `cfg.seed`.
    Returns steps, seconds, PSNR on the originals and the scaling factor.
    """
    rng = np.random.default_rng(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_learning_rate, weight_decay=0.0)
    schedule = get_scheduler(cfg.vae_lr_schedule, optimizer, num_warmup_steps=0, num_training_steps=cfg.vae_steps)
    vae.train()
    start, steps, capped = time.monotonic(), 0, False
    bar = tqdm(range(cfg.vae_steps), desc="tiny VAE", unit="step", leave=False)
    for steps in range(1, cfg.vae_steps + 1):
        rows = rng.integers(0, len(images), size=cfg.vae_batch_size)
        batch = images[rows].astype(np.float32)
        if appearance is not None:
            chosen, remapped = appearance.draw(rows, rng)
            batch[chosen] = remapped
        batch = to_generator_rgb(torch.from_numpy(batch), resolution)
        if rng.random() < 0.5:
            batch = batch.flip(-1)
        posterior = vae.encode(batch).latent_dist
        recon = vae.decode(posterior.sample(generator=generator)).sample
        loss = F.l1_loss(recon, batch) + F.mse_loss(recon, batch) + cfg.vae_kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if cfg.vae_max_seconds is not None and steps < cfg.vae_steps and time.monotonic() - start > cfg.vae_max_seconds:
            capped = True
            logger.warning(f"tiny VAE: vae_max_seconds={cfg.vae_max_seconds:g} reached after {steps} of "
                           f"{cfg.vae_steps} steps; the base is flagged stopped_by_max_seconds")
            break
    bar.close()
    vae.eval()
    images = to_generator_rgb(torch.from_numpy(images).float(), resolution)
    with torch.no_grad():
        latents = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in images.split(32)])
        probe = images[: min(len(images), 64)]
        recon = vae.decode(vae.encode(probe).latent_dist.mean).sample.clamp(-1, 1)
    mse = F.mse_loss((recon + 1) / 2, (probe + 1) / 2).item()
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    return {"vae_steps": steps, "vae_steps_planned": cfg.vae_steps, "stopped_by_max_seconds": capped,
            "vae_appearance_probability": appearance.cfg.probability if appearance else 0.0,
            "vae_seconds": time.monotonic() - start, "vae_psnr_db": 10 * math.log10(1.0 / max(mse, 1e-12)),
            "scaling_factor": vae.config.scaling_factor}


def build_tiny_base(cfg: TinyBaseConfig, images: np.ndarray, resolution: int, folder: str | Path,
                    appearance: AppearanceSource | None = None) -> dict[str, float | bool]:
    """Build the tiny base, train its VAE on `images` [N,C,H,W] in [0,1] (and their appearance
    remaps, if given), save it to `folder` atomically with its build statistics in `BUILD_STATS`."""
    torch.manual_seed(cfg.seed)
    tokenizer = build_byte_tokenizer(cfg.max_prompt_tokens)
    vae = tiny_vae(cfg, resolution)
    factor = 2 ** (len(cfg.vae_channels) - 1)
    if resolution % (factor * 2 ** (len(cfg.unet_channels) - 1)):
        raise ValueError(f"resolution {resolution} must be divisible by the VAE factor {factor} times the "
                         f"UNet's downsampling {2 ** (len(cfg.unet_channels) - 1)}")
    unet = tiny_unet(cfg, resolution // factor)
    text_encoder = tiny_text_encoder(cfg, len(tokenizer))
    stats = train_vae(vae, images, resolution, cfg, appearance)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=tiny_scheduler(cfg), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    with atomic_path(folder) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        (tmp / BUILD_STATS).write_text(json.dumps(stats, indent=1))
    return stats
