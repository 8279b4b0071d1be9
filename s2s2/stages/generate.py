"""Stage one, part two: fill the stack store with K generated images per training mask.

The stack's sources (`generator.kind`: the fine-tuned ControlNet, the training-free synth source,
or a mix of both) each own a range of k. The unit of work is a store shard: a dask task claims it
(see `s2s2.store.claims`), makes the missing images of every source in the shard and writes the
whole shard in one call (images first, then the done flags). Each worker process loads the
ControlNet pipeline once and keeps it. The coordinator submits only pending shards that no other
run holds, and repeats until every shard is done, so an interrupted run resumes where it stopped,
several `generate` runs on one store split the work, and per-image seeds make the resumed pixels
identical.
"""

from __future__ import annotations

import importlib.util
import logging
import signal
import threading
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
from s2s2.pipeline.signals import Interrupted, StopRequest, Stopped, stopping_on_signals
from s2s2.store.manifest import VAL_SPLIT, GeneratorIdentity, SourceIdentity, StackGenerator, StackSource, SynthIdentity

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
    generator: StackGenerator  # the sources that fill the store, each with its k range
    writer: str  # this `generate` run: the owner of its shard claims
    replaces: int | None = None  # the binding this run may replace (--overwrite), else None


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
        # diffusers' (disabled) progress bars would take tqdm's default lock, a multiprocessing semaphore
        # that leaks ("leaked semaphore objects") when a stopped run terminates this worker mid-shard
        tqdm.set_lock(threading.RLock())
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
                  rows: range, num_classes: int, image_shape: tuple[int, int, int],
                  originals: np.ndarray | None = None) -> tuple[np.ndarray, int, int]:
    """Images of one source for the samples `rows`: [m, len(ks), C, H, W], regenerated, still bad.

    An appearance-randomised ControlNet also needs the samples' `originals` (its appearances are
    remaps of them)."""
    if source.identity.kind == "synth":
        from s2s2.pipeline.config.appearance import LabelsToImageConfig
        from s2s2.pipeline.generator.synth import synth_stack

        cfg = LabelsToImageConfig.model_validate(source.identity.params)
        images = synth_stack(masks, list(rows), source.ks, num_classes, image_shape[0], cfg, source.identity.seed)
        return images, 0, 0
    from s2s2.pipeline.config.appearance import AppearanceRemapConfig
    from s2s2.pipeline.generator.sampling import generate_stack

    looks = source.identity.appearance
    return generate_stack(worker_pipeline(task), masks, prompts, list(rows), len(source.ks), num_classes,
                          image_shape, task.settings, task.resolution, first_k=source.k_start, originals=originals,
                          appearance=AppearanceRemapConfig.model_validate(looks["remap"]) if looks else None)


def generate_shard(task: ShardTask, shard: int) -> ShardResult | None:
    """Claim one shard, make the missing images of every source in it and write the whole shard
    (runs on a worker). None when there was nothing to do: another run holds or finished the shard."""
    from s2s2.store.claims import this_process
    from s2s2.store.layout import to_store_dtype
    from s2s2.store.stack_store import StackStore

    started = time.monotonic()
    store = StackStore.open(task.store_path, mode="r+", storage_options=task.storage_options or None)
    store.refuse_other_generator(task.generator, task.replaces)  # before the expensive part
    seconds = task.settings.claim_seconds
    claim = store.claims.claim(shard, task.writer, seconds)
    if claim is None:
        return None
    with store.claims.holding(claim, seconds):
        rows = store.shard_samples(shard)
        done = store.done_for(task.generator, rows)
        todo = sources_to_make(done, task.generator)
        if not todo:  # another run of this generator finished it since it was submitted
            return None
        manifest = store.manifest
        shape = (len(rows), store.k, *manifest.image_shape)
        stack = store.read_shard_stack(shard) if done.any() else np.zeros(shape, dtype=manifest.dtype)
        masks = store.read_masks(list(rows))
        prompts = store.prompts[rows.start:rows.stop]
        needs_originals = any(getattr(source.identity, "appearance", None) for source in todo)
        originals = store.read_originals(list(rows)) if needs_originals else None
        regenerated = still_bad = 0
        for source in todo:
            images, again, bad = source_images(task, source, masks, prompts, rows, len(manifest.class_names),
                                               manifest.image_shape, originals)
            stack[:, source.k_start:source.k_stop] = to_store_dtype(images, manifest.dtype)
            regenerated, still_bad = regenerated + again, still_bad + bad
        if not store.write_claimed_shard(claim, task.generator, task.replaces, stack, stale_seconds=seconds):
            return None
    return ShardResult(shard=shard, images=images_to_make(done, task.generator),
                       sources=tuple(s.kind for s in todo), regenerated=regenerated, still_bad=still_bad,
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
    with _sigint_ignored_by_new_processes():
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                               silence_logs=logging.CRITICAL)
    with cluster, Client(cluster) as client:
        yield client


