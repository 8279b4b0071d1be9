"""The training loop of stage two: a segmenter, baseline or S2S2, from the stack store (`s2s2 train`).

One step reads like the method's equation:
    p0, pk = model(cat[x0, xk])                      # one forward of 2B images
    L = w_seg*L_seg(p0,y) + w_seg_gen*L_seg(pk,y) + a_enc*L_sc(f0,fk) + a_dec*L_sc(g0,gk)
The baseline runs the same loop with the stack off: L = w_seg*L_seg(p0,y). With every stack term at
zero (w_seg_gen = a_enc = a_dec = 0) S2S2 forwards the originals alone (batch-norm statistics over 2B
images would differ), and so reproduces the baseline of the same seed exactly: same samples, batch
order, augmentation draws, init and steps (see datasets.py).

Runs are defined by `train.steps`; `train.max_seconds` is an optional wall-time cap, and a run it
stopped says so (`stopped_by_time_cap` in summary.json). The best validation checkpoint becomes
model.safetensors; without a val split there is no selection: the last weights are kept and
summary.json says `model_selection: last`.

Outputs in {run_dir}/train/{name}/: config.yaml (resolved), log.csv, progress.png, model.safetensors
(best validation Dice), last.safetensors + state.pt (resume), summary.json.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.tracking import GeneralTracker
from accelerate.utils import ProjectConfiguration
from tqdm import tqdm

from s2s2.pipeline.atomic import atomic_path
from s2s2.pipeline.checkpoint import load_module, load_state, save_state
from s2s2.pipeline.config.project import ProjectConfig
from s2s2.pipeline.config.train import TrainConfig
from s2s2.pipeline.data.prepared import PreparedDataset
from s2s2.pipeline.distributed import any_process, processes_in_sync
from s2s2.pipeline.errors import ConfigError, S2S2Error, StoreError
from s2s2.pipeline.losses import LossParts, build_seg_loss, method_label, s2s2_loss, split_output, stack_terms_active
from s2s2.pipeline.metrics import nanmean
from s2s2.pipeline.seeding import seed_everything, set_torch_rng_state, torch_rng_state
from s2s2.pipeline.segmenters import ACTIVATION, build_segmenter, model_identity, save_weights
from s2s2.pipeline.signals import Interrupted, StopRequest, stopping_on_signals
from s2s2.stages.run_folder import discard_failed_start, run_folder, start_run_folder
from s2s2.stages.train.augment import PairAugment, device_images
from s2s2.stages.train.batchnorm import originals_only_running_stats
from s2s2.stages.train.datasets import (BaselineDataset, EpochBatchSampler, StackPairDataset, batches_per_epoch,
                                        collate_visits)
from s2s2.stages.train.schedule import learning_rate_schedule
from s2s2.stages.train.trackers import LOSS_NAMES, CSVTracker, log_columns, write_progress_png
from s2s2.stages.train.stack_val import (
    StackVal,
    check_select_on,
    load_stack_val,
    selected_row,
    selection_score,
)
from s2s2.stages.train.validation import eval_class_ids, validate, validate_stack
from s2s2.store.provenance import run_provenance

logger = logging.getLogger(__name__)

STATE_KEYS = ("step", "optimizer", "schedule", "rng", "best", "elapsed", "history")
RESUME_FIX = ("fix: train again without --resume (the run restarts at step 0), or restore state.pt and "
              "last.safetensors from a copy")


def make_accelerator(cfg: TrainConfig, trackers: list[GeneralTracker] | None = None,
                     folder: Path | None = None) -> Accelerator:
    """This process's place in the job: started by `torchrun` or `accelerate launch` (NCCL on GPUs, gloo on
    CPUs), or alone. `auto` picks this rank's GPU when there is one, else the CPU. `trackers` receive
    what `accelerator.log` logs (on the main process), and accelerate's TensorBoard tracker too, in
    `folder`/tensorboard, with `train.tensorboard`."""
    use_gpu = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if use_gpu and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no GPU is visible; set train.device=cpu or auto")
    if cfg.mixed_precision == "fp16" and not use_gpu:
        raise ConfigError("train.mixed_precision=fp16 needs a GPU (its gradient scaler runs on CUDA); fix: set "
                          "train.mixed_precision=bf16 (CPUs and recent GPUs) or no")
    log_with: list[GeneralTracker | str] = list(trackers or [])
    if cfg.tensorboard:
        from accelerate.utils import is_tensorboard_available

        if not is_tensorboard_available():
            raise ConfigError("train.tensorboard=true needs the tensorboard package; fix: pip install tensorboard, "
                              "or set train.tensorboard=false (log.csv and progress.png are always written)")
        log_with.append("tensorboard")
    try:
        project = None if folder is None else ProjectConfiguration(project_dir=str(folder),
                                                                   logging_dir=str(folder / "tensorboard"))
        return Accelerator(cpu=not use_gpu, mixed_precision=cfg.mixed_precision, log_with=log_with or None,
                           project_config=project)
    except ValueError as err:  # accelerate's state is per process and was set up differently before
        raise S2S2Error(f"cannot set up training in this process: {err}; fix: run `s2s2 train` in its own "
                        "process (not after `s2s2 finetune` in the same Python session)") from None


def build_train_set(cfg: ProjectConfig, dataset: PreparedDataset) -> BaselineDataset:
    """The train split, with (S2S2) or without (baseline) a stack image per visit from the store."""
    transform = PairAugment(cfg.train.augment, cfg.train.location_scale, cfg.train.gin)
    if not cfg.train.stack:
        return BaselineDataset(dataset, cfg.train.seed, transform)
    path = cfg.store.path
    if "://" not in path and not Path(path).exists():
        raise StoreError(f"{path}: no stack store here; fix: run `make generate` (or `s2s2 stack init` and "
                         "`s2s2 generate`), point store.path at an existing stack, or train the baseline "
                         "with --set train.stack=false")
    pairs = StackPairDataset(dataset, path, seed=cfg.train.seed, transform=transform,
                             allow_incomplete=cfg.store.allow_incomplete,
                             storage_options=cfg.store.storage_options or None, stack_k=cfg.train.stack_k)
    manifest = pairs.manifest
    if tuple(manifest.class_names) != tuple(dataset.class_names):
        raise StoreError(f"{path}: the store has {len(manifest.class_names)} classes {list(manifest.class_names)}, "
                         f"the data has {dataset.num_classes} {list(dataset.class_names)}; fix: use the store made "
                         "for this dataset")
    if tuple(manifest.image_shape) != tuple(dataset.image_shape):
        raise StoreError(f"{path}: the store holds images {tuple(manifest.image_shape)}, the data "
                         f"{dataset.image_shape}; fix: set data.size to the store's size or regenerate the stack")
    return pairs


class Trainer:
    """Holds the model, optimizer, schedule and history of one run; `step()` is one optimisation step.

    `accelerator` places the model and wraps it for distributed data parallelism (`self.ddp`);
    `self.model` is the bare module that checkpoints and validation use."""

    def __init__(self, cfg: ProjectConfig, dataset: PreparedDataset, accelerator: Accelerator,
                 stack_val: StackVal | None = None) -> None:
        self.cfg, self.dataset, self.accelerator = cfg, dataset, accelerator
        self.device = accelerator.device
        self.folder = run_folder(cfg)
        self.identity = model_identity(cfg.model, dataset.image_shape[0], dataset.num_classes, dataset.image_shape[1])
        self.model = build_segmenter(cfg.model, dataset.image_shape[0], dataset.num_classes, dataset.image_shape[1])
        params = self.model.parameters()
        t = cfg.train
        optimizer = (torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay) if t.optimizer == "adamw"
                     else torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay))
        self.schedule = learning_rate_schedule(optimizer, t)
        self.ddp, self.optimizer = accelerator.prepare(self.model, optimizer)
        self.seg_loss = build_seg_loss(t.loss)
        # Forward the stack images only when a term uses them (2B batch-norm statistics otherwise).
        self.forward_stack = t.stack and stack_terms_active(t.loss)
        # Model selection on the val split; without one, the last weights (never the training split).
        self.selects_on_val = bool(dataset.splits.get("val"))
        # The stack images of the val masks (store.val_path), when there are any: the stack-val Dice.
        self.stack_val = stack_val if self.selects_on_val else None
        self.step_index = 0
        self.lr = t.lr  # the rate of the latest step
        self.best = -1.0
        self.elapsed = 0.0
        self.history: list[dict[str, float]] = []
        self.eval_ids = eval_class_ids(dataset.class_names, cfg.evaluate.eval_classes)

    # --- one step: the method's equation --------------------------------------------------------
    def step(self, batch: dict[str, Any]) -> LossParts:
        original = device_images(batch, "original", self.device)  # float, photometrics applied here
        mask = batch["mask"].to(self.device, non_blocking=True).long()  # handed over in its stored dtype
        if self.forward_stack:
            stack_image = device_images(batch, "stack_image", self.device)
            with (nullcontext() if self.cfg.train.bn_stack_stats
                  else originals_only_running_stats(self.model, len(original))):
                output_0, output_k = split_output(self.ddp(torch.cat([original, stack_image])), len(original))
        else:
            output_0, output_k = self.ddp(original), None
        parts = s2s2_loss(self.cfg.train.loss, self.seg_loss, output_0, output_k, mask)
        self._stop_if_not_finite(parts)
        self.optimizer.zero_grad(set_to_none=True)
        self.accelerator.backward(parts.total)
        if self.cfg.train.grad_clip:
            self.accelerator.clip_grad_norm_(self.ddp.parameters(), self.cfg.train.grad_clip)
        self.lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.schedule.step()
        self.step_index += 1
        return parts

    def _stop_if_not_finite(self, parts: LossParts) -> None:
        if any_process(self.accelerator, not bool(torch.isfinite(parts.total.detach()).item())):
            last = self.folder / "last.safetensors"
            kept = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was written yet"
            values = ", ".join(f"{n}={float(v.detach()):.4g}" for n, v in zip(LOSS_NAMES, parts))
            raise S2S2Error(f"training stopped: the loss is not finite at step {self.step_index + 1} ({values}); "
                            f"{kept}; fix: lower train.lr or set train.grad_clip, check the data for NaN, "
                            "then rerun (with --resume to continue from the checkpoint)")

    # --- checkpoints ----------------------------------------------------------------------------
    def save_last(self) -> None:
        """Weights, optimizer, schedule, RNG and history at this step: what --resume continues from."""
        save_weights(self.model, self.folder / "last.safetensors", {**self.identity, "step": str(self.step_index)})
        save_state({"step": self.step_index, "optimizer": self.optimizer.state_dict(),
                    "schedule": self.schedule.state_dict(), "rng": torch_rng_state(), "best": self.best,
                    "elapsed": self.elapsed, "history": self.history,
                    "scaler": self.accelerator.scaler.state_dict() if self.accelerator.scaler else None},
                   self.folder / "state.pt")

    def load_last(self) -> None:
        state_path = self.folder / "state.pt"
        if not state_path.is_file():
            raise S2S2Error(f"cannot resume: {state_path} does not exist; fix: train without --resume first")
        state = load_state(state_path, STATE_KEYS, "cannot resume", RESUME_FIX)
        load_module(self.model, self.folder / "last.safetensors", {**self.identity, "step": str(state["step"])},
                    missing_fix=RESUME_FIX, unreadable_fix=RESUME_FIX, mismatch_fix=RESUME_FIX)
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        if self.accelerator.scaler is not None and state.get("scaler"):
            self.accelerator.scaler.load_state_dict(state["scaler"])
        set_torch_rng_state(state["rng"])
        self.step_index, self.best, self.elapsed = state["step"], state["best"], state["elapsed"]
        self.history = state["history"]

    def validate_and_keep_best(self) -> dict[str, float]:
        """Validation Dice (real val, and stack-val when there is a stack-val store); the best weights
        (`train.select_on`, means over the evaluation classes) go to model.safetensors.
        Without a val split: no validation, the latest weights go to model.safetensors."""
        if not self.selects_on_val:
            save_weights(self.model, self.folder / "model.safetensors", self.identity)
            return {}
        scores = validate(self.model, self.dataset, self.device, self.cfg.evaluate.batch_size,
                          ACTIVATION[self.cfg.train.loss.seg])
        row = {"val_dice_mean": nanmean([scores[n] for n in self.eval_ids]), **{f"val_{n}": v for n, v in scores.items()}}
        if self.stack_val is not None:
            stack_scores = validate_stack(self.model, self.stack_val, self.dataset.class_names, self.device,
                                          self.cfg.evaluate.batch_size, ACTIVATION[self.cfg.train.loss.seg])
            row.update({"stack_val_dice_mean": nanmean([stack_scores[n] for n in self.eval_ids]),
                        **{f"stack_val_{n}": v for n, v in stack_scores.items()}})
        score = selection_score(self.cfg.train.select_on, row)
        if score > self.best or not (self.folder / "model.safetensors").is_file():
            self.best = max(score, self.best) if not math.isnan(score) else self.best
            save_weights(self.model, self.folder / "model.safetensors", self.identity)
        return row


def _interrupted(name: str, received: signal.Signals, trainer: Trainer, start_step: int) -> Interrupted:
    """What a run stopped by a signal says: where it stands and how to continue."""
    if trainer.step_index > start_step:
        where = (f"after step {trainer.step_index} of {trainer.cfg.train.steps}; the checkpoint in {trainer.folder} "
                 f"(last.safetensors + state.pt) holds step {trainer.step_index}")
    elif start_step:
        where = f"before its next step; {trainer.folder} still holds step {start_step}"
    else:
        return Interrupted(f"train {name}: stopped by {received.name} before its first step; nothing was kept; "
                           "to train, run the same command again", received.value)
    return Interrupted(f"train {name}: stopped by {received.name} {where}; to continue, run the same command "
                       "with --resume", received.value)


def run_train(cfg: ProjectConfig, resume: bool = False, stop_after: int | None = None,
              dataset: PreparedDataset | None = None, overwrite: bool = False) -> Path:
    """Train the configured segmenter; returns the run folder.

    A folder that holds another run is refused unless `overwrite` (which replaces it) or `resume`,
    which continues from last.safetensors + state.pt at the exact step. `stop_after` ends this
    invocation after that many steps (saving a resumable checkpoint), e.g. for time-sliced schedulers.
    `dataset` replaces `prepare_dataset(cfg.data)` (tests and notebooks that hold the data in memory).
    """
    t = cfg.train
    csv_log = CSVTracker(run_folder(cfg) / "log.csv")
    accelerator = make_accelerator(t, [csv_log], run_folder(cfg))
    world_size, is_main = accelerator.num_processes, accelerator.is_main_process
    if t.batch_size % world_size:
        raise ConfigError(f"train.batch_size={t.batch_size} must be divisible by the {world_size} processes")
    seed_everything(t.seed, t.deterministic)
    if dataset is None:
        from s2s2.pipeline.data.prepare import prepare_dataset

        dataset = prepare_dataset(cfg.data)
    train_set = build_train_set(cfg, dataset)
    check_select_on(cfg, dataset)
    stack_val = load_stack_val(cfg, dataset) if dataset.splits.get("val") else None
    steps_per_epoch = batches_per_epoch(len(train_set), t.batch_size, t.drop_last)
    if steps_per_epoch == 0:
        raise ConfigError(f"train.batch_size={t.batch_size} exceeds the {len(train_set)} training samples; lower it")
    if is_main:
        start_run_folder(cfg, resume, overwrite)
    accelerator.wait_for_everyone()
    try:
        with stopping_on_signals() as stop, stop.deferred():
            return _train(cfg, dataset, train_set, stack_val, accelerator, csv_log, steps_per_epoch, resume,
                          stop_after, stop)
    except BaseException:
        if is_main and not resume:
            discard_failed_start(run_folder(cfg))
        raise


def _train(cfg: ProjectConfig, dataset: PreparedDataset, train_set: BaselineDataset, stack_val: StackVal | None,
           accelerator: Accelerator, csv_log: CSVTracker, steps_per_epoch: int, resume: bool,
           stop_after: int | None, stop: StopRequest) -> Path:
    """The steps of `run_train` once the run folder is set up; a stop request (SIGTERM, SIGINT) ends them
    after the current step with a checkpoint, then raises `Interrupted` with how to resume."""
    t = cfg.train
    world_size, rank, is_main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    trainer = Trainer(cfg, dataset, accelerator, stack_val)
    if not trainer.selects_on_val and is_main:
        logger.warning(f"train {t.name}: the data has no val split, so there is no model selection: "
                       "model.safetensors holds the last weights (summary.json: model_selection last)")
    if resume:
        trainer.load_last()
    class_names = list(dataset.class_names[1:])
    accelerator.init_trackers(t.name)
    if is_main:
        csv_log.begin(log_columns(class_names), trainer.history)
    start_step = trainer.step_index
    last_step = t.steps if stop_after is None else min(t.steps, start_step + stop_after)
    bar = tqdm(total=t.steps, initial=start_step, desc=f"train {t.name}", disable=not is_main, dynamic_ncols=True)
    running: dict[str, list[float]] = {n: [] for n in LOSS_NAMES}
    began, stopped_by_cap = time.perf_counter() - trainer.elapsed, False
    signalled = any_process(accelerator, stop.signum is not None)
    trainer.model.train()
    while trainer.step_index < last_step and not stopped_by_cap and not signalled:
        epoch, first_batch = divmod(trainer.step_index, steps_per_epoch)
        train_set.set_epoch(epoch)
        # The sampler shards each global batch by rank itself and is rebuilt from (seed, epoch, first batch):
        # the data order needs no state beyond the step counter, which is what makes --resume exact.
        sampler = EpochBatchSampler(len(train_set), t.batch_size, t.seed, epoch, first_batch, rank, world_size,
                                    t.drop_last)
        loader = torch.utils.data.DataLoader(train_set, batch_sampler=sampler, num_workers=t.num_workers,
                                             collate_fn=collate_visits)
        for batch in loader:
            parts = trainer.step(batch)
            for name, value in zip(LOSS_NAMES, parts):
                running[name].append(float(value.detach()))
            bar.update(1)
            step = trainer.step_index
            trainer.elapsed = time.perf_counter() - began
            stopped_by_cap = any_process(accelerator, t.max_seconds is not None and trainer.elapsed >= t.max_seconds)
            signalled = any_process(accelerator, stop.signum is not None)
            final = step >= last_step or stopped_by_cap or signalled
            row: dict[str, float] = {}  # this step's line of the log: losses, validation, or both
            if step % t.log_every == 0 or final:
                row = {"step": step, "epoch": epoch, "lr": trainer.lr, "seconds": round(trainer.elapsed, 2),
                       **{n: float(np.mean(v)) for n, v in running.items()}}
                bar.set_postfix({"seg": f"{row['seg']:.3g}", "seg_gen": f"{row['seg_gen']:.3g}",
                                 "L_enc": f"{row['enc']:.3g}", "L_dec": f"{row['dec']:.3g}"})
                running = {n: [] for n in LOSS_NAMES}
            validates = is_main and not signalled and (step % t.val_every == 0 or final)
            scores = trainer.validate_and_keep_best() if validates else {}
            if scores:
                row = {**row, "step": step, "epoch": epoch, **scores}
                bar.set_postfix({"val_dice": f"{scores['val_dice_mean']:.3f}"})
            if row:
                trainer.history.append(row)
                accelerator.log(row, step=step)
            if validates:
                write_progress_png(trainer.history, class_names, trainer.folder / "progress.png")
            if is_main and (step % t.checkpoint_every == 0 or final):
                trainer.save_last()
            if final:
                break
    bar.close()
    # No accelerator.end_training(): it destroys the process group that processes_in_sync still needs
    # (log.csv, the one tracker, is complete after every step).
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.finish()  # flush and close its event file (the process group stays for the check below)
    in_sync = processes_in_sync(accelerator, trainer.model)
    if is_main:
        chosen = selected_row(trainer.history, t.select_on) if trainer.selects_on_val else None
        summary = {"name": t.name, "model": cfg.model.name, "method": method_label(t.stack, t.loss),
                   "seed": t.seed, "steps": trainer.step_index, "planned_steps": t.steps,
                   "stopped_by_time_cap": stopped_by_cap, "max_seconds": t.max_seconds,
                   "stopped_by_signal": signal.Signals(stop.signum).name if signalled and stop.signum else None,
                   "seconds": round(trainer.elapsed, 1),
                   "model_selection": "best_val" if trainer.selects_on_val else "last",
                   # the real val and the stack-val Dice of the weights in model.safetensors
                   "select_on": t.select_on if trainer.selects_on_val else None,
                   "selected_step": chosen["step"] if chosen else None,
                   "best_val_dice_mean": chosen["val_dice_mean"] if chosen else None,
                   "best_stack_val_dice_mean": chosen.get("stack_val_dice_mean") if chosen else None,
                   "bn_stack_stats": t.bn_stack_stats,
                   "world_size": world_size, "ranks_in_sync": in_sync,
                   "provenance": run_provenance(dataset, train_set.provenance if t.stack else None)}
        with atomic_path(trainer.folder / "summary.json") as tmp:
            tmp.write_text(json.dumps(summary, indent=1))
        if stopped_by_cap:
            logger.warning(f"train {t.name}: STOPPED BY THE TIME CAP of {t.max_seconds} s after {trainer.step_index} "
                           f"of {t.steps} steps (continue with --resume and a larger or no train.max_seconds)")
    accelerator.wait_for_everyone()
    if not in_sync:
        raise S2S2Error("DDP ranks ended with different weights; this is a bug, please report it with summary.json")
    if signalled:
        raise _interrupted(t.name, signal.Signals(stop.signum or signal.SIGTERM), trainer, start_step)
    return trainer.folder
