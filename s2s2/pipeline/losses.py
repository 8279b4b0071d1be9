"""The S2S2 objective: segmentation losses on both images plus semantic consistency.

    L = w_seg*L_seg(p0, y) + w_seg_gen*L_seg(pk, y) + a_enc*sum_e L_sc(f0_e, fk_e) + a_dec*L_sc(g0, gk)
    L_sc(u, v) = mean over positions of (1 - cos(u, v)), cosine over the channel dimension

The baseline is the same function with no stack image: L = w_seg*L_seg(p0, y).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from s2s2.pipeline.config.train import LossConfig
from s2s2.pipeline.monai_import import import_monai
from s2s2.pipeline.segmenters import SegOutput


def channel_dim(feature: torch.Tensor) -> int:
    """Where the channels are: `[B,N,C]` token sequences -> -1, `[B,C,h,w]` maps -> 1."""
    if feature.ndim == 3:
        return -1
    if feature.ndim == 4:
        return 1
    raise ValueError(f"features must be [B,N,C] tokens or [B,C,h,w] maps, got shape {tuple(feature.shape)}")


def position_distance(u: torch.Tensor, v: torch.Tensor, distance: str = "cosine") -> torch.Tensor:
    """Per-position distance between two feature tensors: `1 - cos` or mean |u - v| over channels.

    Returns `[B,N]` for tokens and `[B,h,w]` for maps.
    """
    if u.shape != v.shape:
        raise ValueError(f"feature shapes differ: {tuple(u.shape)} vs {tuple(v.shape)}")
    dim = channel_dim(u)
    u, v = u.float(), v.float()  # in half precision the sums of squares overflow and the clamp underflows
    if distance == "cosine":
        # Written out: F.cosine_similarity reduces over a strided channel dim ~20x slower on CPU.
        dot, uu, vv = (u * v).sum(dim), (u * u).sum(dim), (v * v).sum(dim)
        return 1.0 - dot * torch.rsqrt((uu * vv).clamp_min(1e-16))  # |u||v| clamped at 1e-8
    if distance == "l1":
        return (u - v).abs().mean(dim=dim)
    raise ValueError(f"distance must be 'cosine' or 'l1', got {distance!r}")


def class_frequency_weights(mask: torch.Tensor, grid: tuple[int, int], num_classes: int) -> torch.Tensor:
    """Weight of each feature position: 1 - (frequency of its class in the image's mask).

    The mask `[B,H,W]` is resized (nearest) to the feature grid; frequencies come from the full mask.
    """
    onehot = F.one_hot(mask.long(), num_classes).float()  # [B,H,W,K]
    frequency = onehot.mean(dim=(1, 2))  # [B,K]
    small = F.interpolate(mask[:, None].float(), size=grid, mode="nearest")[:, 0].long()  # [B,h,w]
    return 1.0 - torch.gather(frequency, 1, small.flatten(1)).view_as(small)


def consistency_loss(u: torch.Tensor, v: torch.Tensor, distance: str = "cosine",
                     mask: torch.Tensor | None = None, num_classes: int | None = None) -> torch.Tensor:
    """L_sc between the features of the originals and of their stack images (a scalar).

    With `mask`, positions are weighted by `class_frequency_weights` and the sum is normalised by the
    total weight. Token sequences `[B,N,C]` are placed on a grid of the mask's aspect ratio.
    """
    per_position = position_distance(u, v, distance)
    if mask is None:
        return per_position.mean()
    if num_classes is None:
        raise ValueError("the class-weighted consistency loss needs num_classes")
    if per_position.ndim == 2:  # tokens: recover the (h, w) grid from N and the mask's aspect ratio
        n, (height, width) = per_position.shape[1], mask.shape[-2:]
        h = int(round((n * height / width) ** 0.5))
        if h * (n // h) != n:
            raise ValueError(f"{n} tokens do not form a grid of aspect {height}:{width}")
        per_position = per_position.view(-1, h, n // h)
    weights = class_frequency_weights(mask, tuple(per_position.shape[-2:]), num_classes)
    return (weights * per_position).sum() / weights.sum().clamp_min(1e-8)


class BCEDiceLoss(nn.Module):
    """Sigmoid BCE + sigmoid Dice on every class channel against the one-hot mask (background included).

    Written out because MONAI's `DiceCELoss(sigmoid=True)` pairs its sigmoid Dice with a *softmax* CE
    whenever the logits have two or more channels (it picks BCE only for one channel).
    """

    def __init__(self, lambda_bce: float = 1.0, lambda_dice: float = 1.0) -> None:
        super().__init__()
        import_monai()
        from monai.losses import DiceLoss

        self.dice = DiceLoss(to_onehot_y=True, sigmoid=True)
        self.lambda_bce, self.lambda_dice = lambda_bce, lambda_dice

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """`logits` [B,K,H,W], `target` [B,1,H,W] class ids."""
        onehot = F.one_hot(target[:, 0].long(), logits.shape[1]).permute(0, 3, 1, 2).to(logits.dtype)
        bce = F.binary_cross_entropy_with_logits(logits, onehot)
        return self.lambda_bce * bce + self.lambda_dice * self.dice(logits, target)


def build_seg_loss(cfg: LossConfig) -> nn.Module:
    """The base segmentation loss: softmax CE + softmax Dice (MONAI's DiceCELoss), or sigmoid BCE +
    sigmoid Dice per class channel (`BCEDiceLoss`)."""
    if cfg.seg == "bce_dice":
        return BCEDiceLoss(cfg.lambda_ce, cfg.lambda_dice)
    import_monai()
    from monai.losses import DiceCELoss

    return DiceCELoss(to_onehot_y=True, softmax=True, lambda_ce=cfg.lambda_ce, lambda_dice=cfg.lambda_dice)


def stack_terms_active(cfg: LossConfig) -> bool:
    """Whether any term of the objective looks at the stack image. With all of them at zero the
    trainer forwards the originals alone: the 2B forward would let the stack images change the
    batch-norm statistics, so S2S2 would no longer reduce to the baseline."""
    return cfg.w_seg_gen > 0 or cfg.a_enc > 0 or cfg.a_dec > 0


def method_label(stack: bool, cfg: LossConfig) -> str:
    """What a run trained, for every table: `baseline` (no stack), `s2s2` (L_sc on encoder or decoder
    features), or `stack seg-only` (stack images in the segmentation loss, no L_sc: the SynthSeg-style
    ablation), so a run without the consistency term is never reported as S2S2."""
    if not stack:
        return "baseline"
    if cfg.a_enc == 0 and cfg.a_dec == 0 and cfg.w_seg_gen > 0:
        return "stack seg-only"
    return "s2s2"


class LossParts(NamedTuple):
    """The loss of one step and its named parts (what the progress bar and the CSV log show)."""

    total: torch.Tensor
    seg: torch.Tensor
    seg_gen: torch.Tensor
    enc: torch.Tensor
    dec: torch.Tensor


def split_output(output: SegOutput, batch: int) -> tuple[SegOutput, SegOutput]:
    """Split the output of the 2B forward into (originals, stack images)."""
    head = SegOutput(output.logits[:batch], [f[:batch] for f in output.encoder_features],
                     output.decoder_feature[:batch])
    tail = SegOutput(output.logits[batch:], [f[batch:] for f in output.encoder_features],
                     output.decoder_feature[batch:])
    return head, tail


def s2s2_loss(cfg: LossConfig, seg_loss: nn.Module, original: SegOutput, stack: SegOutput | None,
              mask: torch.Tensor) -> LossParts:
    """The S2S2 objective for one batch; with `stack=None`, the baseline (segmentation loss only)."""
    target = mask[:, None].long()
    seg = seg_loss(original.logits, target)
    zero = seg.new_zeros(())
    if stack is None:
        return LossParts(cfg.w_seg * seg, seg, zero, zero, zero)
    num_classes = original.logits.shape[1]
    weight_mask = mask if cfg.class_weighted else None
    seg_gen = seg_loss(stack.logits, target) if cfg.w_seg_gen > 0 else zero
    enc = zero
    if cfg.a_enc > 0:
        enc = sum((consistency_loss(u, v, cfg.distance, weight_mask, num_classes)
                   for u, v in zip(original.encoder_features, stack.encoder_features)), zero)
    dec = zero
    if cfg.a_dec > 0:
        dec = consistency_loss(original.decoder_feature, stack.decoder_feature, cfg.distance, weight_mask, num_classes)
    total = cfg.w_seg * seg + cfg.w_seg_gen * seg_gen + cfg.a_enc * enc + cfg.a_dec * dec
    return LossParts(total, seg, seg_gen, enc, dec)
