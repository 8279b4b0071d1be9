"""Stage one, part two: fill the stack store with K generated images per training mask.

The unit of work is a store shard: a dask task opens the store, generates all K images of every
sample in the shard and writes them in one call (images first, then the done flags). Each worker
process loads the pipeline once and keeps it. The coordinator submits only pending shards, so an
interrupted run resumes where it stopped, and per-image seeds make the resumed pixels identical.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from s2s2.pipeline.config.appearance import AppearanceRemapConfig
from s2s2.pipeline.config.generator import GenerateConfig
from s2s2.pipeline.config.project import ProjectConfig
from s2s2.pipeline.data.prepared import PreparedDataset
from s2s2.pipeline.errors import ConfigError

logger = logging.getLogger(__name__)

_PIPELINES: dict[tuple, Any] = {}  # per worker process: the loaded pipeline, keyed by what decides it


@dataclass(frozen=True)
class ShardTask:
    """What a worker needs to generate one shard (picklable; no open handles)."""

    store_path: str
    storage_options: dict[str, Any]
    generator_dir: str
    settings: GenerateConfig
    resolution: int
    attention: str
    appearance: AppearanceRemapConfig | None = None  # the generator's appearance remap, if it takes one


@dataclass(frozen=True)
class ShardResult:
    shard: int
    images: int
    regenerated: int
    still_bad: int
    worker: str
    seconds: float


def _worker_device(settings: GenerateConfig) -> Any:
    """This worker's device: with several GPUs, LocalCluster worker i takes GPU i (mod count)."""
    import torch

    from s2s2.pipeline.generator.loading import resolve_device

    device = resolve_device(settings.device)
    if device.type == "cuda" and torch.cuda.device_count() > 1:
        try:
            from dask.distributed import get_worker

            name = get_worker().name
        except ValueError:  # not inside a dask worker
            return device
        if isinstance(name, int):
            return torch.device("cuda", name % torch.cuda.device_count())
    return device


def worker_pipeline(task: ShardTask) -> Any:
    """The pipeline of this worker process, loaded on first use (one torch thread per process)."""
    import torch

    from s2s2.pipeline.generator.loading import load_pipeline, resolve_dtype

    device = _worker_device(task.settings)
    key = (task.generator_dir, task.settings.scheduler, str(device), task.settings.precision, task.attention)
    if key not in _PIPELINES:
        torch.set_num_threads(1)
        _PIPELINES[key] = load_pipeline(task.generator_dir, task.settings.scheduler, device,
                                        resolve_dtype(task.settings.precision, device), task.attention)
    return _PIPELINES[key]


def generate_shard(task: ShardTask, shard: int) -> ShardResult:
    """Generate and write all K images of every sample of one shard (runs on a worker)."""
    import os
    import socket

    from s2s2.pipeline.generator.sampling import generate_stack
    from s2s2.store.stack_store import StackStore

    started = time.monotonic()
    pipe = worker_pipeline(task)
    store = StackStore.open(task.store_path, mode="r+", storage_options=task.storage_options or None)
    rows = store.shard_samples(shard)
    manifest = store.manifest
    prompts = store.prompts[rows.start:rows.stop]
    originals = store.read_originals(list(rows)) if task.appearance is not None else None
    stack, regenerated, still_bad = generate_stack(
        pipe, store.read_masks(list(rows)), prompts, list(rows), store.k, len(manifest.class_names),
        manifest.image_shape, task.settings, task.resolution, originals, task.appearance)
    store.write_shard(shard, stack)
    return ShardResult(shard=shard, images=len(rows) * store.k, regenerated=regenerated, still_bad=still_bad,
                       worker=f"{socket.gethostname()}:{os.getpid()}", seconds=time.monotonic() - started)


@contextmanager
def dask_client(settings: GenerateConfig) -> Iterator[Any]:
    """A client of `scheduler_address`, or of a LocalCluster of worker processes (1 thread each):
    `workers` of them, or one per GPU, or one on a CPU-only machine."""
    import torch
    from dask.distributed import Client, LocalCluster

    if settings.scheduler_address:
        with Client(settings.scheduler_address) as client:
            yield client
        return
    gpus = torch.cuda.device_count() if settings.device != "cpu" else 0
    workers = settings.workers or max(gpus, 1)
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=40) as cluster, Client(cluster) as client:
        yield client


