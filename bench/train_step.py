"""p1: what does the S2S2 step cost? Median wall time of one optimisation step, after warm-up:

- `s2s2`: the trainer's step (`Trainer.step`): B originals + B stack images as ONE forward of 2B,
  both segmentation losses, L_sc on encoder and decoder features, one backward, one optimizer step;
- `baseline_2b`: the trainer's baseline step at batch 2B (same model, same number of images);
- `authors`: the authors' way, two sequential forwards of B (original, then stack image), same losses.

The three are interleaved step by step so machine noise hits them alike. Value: the largest
s2s2 / baseline_2b ratio over the presets (target <= 1.05: the S2S2 terms are nearly free).

    python -m bench.train_step            # unet and transunet small presets, 64 px, B = 8
    python -m bench.train_step --quick
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import numpy as np
import torch

from s2s2.pipeline.config.project import ProjectConfig
from s2s2.pipeline.data.prepared import PreparedDataset
from s2s2.pipeline.losses import s2s2_loss
from s2s2.stages.train.loop import Trainer, make_accelerator

CLASSES = ("background", "csf", "grey matter", "white matter")


def synthetic_dataset(n: int, size: int, seed: int = 0) -> PreparedDataset:
    """Random 4-class masks with class-dependent intensities: enough to time steps, not to learn."""
    rng = np.random.default_rng(seed)
    masks = rng.integers(0, 4, size=(n, size, size)).astype(np.uint8)
    images = (masks[:, None] / 3.0 + rng.normal(0, 0.05, (n, 1, size, size))).astype(np.float32).clip(0, 1)
    return PreparedDataset(name="bench", images=images, masks=masks, ids=[str(i) for i in range(n)],
                           spacings=np.ones((n, 2), np.float32), class_names=CLASSES, modality="bench",
                           prompt_template="{modality} {classes}", splits={"train": list(range(n))})


def authors_step(trainer: Trainer, batch: dict[str, torch.Tensor]) -> None:
    """Two sequential forwards of B (the authors' code), the same loss, one backward and step."""
    output_0 = trainer.model(batch["original"])
    output_k = trainer.model(batch["stack_image"])
    parts = s2s2_loss(trainer.cfg.train.loss, trainer.seg_loss, output_0, output_k, batch["mask"])
    trainer.optimizer.zero_grad(set_to_none=True)
    parts.total.backward()
    trainer.optimizer.step()


def time_preset(model: str, size: int, batch: int, warmup: int, steps: int) -> dict[str, Any]:
    """Interleaved timings (seconds per step) of the three step kinds for one model preset."""
    dataset = synthetic_dataset(2 * batch, size)
    trainers = {}
    for kind in ("s2s2", "baseline_2b", "authors"):
        torch.manual_seed(0)
        every_term = {"w_seg_gen": 1.0, "a_enc": 1.0, "a_dec": 1.0}  # the full step, whatever the defaults
        cfg = ProjectConfig.model_validate({"model": {"name": model}, "train": {
            "stack": kind != "baseline_2b", "loss": every_term, "device": "cpu"}})
        trainers[kind] = Trainer(cfg, dataset, make_accelerator(cfg.train))
        trainers[kind].model.train()
    images = torch.from_numpy(dataset.images)
    masks = torch.from_numpy(dataset.masks).long()
    pair = {"original": images[:batch], "stack_image": images[batch:], "mask": masks[:batch]}
    double = {"original": images, "mask": masks}
    run = {"s2s2": lambda: trainers["s2s2"].step(pair), "baseline_2b": lambda: trainers["baseline_2b"].step(double),
           "authors": lambda: authors_step(trainers["authors"], pair)}
    times: dict[str, list[float]] = {kind: [] for kind in run}
    for i in range(warmup + steps):
        for kind, step in run.items():
            start = time.perf_counter()
            step()
            if i >= warmup:
                times[kind].append(time.perf_counter() - start)
    medians = {kind: statistics.median(values) for kind, values in times.items()}
    return {"preset": f"{model} (small, {size} px, B={batch})", "baseline_2b_s": medians["baseline_2b"],
            "s2s2_s": medians["s2s2"], "authors_s": medians["authors"],
            "ratio": medians["s2s2"] / medians["baseline_2b"], "authors_ratio": medians["authors"] / medians["s2s2"],
            "raw_s": times}


def measure_step_ratio(quick: bool = False, models: tuple[str, ...] = ("unet", "transunet"), size: int = 64,
                       batch: int = 8) -> dict[str, Any]:
    """p1 entry: rows per preset, value = the largest S2S2 / baseline-2B ratio, raw timings kept."""
    torch.set_num_threads(1)
    warmup, steps = (3, 8) if quick else (5, 30)
    measured = [time_preset(m, size, batch, warmup, steps) for m in models]
    rows = [{k: v for k, v in row.items() if k != "raw_s"} for row in measured]
    return {"value": max(r["ratio"] for r in rows), "rows": rows,
            "raw_step_s": {r["preset"]: r["raw_s"] for r in measured},
            "note": f"median of {steps} steps after {warmup} warm-up, kinds interleaved, 1 torch thread; "
                    "ratio = s2s2 / baseline_2b; authors_ratio = two forwards of B / one forward of 2B"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer steps")
    args = parser.parse_args()
    result = measure_step_ratio(quick=args.quick)
    print(json.dumps({k: v for k, v in result.items() if k != "raw_step_s"}, indent=1))


if __name__ == "__main__":
    main()
