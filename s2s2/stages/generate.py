"""Stage one, part two: fill the stack store with K generated images per training mask.

The stack's sources (`generator.kind`: the fine-tuned ControlNet, the training-free synth source,
or a mix of both) each own a range of k. The unit of work is a store shard: a dask task opens the
store, makes the missing images of every source in the shard and writes the whole shard in one call
(images first, then the done flags). Each worker process loads the ControlNet pipeline once and
keeps it. The coordinator submits only pending shards, so an interrupted run resumes where it
stopped, and per-image seeds make the resumed pixels identical.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from s2s2.pipeline.config.generator import GenerateConfig
from s2s2.pipeline.config.project import ProjectConfig
from s2s2.pipeline.data.prepared import PreparedDataset
from s2s2.pipeline.errors import ConfigError
from s2s2.store.manifest import GeneratorIdentity, SourceIdentity, StackGenerator, StackSource, SynthIdentity

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
    generator: StackGenerator  # the sources bound to the store, each with its k range


@dataclass(frozen=True)
class ShardResult:
    shard: int
    images: int
    sources: tuple[str, ...]  # kinds of the sources whose images this task made
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


def sources_to_make(done: np.ndarray, generator: StackGenerator) -> list[StackSource]:
    """The sources with any image not done in a shard's ledger rows `done` [S,K]: a task remakes
    all of their images (same seeds, same pixels) and keeps the other sources' images."""
    return [source for source in generator.sources if not done[:, source.k_start:source.k_stop].all()]


def images_to_make(done: np.ndarray, generator: StackGenerator) -> int:
    """How many images a task makes for a shard whose ledger rows are `done` [S,K]."""
    return len(done) * sum(len(source.ks) for source in sources_to_make(done, generator))


def source_images(task: ShardTask, source: StackSource, masks: np.ndarray, prompts: list[str],
                  rows: range, num_classes: int, image_shape: tuple[int, int, int]) -> tuple[np.ndarray, int, int]:
    """Images of one source for the samples `rows`: [m, len(ks), C, H, W], regenerated, still bad."""
    if source.identity.kind == "synth":
        from s2s2.pipeline.config.appearance import LabelsToImageConfig
        from s2s2.pipeline.generator.synth import synth_stack

        cfg = LabelsToImageConfig.model_validate(source.identity.params)
        images = synth_stack(masks, list(rows), source.ks, num_classes, image_shape[0], cfg, source.identity.seed)
        return images, 0, 0
    from s2s2.pipeline.generator.sampling import generate_stack

    return generate_stack(worker_pipeline(task), masks, prompts, list(rows), len(source.ks), num_classes,
                          image_shape, task.settings, task.resolution, first_k=source.k_start)


