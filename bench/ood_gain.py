"""p5: does S2S2 buy out-of-domain robustness? Baseline vs S2S2, and location-scale augmentation
without and with S2S2, trained on the default T1 data against the default stack, several seeds;
grey/white-matter Dice in-domain (test slabs) and on SPM avg152 T1, PD and T2.

Every method uses the config defaults of `configs/default.yaml` (settings are chosen on the
validation split only; the test sets are never used to pick anything). Runs go to
`runs/bench/p5/train/METHOD_sSEED/`; two runs train at a time, one torch thread each.

    python -m bench.run_all --only p5_ood_gain
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO / "configs" / "default.yaml"
BENCH_RUN_DIR = "runs/bench/p5"
IN_DOMAIN = "in_domain"
OUT_OF_DOMAIN = ("spm_t1", "spm_pd", "spm_t2")
TEST_SETS = (IN_DOMAIN, *OUT_OF_DOMAIN)
TARGET_OOD_GAIN = 3.0  # Dice points, S2S2 over baseline, mean over the out-of-domain sets
MAX_IN_DOMAIN_LOSS = 0.5  # Dice points S2S2 may lose in-domain

# method -> (train overrides, the method it is compared with). The first four are the figure; the
# rest are one-seed ablations of the loss (which features, whether L_sc matters at all), read on val.
METHODS: dict[str, tuple[dict[str, Any], str | None]] = {
    "baseline": ({"train.stack": False, "train.location_scale": False}, None),
    "s2s2": ({"train.stack": True, "train.location_scale": False}, "baseline"),
    "ls": ({"train.stack": False, "train.location_scale": True}, "baseline"),
    "ls+s2s2": ({"train.stack": True, "train.location_scale": True}, "ls"),
    # Both weights explicit: the config's defaults (a_enc 1, a_dec 0) must not decide what an ablation is.
    "s2s2_enc_only": ({"train.stack": True, "train.loss.a_enc": 1.0, "train.loss.a_dec": 0.0}, "baseline"),
    "s2s2_dec_only": ({"train.stack": True, "train.loss.a_enc": 0.0, "train.loss.a_dec": 1.0}, "baseline"),
    "s2s2_no_sc": ({"train.stack": True, "train.loss.a_enc": 0.0, "train.loss.a_dec": 0.0}, "baseline"),
}
MAIN_METHODS = ("baseline", "s2s2", "ls", "ls+s2s2")


@dataclass(frozen=True)
class Plan:
    """How much p5 trains: seeds of the main methods, seed-0 ablations (run only when the main runs
    ended within `ablation_gate_s` of the start, so the figure stays inside its time limit), steps per
    run (None = the config's) and runs in parallel."""

    seeds: tuple[int, ...]
    ablations: tuple[str, ...]
    ablation_gate_s: float
    steps: int | None
    parallel: int


FULL = Plan(seeds=(0, 1, 2), ablations=("s2s2_enc_only", "s2s2_dec_only", "s2s2_no_sc"), ablation_gate_s=1500,
            steps=None, parallel=2)
QUICK = Plan(seeds=(0,), ablations=(), ablation_gate_s=0, steps=20, parallel=2)
# Quick mode without a default stack: a throwaway stack from seconds of fine-tuning (plumbing only).
QUICK_STACK: dict[str, Any] = {
    "run_dir": f"{BENCH_RUN_DIR}/quick", "store.path": f"{BENCH_RUN_DIR}/quick/stack.zarr", "store.k": 2,
    "generator.base_model": "tiny", "generator.tiny.vae_steps": 20, "finetune.steps": 10,
    "finetune.unlock_unet": True, "generate.steps": 3, "generate.guidance_scale": 1.0, "generate.workers": 1,
}


# --- pure summaries (Dice in points, i.e. x100) --------------------------------------------------

def ood_mean(metrics: dict[str, dict[str, Any]]) -> float:
    """One run's mean Dice (points) over the out-of-domain test sets."""
    return 100.0 * statistics.fmean(metrics[name]["dice_mean"] for name in OUT_OF_DOMAIN)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, tuple[float, float]]]:
    """method -> column -> (mean, std over seeds) in Dice points; columns are the test sets and `ood`."""
    summary: dict[str, dict[str, tuple[float, float]]] = {}
    for method in dict.fromkeys(run["method"] for run in runs):
        mine = [run for run in runs if run["method"] == method]
        columns = {name: mean_std([100.0 * run["metrics"][name]["dice_mean"] for run in mine]) for name in TEST_SETS}
        columns["ood"] = mean_std([ood_mean(run["metrics"]) for run in mine])
        vals = [100.0 * run["val_dice"] for run in mine if run.get("val_dice") is not None]
        if vals:
            columns["val"] = mean_std(vals)
        summary[method] = columns
    return summary


