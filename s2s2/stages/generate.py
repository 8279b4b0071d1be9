"""Stage one, part two: fill the stack store with K generated images per training mask.

The unit of work is a store shard: a dask task claims the shard (see `s2s2.store.claims`),
generates all K images of every sample in it and writes them in one call (images first, then the
done flags). Each worker process loads the pipeline once and keeps it. The coordinator submits
only pending shards that no other run holds, and repeats until every shard is done, so an
interrupted run resumes where it stopped, several `generate` runs on one store split the work,
and per-image seeds make the resumed pixels identical.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from s2s2.pipeline.config.generator import GenerateConfig
from s2s2.pipeline.config.project import ProjectConfig
from s2s2.pipeline.data.prepared import PreparedDataset
from s2s2.store.manifest import GeneratorIdentity

logger = logging.getLogger(__name__)

_PIPELINES: dict[tuple, Any] = {}  # per worker process: the loaded pipeline, keyed by what decides it


@dataclass(frozen=True)
class ShardTask:
    """What a worker needs to generate one shard (picklable; no open handles; paths absolute or URLs,
    since workers may run in another directory or on another host)."""

    store_path: str
    storage_options: dict[str, Any]
    generator_dir: str
    settings: GenerateConfig
    resolution: int
    attention: str
    identity: GeneratorIdentity
    writer: str  # this `generate` run: the owner of its shard claims
    replaces: int | None = None  # the binding this run may replace (--overwrite), else None


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


def generate_shard(task: ShardTask, shard: int) -> ShardResult | None:
    """Claim, generate and write all K images of every sample of one shard (runs on a worker).

    None when there was nothing to do: another run holds the shard or has finished it."""
    from s2s2.pipeline.generator.sampling import generate_stack
    from s2s2.store.claims import this_process
    from s2s2.store.stack_store import StackStore

    started = time.monotonic()
    store = StackStore.open(task.store_path, mode="r+", storage_options=task.storage_options or None)
    store.refuse_other_generator(task.identity, task.replaces)  # before the expensive part
    seconds = task.settings.claim_seconds
    claim = store.claims.claim(shard, task.writer, seconds)
    if claim is None:
        return None
    with store.claims.holding(claim, seconds):
        if store.bound_to(task.identity) and store.shard_done(shard):  # another run of this generator finished it
            return None
        pipe = worker_pipeline(task)
        rows = store.shard_samples(shard)
        manifest = store.manifest
        prompts = store.prompts[rows.start:rows.stop]
        stack, regenerated, still_bad = generate_stack(
            pipe, store.read_masks(list(rows)), prompts, list(rows), store.k, len(manifest.class_names),
            manifest.image_shape, task.settings, task.resolution)
        if not store.write_claimed_shard(claim, task.identity, task.replaces, stack, stale_seconds=seconds):
            return None
    return ShardResult(shard=shard, images=len(rows) * store.k, regenerated=regenerated, still_bad=still_bad,
                       worker=this_process(), seconds=time.monotonic() - started)


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
    # Worker logs only at CRITICAL: a task's error reaches the coordinator, which reports it once.
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=logging.CRITICAL) as cluster, Client(cluster) as client:
        yield client


def dashboard_link(client: Any) -> str | None:
    """The scheduler's dashboard address, or None when it has none: disabled, or bokeh missing on
    the scheduler's machine (its page would only say that bokeh is needed)."""
    if "dashboard" not in client.scheduler_info().get("services", {}):
        return None
    try:  # a lambda travels by value: the scheduler needs no s2s2 installed to answer
        has_bokeh = client.run_on_scheduler(lambda: importlib.util.find_spec("bokeh") is not None)
    except Exception:  # an informational line only: say nothing rather than something wrong
        return None
    return (client.dashboard_link or None) if has_bokeh else None