def generate_shard(task: ShardTask, shard: int) -> ShardResult:
    """Make the missing images of every source of one shard and write the whole shard (runs on a worker)."""
    import os
    import socket

    from s2s2.store.layout import to_store_dtype
    from s2s2.store.stack_store import StackStore

    started = time.monotonic()
    store = StackStore.open(task.store_path, mode="r+", storage_options=task.storage_options or None)
    rows = store.shard_samples(shard)
    manifest = store.manifest
    done = store.done_ledger()[rows.start:rows.stop]
    todo = sources_to_make(done, task.generator)
    shape = (len(rows), store.k, *manifest.image_shape)
    stack = store.read_shard_stack(shard) if done.any() else np.zeros(shape, dtype=manifest.dtype)
    masks = store.read_masks(list(rows))
    prompts = store.prompts[rows.start:rows.stop]
    regenerated = still_bad = 0
    for source in todo:
        images, again, bad = source_images(task, source, masks, prompts, rows, len(manifest.class_names),
                                           manifest.image_shape)
        stack[:, source.k_start:source.k_stop] = to_store_dtype(images, manifest.dtype)
        regenerated, still_bad = regenerated + again, still_bad + bad
    store.write_shard(shard, stack)
    return ShardResult(shard=shard, images=images_to_make(done, task.generator),
                       sources=tuple(s.kind for s in todo), regenerated=regenerated, still_bad=still_bad,
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


def controlnet_folder(cfg: ProjectConfig) -> Path:
    """The fine-tuned pipeline folder to sample from, checked to be one."""
    from s2s2.pipeline.generator.paths import sampling_generator_dir

    generator = sampling_generator_dir(cfg)
    if not (generator / "model_index.json").is_file():
        raise ConfigError(f"generator folder {generator} has no model_index.json\n"
                          "fix: run `s2s2 finetune` first, or set generate.generator_dir to a fine-tuned pipeline; "
                          "generator.kind: synth needs no fine-tuned generator")
    return generator


def stack_generator(cfg: ProjectConfig, k: int, prompt_template: str, resolution: int) -> StackGenerator:
    """The sources that fill the K images of every sample, with each one's identity and k range."""
    from importlib.metadata import version

    settings = cfg.generate
    sources = []
    for kind, start, stop in cfg.generator.k_ranges(k):
        if kind == "synth":
            identity: SourceIdentity = SynthIdentity(params=cfg.generator.synth.model_dump(mode="json"), seed=settings.seed,
                                          monai_version=version("monai"))
        else:
            from s2s2.pipeline.generator.loading import controlnet_hash

            identity = GeneratorIdentity(
                base_model=cfg.generator.base_model, controlnet_hash=controlnet_hash(controlnet_folder(cfg)),
                scheduler=settings.scheduler, steps=settings.steps, guidance_scale=settings.guidance_scale,
                eta=settings.eta, prompt_template=prompt_template, seed=settings.seed, resolution=resolution)
        sources.append(StackSource(k_start=start, k_stop=stop, identity=identity))
    return StackGenerator(sources=tuple(sources))


def describe_sources(generator: StackGenerator) -> str:
    """e.g. 'k 0-1 controlnet (unipc 20 steps, guidance 1.0, 64 px), k 2-3 synth'."""
    parts = []
    for source in generator.sources:
        identity = source.identity
        detail = (f" ({identity.scheduler} {identity.steps} steps, guidance {identity.guidance_scale}, "
                  f"{identity.resolution} px)" if identity.kind == "controlnet" else "")
        parts.append(source.label + detail)
    return ", ".join(parts)


def run_generate(cfg: ProjectConfig, dataset: PreparedDataset | None = None,
                 overwrite: bool = False) -> list[ShardResult]:
    """Create or reopen the store at `cfg.store.path`, bind its sources, generate pending shards.

    Returns one result per shard generated in this run (none when the store was already complete).
    """
    from s2s2.pipeline.generator.paths import resolution_of
    from s2s2.store.stack_store import StackStore

    sc = cfg.store
    cfg.generator.k_ranges(sc.k)  # a K that cannot be split is refused before any work
    kinds = {share.kind for share in cfg.generator.source_shares()}
    generator_dir = str(controlnet_folder(cfg)) if "controlnet" in kinds else ""
    if dataset is None:
        from s2s2.pipeline.data.prepare import prepare_dataset

        dataset = prepare_dataset(cfg.data)
    store = StackStore.create(sc.path, dataset, k=sc.k, split=sc.split, shard_size=sc.shard_size, dtype=sc.dtype,
                              compression=sc.compression, compression_level=sc.compression_level,
                              storage_options=sc.storage_options or None)
    settings = cfg.generate
    resolution = resolution_of(cfg, store.manifest.image_shape[-1])
    generator = stack_generator(cfg, store.k, store.manifest.prompt_template, resolution)
    store.bind_generator(generator, overwrite=overwrite)
    pending = store.pending_shards()
    logger.info(f"{sc.path}: {store.n_samples} samples x K={store.k}, {len(pending)} of {store.num_shards} shards "
                f"pending; {describe_sources(generator)}")
    results: list[ShardResult] = []
    if pending:
        task = ShardTask(store_path=str(sc.path), storage_options=dict(sc.storage_options), generator_dir=generator_dir,
                         settings=settings, resolution=resolution, attention=cfg.generator.attention,
                         generator=generator)
        done = store.done_ledger()
        sizes = {}
        for shard in pending:
            rows = store.shard_samples(shard)
            sizes[shard] = images_to_make(done[rows.start:rows.stop], generator)
        started = time.monotonic()
        results = run_shards(task, pending, sizes)
        seconds = time.monotonic() - started
        images = sum(r.images for r in results)
        logger.info(f"generated {images} images in {seconds:.1f} s ({images / seconds:.2f} img/s) on "
              f"{len({r.worker for r in results})} worker(s); regenerated {sum(r.regenerated for r in results)} "
              f"NaN/black images, {sum(r.still_bad for r in results)} still bad after retries")
    logger.info(f"store status: {store.refresh_status()}")
    return results