def gains(summary: dict[str, dict[str, tuple[float, float]]], method: str, reference: str) -> tuple[float, float]:
    """(out-of-domain gain, in-domain change) of `method` over `reference`, Dice points."""
    return (summary[method]["ood"][0] - summary[reference]["ood"][0],
            summary[method][IN_DOMAIN][0] - summary[reference][IN_DOMAIN][0])


def target_met(ood_gain: float, in_domain_change: float) -> bool:
    """The issue's target: >= +3 points out of domain, no more than 0.5 lost in-domain."""
    return ood_gain >= TARGET_OOD_GAIN and in_domain_change >= -MAX_IN_DOMAIN_LOSS


def table_rows(summary: dict[str, dict[str, tuple[float, float]]], seeds: dict[str, int]) -> list[dict[str, Any]]:
    """One row per method: mean ± std per test set, and the change against its reference method."""
    rows = []
    for method, columns in summary.items():
        row: dict[str, Any] = {"method": method, "seeds": seeds.get(method)}
        for name in ("val", *TEST_SETS, "ood"):
            if name in columns:
                mean, std = columns[name]
                row[name if name != "ood" else "OOD mean"] = f"{mean:.1f} ± {std:.1f}"
        reference = METHODS.get(method, ({}, None))[1]
        if reference in summary:
            ood_gain, in_change = gains(summary, method, reference)
            row["Δ OOD"] = f"{ood_gain:+.1f} vs {reference}"
            row["Δ in-domain"] = f"{in_change:+.1f} vs {reference}"
        rows.append(row)
    return rows


# --- running the trainings -----------------------------------------------------------------------

def make_jobs(methods: list[tuple[str, int]], plan: Plan, config: Path, store_path: str) -> list[dict[str, Any]]:
    """One job per (method, seed), with its config overrides and log file."""
    jobs = []
    for method, seed in methods:
        name = f"{method.replace('+', '_')}_s{seed}"
        overrides = {"run_dir": BENCH_RUN_DIR, "store.path": store_path, "train.name": name, "train.seed": seed,
                     **METHODS[method][0]}
        if plan.steps is not None:
            overrides.update({"train.steps": plan.steps, "train.val_every": plan.steps,
                              "train.checkpoint_every": plan.steps})
        jobs.append({"method": method, "seed": seed, "config": str(config), "overrides": overrides,
                     "log": str(REPO / BENCH_RUN_DIR / "logs" / f"{name}.log")})
    return jobs


def train_and_evaluate(job: dict[str, Any]) -> dict[str, Any]:
    """In a worker process: train one run, evaluate it on every test set, return its numbers.

    The run's console output goes to its own log file, so parallel progress bars do not mix.
    """
    import torch

    torch.set_num_threads(1)
    log = Path(job["log"])
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
    from s2s2.pipeline.config.base import load_config
    from s2s2.pipeline.config.project import ProjectConfig
    from s2s2.stages.evaluate import run_evaluate
    from s2s2.stages.train import run_train

    start = time.perf_counter()
    cfg = load_config(ProjectConfig, job["config"], overrides=job["overrides"])
    folder = run_train(cfg)
    metrics = run_evaluate(cfg)
    summary = json.loads((folder / "summary.json").read_text())
    return {
        "method": job["method"], "seed": job["seed"], "name": cfg.train.name, "folder": str(folder),
        "steps": summary["steps"], "stopped_by_time_budget": summary["stopped_by_time_budget"],
        "val_dice": summary["best_val_dice_mean"], "seconds": time.perf_counter() - start,
        "metrics": {name: {"dice_mean": entry["dice_mean"], "dice": entry["dice"]}
                    for name, entry in metrics["test_sets"].items()},
    }