def run_shards(task: ShardTask, shards: list[int], images_per_shard: dict[int, int]) -> list[ShardResult]:
    """Run one task per shard on the dask cluster, with a progress bar of images/s and ETA."""
    from dask.distributed import as_completed

    results: list[ShardResult] = []
    with dask_client(task.settings) as client:
        if client.dashboard_link:
            logger.info(f"dask dashboard: {client.dashboard_link}")
        futures = [client.submit(generate_shard, task, shard, pure=False, key=f"shard-{shard}-{time.time_ns()}")
                   for shard in shards]
        with tqdm(total=sum(images_per_shard[s] for s in shards), desc="generate", unit="img") as bar:
            for future in as_completed(futures):
                result = future.result()
                results.append(result)
                bar.update(result.images)
                bar.set_postfix(shards=f"{len(results)}/{len(shards)}", regenerated=sum(r.regenerated for r in results))
    return results


def run_generate(cfg: ProjectConfig, dataset: PreparedDataset | None = None,
                 overwrite: bool = False) -> list[ShardResult]:
    """Create or reopen the store at `cfg.store.path`, bind the generator, generate pending shards.

    Returns one result per shard generated in this run (none when the store was already complete).
    """
    from s2s2.pipeline.generator.loading import controlnet_hash, generator_appearance
    from s2s2.pipeline.generator.paths import resolution_of, sampling_generator_dir
    from s2s2.store.stack_store import GeneratorIdentity, StackStore

    generator = sampling_generator_dir(cfg)
    if not (generator / "model_index.json").is_file():
        raise ConfigError(f"generator folder {generator} has no model_index.json\n"
                          "fix: run `s2s2 finetune` first, or set generate.generator_dir to a fine-tuned pipeline")
    if dataset is None:
        from s2s2.pipeline.data.prepare import prepare_dataset

        dataset = prepare_dataset(cfg.data)
    sc = cfg.store
    store = StackStore.create(sc.path, dataset, k=sc.k, split=sc.split, shard_size=sc.shard_size, dtype=sc.dtype,
                              compression=sc.compression, compression_level=sc.compression_level,
                              storage_options=sc.storage_options or None)
    settings = cfg.generate
    resolution = resolution_of(cfg, store.manifest.image_shape[-1])
    appearance = generator_appearance(generator)
    identity = GeneratorIdentity(
        base_model=cfg.generator.base_model, controlnet_hash=controlnet_hash(generator), scheduler=settings.scheduler,
        steps=settings.steps, guidance_scale=settings.guidance_scale, eta=settings.eta,
        prompt_template=store.manifest.prompt_template, seed=settings.seed, resolution=resolution,
        appearance=None if appearance is None else {"probability": settings.appearance_probability,
                                                    "remap": appearance.model_dump(mode="json")})
    store.bind_generator(identity, overwrite=overwrite)
    pending = store.pending_shards()
    logger.info(f"{sc.path}: {store.n_samples} samples x K={store.k}, {len(pending)} of {store.num_shards} shards pending; "
          f"{settings.scheduler} {settings.steps} steps, guidance {settings.guidance_scale}, {resolution} px")
    results: list[ShardResult] = []
    if pending:
        task = ShardTask(store_path=str(sc.path), storage_options=dict(sc.storage_options), generator_dir=str(generator),
                         settings=settings, resolution=resolution, attention=cfg.generator.attention,
                         appearance=appearance)
        sizes = {shard: len(store.shard_samples(shard)) * store.k for shard in pending}
        started = time.monotonic()
        results = run_shards(task, pending, sizes)
        seconds = time.monotonic() - started
        images = sum(r.images for r in results)
        logger.info(f"generated {images} images in {seconds:.1f} s ({images / seconds:.2f} img/s) on "
              f"{len({r.worker for r in results})} worker(s); regenerated {sum(r.regenerated for r in results)} "
              f"NaN/black images, {sum(r.still_bad for r in results)} still bad after retries")
    logger.info(f"store status: {store.refresh_status()}")
    return results