@contextmanager
def _sigint_ignored_by_new_processes() -> Iterator[None]:
    """SIGINT ignored while worker processes start, so they inherit that: Ctrl-C in a terminal reaches the
    whole process group, and only this process should act on it (stop, release, close the cluster),
    not every worker with a KeyboardInterrupt traceback of its own."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


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


def run_shards(task: ShardTask, store: Any, stop: StopRequest | None = None) -> list[ShardResult]:
    """Generate every pending shard of `store` on the dask cluster, in rounds: submit the pending
    shards no other run holds, collect, re-read the ledger; wait while the only pending shards are
    held by another run (until it finishes them or its claims expire). Progress bar of images/s.

    A stop signal (`stop`) cancels the shards in progress, closes the cluster, then raises `Stopped`."""
    from dask.distributed import as_completed

    results: list[ShardResult] = []
    done = store.done_for(task.generator)
    pending = store.pending_for(task.generator)
    rows = {shard: store.shard_samples(shard) for shard in pending}
    images_of = {shard: images_to_make(done[rows[shard].start:rows[shard].stop], task.generator) for shard in pending}
    counted: set[int] = set()  # shards whose images the bar shows as done
    poll = min(task.settings.claim_seconds / 4, 5.0)
    waiting = False
    stop = stop or StopRequest()
    with stop.deferred(), dask_client(task.settings) as client, \
            tqdm(total=sum(images_of.values()), desc="generate", unit="img") as bar:
        link = dashboard_link(client)
        if link:
            logger.info(f"dask dashboard: {link}")
        while pending and stop.signum is None:
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
                finished = as_completed(futures)
                while not finished.is_empty() and stop.signum is None:
                    batch = finished.next_batch(block=False)
                    if not batch:
                        time.sleep(0.2)
                    for future in batch:
                        result = future.result()
                        if result is not None:
                            results.append(result)
                            counted.add(result.shard)
                            bar.update(images_of.get(result.shard, 0))
                            bar.set_postfix(shards=len(results), regenerated=sum(r.regenerated for r in results))
                if stop.signum is not None:
                    client.cancel(futures)  # the shards in progress: never marked done, their claims released
                    break
            still = store.pending_for(task.generator)
            done_elsewhere = [shard for shard in pending if shard not in still and shard not in counted]
            bar.update(sum(images_of.get(shard, 0) for shard in done_elsewhere))
            counted.update(done_elsewhere)
            pending = still
    return results


def absolute(path: str | Path) -> str:
    """A local path made absolute (dask workers may run in another directory); URLs unchanged."""
    return str(path) if "://" in str(path) else str(Path(path).expanduser().resolve())


def controlnet_folder(cfg: ProjectConfig) -> Path:
    """The fine-tuned pipeline folder to sample from (absolute), checked to be one whose weights load
    safely."""
    from s2s2.pipeline.generator.loading import check_pipeline_folder
    from s2s2.pipeline.generator.paths import sampling_generator_dir

    generator = Path(absolute(sampling_generator_dir(cfg)))
    if not (generator / "model_index.json").is_file():
        raise ConfigError(f"generator folder {generator} has no model_index.json\n"
                          "fix: run `s2s2 finetune` first, or set generate.generator_dir to a fine-tuned pipeline; "
                          "generator.kind: synth needs no fine-tuned generator")
    check_pipeline_folder(generator)
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
            from s2s2.pipeline.generator.loading import controlnet_hash, generator_appearance

            folder = controlnet_folder(cfg)
            remap = generator_appearance(folder)
            appearance = None if remap is None else {"probability": settings.appearance_probability,
                                                     "remap": remap.model_dump(mode="json")}
            identity = GeneratorIdentity(
                base_model=cfg.generator.base_model, controlnet_hash=controlnet_hash(folder),
                scheduler=settings.scheduler, steps=settings.steps, guidance_scale=settings.guidance_scale,
                eta=settings.eta, prompt_template=prompt_template, seed=settings.seed, resolution=resolution,
                appearance=appearance)
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


def _stopped(store: Any, generator: StackGenerator, writer: str, stop: Stopped) -> Interrupted:
    """Release the claims of a stopped run and say what is kept and how to resume."""
    pending = store.pending_for(generator)
    released = store.claims.release_writer(writer, pending)
    done = store.num_shards - len(pending)
    return Interrupted(f"generate stopped by {stop}: {store.path}: {done} of {store.num_shards} shards are complete "
                       f"and kept, {len(pending)} pending (the shard(s) in progress discarded, {len(released)} "
                       "claim(s) released); resume: run the same `s2s2 generate` command again", stop.signum)


def run_generate(cfg: ProjectConfig, dataset: PreparedDataset | None = None,
                 overwrite: bool = False, force: bool = False) -> list[ShardResult]:
    """Create or reopen the store at `cfg.store.path`, check its sources against it, generate the
    pending shards (together with any other run on the same store); with `generate.val_stack`, then
    the same for the val split's masks into `store.val_path` (the stack-val store, validation only).

    `overwrite` regenerates the images of sources that changed (refused while another run writes
    the store, unless `force`). Returns one result per shard this run generated (none when complete).
    """
    cfg.generator.k_ranges(cfg.store.k)  # a K that cannot be split is refused before any work
    if dataset is None:
        from s2s2.pipeline.data.prepare import prepare_dataset

        dataset = prepare_dataset(cfg.data)
    if cfg.generate.val_stack and not dataset.splits.get(VAL_SPLIT):
        raise ConfigError(f"generate.val_stack is on but dataset {dataset.name} has no {VAL_SPLIT!r} split; fix: "
                          "give the data a val split, or set generate.val_stack=false")
    results = fill_store(cfg, dataset, cfg.store.path, cfg.store.split, overwrite, force)
    if cfg.generate.val_stack:
        results += fill_store(cfg, dataset, cfg.store.val_path, VAL_SPLIT, overwrite, force)
    return results


def fill_store(cfg: ProjectConfig, dataset: PreparedDataset, path: str, split: str, overwrite: bool,
               force: bool) -> list[ShardResult]:
    """Create or reopen the store of `split` at `path` and generate its pending shards."""
    from s2s2.pipeline.generator.paths import resolution_of
    from s2s2.store.claims import new_writer_id
    from s2s2.store.stack_store import StackStore

    sc = cfg.store
    kinds = {share.kind for share in cfg.generator.source_shares()}
    generator_dir = str(controlnet_folder(cfg)) if "controlnet" in kinds else ""
    store_path = absolute(path)
    store = StackStore.create(store_path, dataset, k=sc.k, split=split, shard_size=sc.shard_size, dtype=sc.dtype,
                              compression=sc.compression, compression_level=sc.compression_level,
                              storage_options=sc.storage_options or None)
    settings = cfg.generate
    resolution = resolution_of(cfg, store.manifest.image_shape[-1])
    generator = stack_generator(cfg, store.k, store.manifest.prompt_template, resolution)
    writer = new_writer_id()
    replaces = store.check_generator(generator, writer, overwrite=overwrite, force=force)
    pending = store.pending_for(generator)
    logger.info(f"{path}: {store.n_samples} samples ({split}) x K={store.k}, {len(pending)} of {store.num_shards} shards "
                f"to generate; {describe_sources(generator)}")
    results: list[ShardResult] = []
    if pending:
        task = ShardTask(store_path=store_path, storage_options=dict(sc.storage_options), generator_dir=generator_dir,
                         settings=settings, resolution=resolution, attention=cfg.generator.attention,
                         generator=generator, writer=writer, replaces=replaces)
        started = time.monotonic()
        with store.claims.running(writer, settings.claim_seconds), stopping_on_signals() as stop:
            try:
                results = run_shards(task, store, stop)
            except Stopped as stopped:  # the cluster is closed by now: no worker of this run writes any more
                raise _stopped(store, generator, writer, stopped) from None
        seconds = time.monotonic() - started
        images = sum(r.images for r in results)
        logger.info(f"generated {images} images in {seconds:.1f} s ({images / seconds:.2f} img/s) on "
                    f"{len({r.worker for r in results})} worker(s); regenerated {sum(r.regenerated for r in results)} "
                    f"NaN/black images, {sum(r.still_bad for r in results)} still bad after retries")
    logger.info(f"store status: {store.refresh_status()}")
    return results