def run_jobs(jobs: list[dict[str, Any]], parallel: int) -> list[dict[str, Any]]:
    """Run the jobs `parallel` at a time in spawned processes (one torch thread each)."""
    results = []
    with ProcessPoolExecutor(max_workers=parallel, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(train_and_evaluate, job): job for job in jobs}
        for future in as_completed(futures):
            job = futures[future]
            run = future.result()  # a failed run fails the figure: the table needs every cell
            print(f"p5: {job['method']} seed {job['seed']}: in-domain {run['metrics'][IN_DOMAIN]['dice_mean']:.3f}, "
                  f"OOD mean {ood_mean(run['metrics']):.1f} pts, {run['seconds']:.0f} s (log {job['log']})", flush=True)
            results.append(run)
    order = {(job["method"], job["seed"]): i for i, job in enumerate(jobs)}
    return sorted(results, key=lambda run: order[(run["method"], run["seed"])])


# --- the stack and what it looks like ------------------------------------------------------------

def stack_is_usable(store_path: str, fingerprint: str) -> bool:
    """A complete store made for this dataset exists at `store_path`."""
    from s2s2.pipeline.errors import S2S2Error
    from s2s2.store.stack_store import StackStore

    try:
        store = StackStore.open(store_path, mode="r")
    except (S2S2Error, FileNotFoundError):
        return False
    return store.complete_fraction() >= 1.0 and store.manifest.dataset_fingerprint == fingerprint


def ensure_stack(config: Path, store_path: str, fingerprint: str, quick: bool) -> tuple[str, str]:
    """A complete stack for the default data: (its path, how it was obtained).

    Full mode runs `make generate`'s steps when the default stack is missing or incomplete. Quick
    mode never waits ~10 minutes for that: it uses the default stack if it is there, else builds a
    throwaway one with a few seconds of fine-tuning (plumbing only; its numbers mean nothing).
    """
    if stack_is_usable(store_path, fingerprint):
        return store_path, "existing"
    if not quick:
        print(f"p5: no complete stack at {store_path}: running make generate's steps", flush=True)
        subprocess.run([sys.executable, "-m", "s2s2.stages.make_generate", "--config", str(config)], cwd=REPO,
                       check=True)
        return store_path, "make generate"
    from s2s2.pipeline.config.base import load_config
    from s2s2.pipeline.config.project import ProjectConfig
    from s2s2.stages.finetune import run_finetune
    from s2s2.stages.generate import run_generate

    cfg = load_config(ProjectConfig, config, overrides=QUICK_STACK)
    if not stack_is_usable(cfg.store.path, fingerprint):
        run_finetune(cfg, overwrite=True)
        run_generate(cfg, overwrite=True)
    return cfg.store.path, "quick throwaway stack"


def describe_stack(store_path: str) -> dict[str, Any]:
    """What `s2s2 stack inspect --json` reports: mask fidelity (with its ceiling) and appearance."""
    from s2s2.store.inspect import summarise as inspect_summary
    from s2s2.store.stack_store import StackStore

    summary = inspect_summary(StackStore.open(store_path, mode="r"))
    return {"inspect": summary, "appearance": summary.get("appearance")}


# --- the figure ----------------------------------------------------------------------------------