def run_shards(task: ShardTask, store: Any) -> list[ShardResult]:
    """Generate every pending shard of `store` on the dask cluster, in rounds: submit the pending
    shards no other run holds, collect, re-read the ledger; wait while the only pending shards are
    held by another run (until it finishes them or its claims expire). Progress bar of images/s."""
    from dask.distributed import as_completed

    results: list[ShardResult] = []
    pending = store.pending_for(task.identity)
    images_of = {shard: len(store.shard_samples(shard)) * store.k for shard in pending}
    counted: set[int] = set()  # shards whose images the bar shows as done
    poll = min(task.settings.claim_seconds / 4, 5.0)
    waiting = False
    with dask_client(task.settings) as client, \
            tqdm(total=sum(images_of.values()), desc="generate", unit="img") as bar:
        link = dashboard_link(client)
        if link:
            logger.info(f"dask dashboard: {link}")
        while pending:
            held = store.claims.live_claims(pending, except_writer=task.writer)
            free = [shard for shard in pending if shard not in held]
            if not free:
                if not waiting:
                    workers = ", ".join(sorted({claim.worker for claim in held.values()}))
                    logger.info(f"waiting for {len(held)} shard(s) claimed by another run ({workers}): "
                                "taken over if their claims expire")
                waiting = True
                time.sleep(poll)
            else:
                waiting = False
                futures = [client.submit(generate_shard, task, shard, pure=False, key=f"shard-{shard}-{time.time_ns()}")
                           for shard in free]
                for future in as_completed(futures):
                    result = future.result()
                    if result is not None:
                        results.append(result)
                        counted.add(result.shard)
                        bar.update(images_of.get(result.shard, 0))
                        bar.set_postfix(shards=len(results), regenerated=sum(r.regenerated for r in results))
            still = store.pending_for(task.identity)
            done_elsewhere = [shard for shard in pending if shard not in still and shard not in counted]
            bar.update(sum(images_of.get(shard, 0) for shard in done_elsewhere))
            counted.update(done_elsewhere)
            pending = still
    return results


def generator_identity(cfg: ProjectConfig, generator: Path, manifest: Any) -> GeneratorIdentity:
    """What decides the pixels of this run's generator (recorded as the store's binding)."""
    from s2s2.pipeline.generator.loading import controlnet_hash
    from s2s2.pipeline.generator.paths import resolution_of

    settings = cfg.generate
    return GeneratorIdentity(
        base_model=cfg.generator.base_model, controlnet_hash=controlnet_hash(generator), scheduler=settings.scheduler,
        steps=settings.steps, guidance_scale=settings.guidance_scale, eta=settings.eta,
        prompt_template=manifest.prompt_template, seed=settings.seed,
        resolution=resolution_of(cfg, manifest.image_shape[-1]))


def absolute(path: str | Path) -> str:
    """A local path made absolute (dask workers may run in another directory); URLs unchanged."""
    return str(path) if "://" in str(path) else str(Path(path).expanduser().resolve())


def run_generate(cfg: ProjectConfig, dataset: PreparedDataset | None = None,
                 overwrite: bool = False, force: bool = False) -> list[ShardResult]:
    """Create or reopen the store at `cfg.store.path`, check the generator against it, generate the
    pending shards (together with any other run on the same store).

    `overwrite` regenerates a store bound to another generator (refused while another run writes
    it, unless `force`). Returns one result per shard this run generated (none when complete).
    """
    from s2s2.pipeline.generator.loading import check_pipeline_folder
    from s2s2.pipeline.generator.paths import resolution_of, sampling_generator_dir
    from s2s2.store.claims import new_writer_id
    from s2s2.store.stack_store import StackStore

    generator = Path(absolute(sampling_generator_dir(cfg)))
    check_pipeline_folder(generator)
    if dataset is None:
        from s2s2.pipeline.data.prepare import prepare_dataset

        dataset = prepare_dataset(cfg.data)
    sc = cfg.store
    store_path = absolute(sc.path)
    store = StackStore.create(store_path, dataset, k=sc.k, split=sc.split, shard_size=sc.shard_size, dtype=sc.dtype,
                              compression=sc.compression, compression_level=sc.compression_level,
                              storage_options=sc.storage_options or None)
    settings = cfg.generate
    identity = generator_identity(cfg, generator, store.manifest)
    writer = new_writer_id()
    replaces = store.check_generator(identity, writer, overwrite=overwrite, force=force)
    pending = store.pending_for(identity)
    resolution = resolution_of(cfg, store.manifest.image_shape[-1])
    logger.info(f"{sc.path}: {store.n_samples} samples x K={store.k}, {len(pending)} of {store.num_shards} shards "
                f"to generate; {settings.scheduler} {settings.steps} steps, guidance {settings.guidance_scale}, "
                f"{resolution} px")
    results: list[ShardResult] = []
    if pending:
        task = ShardTask(store_path=store_path, storage_options=dict(sc.storage_options), generator_dir=str(generator),
                         settings=settings, resolution=resolution, attention=cfg.generator.attention,
                         identity=identity, writer=writer, replaces=replaces)
        started = time.monotonic()
        with store.claims.running(writer, settings.claim_seconds):
            results = run_shards(task, store)
        seconds = time.monotonic() - started
        images = sum(r.images for r in results)
        logger.info(f"generated {images} images in {seconds:.1f} s ({images / seconds:.2f} img/s) on "
                    f"{len({r.worker for r in results})} worker(s); regenerated {sum(r.regenerated for r in results)} "
                    f"NaN/black images, {sum(r.still_bad for r in results)} still bad after retries")
    logger.info(f"store status: {store.refresh_status()}")
    return results
