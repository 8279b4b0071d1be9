"""Images/s of the tiny CPU generator: K images per pipeline call vs one at a time (p4), and the
same stack generated with 1 vs 2 dask worker processes (p6).

The generator has the embedded default's architecture and sampling settings (`configs/default.yaml`)
with untrained weights (speed does not depend on them), on synthetic masks at the default size.

    python -m bench.gen_speed            # both measurements, a few minutes on 2 cores
    python -m bench.gen_speed --quick    # smaller, about a minute
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent


def default_like_config(run_dir: str) -> Any:
    """The default experiment's generator and sampling settings, fine-tuned for one step only."""
    from s2s2.pipeline.config.base import load_config
    from s2s2.pipeline.config.project import ProjectConfig

    return load_config(ProjectConfig, REPO / "configs" / "default.yaml", overrides={
        "run_dir": run_dir, "store.path": f"{run_dir}/stack.zarr", "generator.tiny.vae_steps": 1,
        "finetune.steps": 1, "finetune.validate_every": 1000, "generate.device": "cpu"})


def build_generator(run_dir: str, n_masks: int) -> tuple[Any, Any, Path]:
    """(config, toy dataset at the default size, generator folder) for the measurements."""
    from tests.fixtures_toy import toy_dataset  # the test suite's synthetic masks (run from the repository root)
    from s2s2.stages.finetune import run_finetune

    cfg = default_like_config(run_dir)
    dataset = toy_dataset(n=n_masks, size=cfg.data.size)
    return cfg, dataset, run_finetune(cfg, dataset)


def measure_batch_speed(quick: bool = False) -> dict[str, Any]:
    """p4: images/s with K images (one mask) per pipeline call / images/s with one image per call."""
    from s2s2.pipeline.generator.loading import load_pipeline
    from s2s2.pipeline.generator.sampling import generate_stack

    torch.set_num_threads(1)
    n_masks = 2 if quick else 6
    with tempfile.TemporaryDirectory() as tmp:
        cfg, dataset, folder = build_generator(tmp, n_masks + 2)
        pipe = load_pipeline(folder, cfg.generate.scheduler, torch.device("cpu"), torch.float32)
        k, rows = cfg.store.k, list(range(n_masks))
        rates = {}
        for label, per_call in (("one image per call", 1), (f"K={k} images per call", k)):
            settings = cfg.generate.model_copy(update={"images_per_call": per_call})
            shape = (dataset.num_classes, dataset.image_shape, settings, cfg.data.size)
            spare = [n_masks]  # warm-up on a mask that is not timed
            generate_stack(pipe, dataset.masks[spare], [dataset.prompt(n_masks)], spare, 1, *shape)
            start = time.perf_counter()
            generate_stack(pipe, dataset.masks[rows], [dataset.prompt(i) for i in rows], rows, k, *shape)
            rates[label] = n_masks * k / (time.perf_counter() - start)
    rows_out = [{"mode": label, "images": n_masks * k, "images/s": round(rate, 2)} for label, rate in rates.items()]
    one, batched = rates["one image per call"], rates[f"K={k} images per call"]
    return {"value": round(batched / one, 2), "rows": rows_out,
            "note": f"{cfg.generate.scheduler} {cfg.generate.steps} steps, guidance {cfg.generate.guidance_scale}, "
                    f"{cfg.data.size} px, 1 torch thread, untrained default-architecture tiny generator"}


def measure_dask_scaling(quick: bool = False) -> dict[str, Any]:
    """p6: images/s of `run_generate` (cluster start included) with 2 worker processes / with 1."""
    from s2s2.stages.generate import run_generate

    n_masks = 16 if quick else 48
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg, dataset, _ = build_generator(tmp, n_masks)
        for workers in (1, 2):
            run = cfg.model_copy(update={
                "store": cfg.store.model_copy(update={"path": f"{tmp}/stack-{workers}.zarr", "shard_size": 2}),
                "generate": cfg.generate.model_copy(update={"workers": workers})})
            start = time.perf_counter()
            results = run_generate(run, dataset)
            seconds = time.perf_counter() - start
            images = sum(r.images for r in results)
            rows.append({"workers": workers, "images": images, "seconds": round(seconds, 1),
                         "images/s": round(images / seconds, 2),
                         "busy s per worker": round(sum(r.seconds for r in results) / workers, 1)})
    return {"value": round(rows[1]["images/s"] / rows[0]["images/s"], 2), "rows": rows,
            "note": "wall time of run_generate including LocalCluster start; 1 thread per worker process; "
                    "on a 2-core machine shared with other jobs the speedup is bounded by the free cores"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer masks: about a minute")
    args = parser.parse_args()
    print(json.dumps({"p4_gen_images_per_s": measure_batch_speed(args.quick),
                      "p6_scaling": measure_dask_scaling(args.quick)}, indent=1))


if __name__ == "__main__":
    main()