def measure_ood_gain(quick: bool = False, config: Path = DEFAULT_CONFIG) -> dict[str, Any]:
    """Train every method for every seed, evaluate in- and out-of-domain, summarise (figure p5)."""
    from s2s2.pipeline.config.base import load_config
    from s2s2.pipeline.config.project import ProjectConfig
    from s2s2.pipeline.data.prepare import prepare_dataset
    from s2s2.stages.evaluate import test_datasets

    started = time.perf_counter()
    plan = QUICK if quick else FULL
    cfg = load_config(ProjectConfig, config)
    dataset = prepare_dataset(cfg.data)
    test_datasets(cfg)  # prepare (and cache) every test set once, before parallel runs read them
    store_path, stack_source = ensure_stack(config, cfg.store.path, dataset.fingerprint(), quick)
    stack = describe_stack(store_path)
    runs = run_jobs(make_jobs([(m, seed) for seed in plan.seeds for m in MAIN_METHODS], plan, config, store_path),
                    plan.parallel)
    ablations_run = bool(plan.ablations) and time.perf_counter() - started < plan.ablation_gate_s
    if ablations_run:
        runs += run_jobs(make_jobs([(m, plan.seeds[0]) for m in plan.ablations], plan, config, store_path),
                         plan.parallel)
    summary = summarise(runs)
    ood_gain, in_change = gains(summary, "s2s2", "baseline")
    ls_gain, ls_in_change = gains(summary, "ls+s2s2", "ls")
    steps = "/".join(map(str, sorted({run["steps"] for run in runs})))
    ablations = f" + {len(plan.ablations)} one-seed loss ablations" if ablations_run else ""
    loss = cfg.train.loss
    return {
        "value": ood_gain,
        "met": target_met(ood_gain, in_change),
        "how": (f"{len(plan.seeds)} seed(s) x {len(MAIN_METHODS)} methods{ablations}, unet {cfg.model.preset}, "
                f"{steps} steps, best-on-val checkpoint; mean ± std over seeds"),
        "note": (f"Dice points (x100), grey/white-matter mean. S2S2 loss weights: w_seg_gen {loss.w_seg_gen}, "
                 f"a_enc {loss.a_enc}, a_dec {loss.a_dec}. S2S2 vs baseline: {ood_gain:+.1f} OOD, "
                 f"{in_change:+.1f} in-domain; LS+S2S2 vs LS: {ls_gain:+.1f} OOD, {ls_in_change:+.1f} in-domain. "
                 f"Stack {store_path} ({stack_source}): {stack_note(stack)}"),
        "rows": table_rows(summary, {m: sum(r["method"] == m for r in runs) for m in summary}),
        "raw": {"runs": runs, "summary": {m: {c: list(v) for c, v in cols.items()} for m, cols in summary.items()},
                "in_domain_change": in_change, "ls_ood_gain": ls_gain, "ls_in_domain_change": ls_in_change,
                "stack": stack, "stack_path": store_path, "stack_source": stack_source,
                "ablations_run": ablations_run, "plan": asdict(plan)},
    }


def stack_note(stack: dict[str, Any]) -> str:
    """One sentence on the stack's mask fidelity and appearance diversity (from `describe_stack`)."""
    fidelity = stack["inspect"].get("mask_fidelity")
    shown = "not available"
    if fidelity:
        normalised = fidelity["normalised"]["adaptive"]
        shown = (f"{fidelity['dice_own']:.2f} vs {fidelity['dice_chance']:.2f} by chance (adaptive, normalised to "
                 f"the originals: {'n/a' if normalised is None else f'{normalised:.2f}'})")
    look = stack["appearance"]
    if not look:
        return f"mask fidelity Dice {shown}; appearance not available."
    return (f"mask fidelity Dice {shown}; per-tissue mean grey value varies by {look['class_mean_spread_across_k']:.3f} "
            f"(std) across k, against a gap of {look['class_mean_gap']:.3f} between tissues; the tissue brightness "
            f"order differs from the original's in {100 * look['order_changed_fraction']:.0f}% of stack images.")
