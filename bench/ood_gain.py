"""p5: the robustness study. Does S2S2 buy out-of-domain robustness, against which stack, and is it
more than the intensity augmentations a user would try first?

Methods (U-Net `small`, the config defaults of `configs/default.yaml`, matched runs: every method of
one seed shares the init, the batch order, the original's augmentation draws and the step count):
- `baseline`; `ls` (SLAug global location-scale on the original); `gin` (GIN random convolutions);
- `s2s2[KIND]` for every stack kind of `bench/stack_kinds.yaml` (ControlNet as the paper,
  appearance-randomised ControlNet, synth, mixed);
- `ls+s2s2[PRIMARY]`: LS on the original only, the stack image gets the shared geometric transforms
  only (no photometric jitter), as the authors ran S2S2 on top of SLAug; `gin+s2s2[PRIMARY]` the same
  with GIN;
- `s2s2_no_sc[PRIMARY]`: the ablation "stack images with segmentation loss only, no L_sc" (the
  SynthSeg-style comparator: the recipe's w_seg_gen, a_enc = a_dec = 0).

Every run is evaluated once on the in-domain test slabs and SPM avg152 T1, PD and T2 (grey/white
matter Dice); each set is reported separately, with PD/T2's mean (the target's column), as mean ± std
over seeds and the paired per-seed difference to the baseline with a 95 % t-interval over seeds.
Nothing is chosen on a test set: settings are the config's, chosen on validation only (the real val
split and stack-val, `bench/recipe_sweep.py`); every run keeps its checkpoint by `train.select_on`,
with the primary kind's stack-val store for the methods without a stack.

    python -m bench.run_all --only p5_ood_gain                 # the full study (>= 5 seeds), recorded
    BENCH_QUICK=1 python -m bench.run_all --only p5_ood_gain   # plumbing: throwaway stacks, 2 seeds, 10 steps
    python -m bench.ood_gain --collect-only                    # the table of the runs finished so far
    python -m bench.ood_gain --collect-only --heldout-val runs/heldout/stack-val.zarr   # + a held-out family

The study resumes: each finished run's numbers are kept in `runs/bench/p5/results/NAME.json` with
the hash of its resolved config, and a rerun trains only the runs without one (the core rows,
baseline, LS, GIN, S2S2 and its seg-only ablation on the primary stack, get their seeds first).

Runs go to `runs/bench/p5/train/METHOD_sSEED/` (quick: `runs/bench/p5/quick/...`); two train at a
time, one torch thread each, logs under `runs/bench/p5/logs/`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Optional

from pydantic import Field, model_validator

from s2s2.pipeline.config.base import StrictModel

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO / "configs" / "default.yaml"
STACK_KINDS_FILE = REPO / "bench" / "stack_kinds.yaml"
BENCH_RUN_DIR = "runs/bench/p5"
IN_DOMAIN = "in_domain"
OUT_OF_DOMAIN = ("spm_t1", "spm_pd", "spm_t2")
TEST_SETS = (IN_DOMAIN, *OUT_OF_DOMAIN)
PD_T2 = "pd_t2"  # mean of SPM PD and T2: where the contrast flips
COLUMNS = (*TEST_SETS, PD_T2)
BASELINE = "baseline"
# The study's target (Dice points): S2S2 with the primary stack vs the baseline and vs the best of
# LS, GIN and the seg-only ablation on the PD/T2 mean, in-domain not more than 1 point below the
# baseline, SPM T1 not lower.
TARGET_VS_BASELINE = 25.0
TARGET_VS_AUGMENTATION = 3.0
MAX_IN_DOMAIN_LOSS = 1.0
CONFIDENCE = 0.95


# --- stack kinds --------------------------------------------------------------------------------

class StackKindSpec(StrictModel):
    """One stack kind: where its store is and the config overlay that builds it."""

    run_dir: str
    store: Optional[str] = None  # default {run_dir}/stack.zarr
    overlay: dict[str, Any] = Field(default_factory=dict)
    finetune: bool = True
    generator_from: Optional[str] = None  # kind whose fine-tuned ControlNet this one samples

    def store_path(self) -> str:
        return self.store or f"{self.run_dir}/stack.zarr"


class StackKinds(StrictModel):
    """`bench/stack_kinds.yaml`: the kinds and the primary one."""

    primary: str
    kinds: dict[str, StackKindSpec]

    @model_validator(mode="after")
    def _known_names(self) -> "StackKinds":
        if self.primary not in self.kinds:
            raise ValueError(f"primary {self.primary!r} is not one of the kinds {list(self.kinds)}")
        for name, kind in self.kinds.items():
            source = kind.generator_from
            if source is not None and (source not in self.kinds or not self.kinds[source].finetune
                                       or self.kinds[source].generator_from):
                raise ValueError(f"kind {name}: generator_from {source!r} must name a kind that fine-tunes its own "
                                 "ControlNet")
        return self


def load_stack_kinds(path: Path = STACK_KINDS_FILE) -> StackKinds:
    """The stack kinds file, validated (a bad file names the field and the value)."""
    from s2s2.pipeline.config.base import load_config

    return load_config(StackKinds, path)


def build_order(kinds: StackKinds) -> list[str]:
    """Kind names with every `generator_from` source before the kinds that sample it."""
    first = [name for name, kind in kinds.kinds.items() if kind.generator_from is None]
    return first + [name for name in kinds.kinds if name not in first]


# --- methods and plans -------------------------------------------------------------------------

@dataclass(frozen=True)
class Method:
    """One row of the study: a name, the stack kind it reads (None: no stack) and its train overrides."""

    name: str
    stack_kind: Optional[str]
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def slug(self) -> str:
        """The method as a run-folder name: `ls+s2s2[synth]` -> `ls_s2s2-synth`."""
        name = self.name.replace("+", "_").replace("[", "-").replace("]", "")
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", name)


# Every method states its intensity augmentations and its stack terms, so the config's defaults cannot
# decide what a row is: S2S2 is the method's objective with L_sc on the encoder (the library default,
# a_enc 1, a_dec 0); the seg-only ablation (the recipe of configs/default.yaml) has no L_sc.
NO_AUGMENTATION = {"train.location_scale": False, "train.gin": False}
S2S2_TERMS = {"train.loss.a_enc": 1.0, "train.loss.a_dec": 0.0}
SEG_ONLY_TERMS = {"train.loss.a_enc": 0.0, "train.loss.a_dec": 0.0}


def study_methods(kinds: list[str], primary: str) -> list[Method]:
    """The study's rows, in table order."""
    methods = [
        Method(BASELINE, None, {"train.stack": False, **NO_AUGMENTATION}),
        Method("ls", None, {"train.stack": False, **NO_AUGMENTATION, "train.location_scale": True}),
        Method("gin", None, {"train.stack": False, **NO_AUGMENTATION, "train.gin": True}),
    ]
    methods += [Method(f"s2s2[{kind}]", kind, {"train.stack": True, **NO_AUGMENTATION, **S2S2_TERMS})
                for kind in kinds]
    if primary in kinds:
        methods.append(Method(f"ls+s2s2[{primary}]", primary, {
            "train.stack": True, **NO_AUGMENTATION, **S2S2_TERMS, "train.location_scale": True,
            "train.augment.stack_photometric": False}))
        methods.append(Method(f"gin+s2s2[{primary}]", primary, {
            "train.stack": True, **NO_AUGMENTATION, **S2S2_TERMS, "train.gin": True,
            "train.augment.stack_photometric": False}))
        methods.append(Method(f"s2s2_no_sc[{primary}]", primary, {"train.stack": True, **NO_AUGMENTATION,
                                                                  **SEG_ONLY_TERMS}))
    return methods


def core_methods(methods: list[Method], primary: str) -> list[Method]:
    """The rows the targets are judged on (baseline, LS, GIN, S2S2 and its seg-only ablation on the
    primary stack): trained first, so an interrupted study has their seeds before the other rows'."""
    core = {BASELINE, "ls", "gin", f"s2s2[{primary}]", f"s2s2_no_sc[{primary}]"}
    return [m for m in methods if m.name in core]


@dataclass(frozen=True)
class Plan:
    """How much the study trains: seeds, steps per run (None: the config's) and runs in parallel."""

    seeds: tuple[int, ...]
    steps: Optional[int]
    parallel: int
    run_dir: str


FULL = Plan(seeds=(0, 1, 2, 3, 4), steps=None, parallel=2, run_dir=BENCH_RUN_DIR)
QUICK = Plan(seeds=(0, 1), steps=10, parallel=2, run_dir=f"{BENCH_RUN_DIR}/quick")
# Quick mode's throwaway stacks: seconds of VAE and ControlNet training, K=2 (plumbing only).
QUICK_STACK: dict[str, Any] = {
    "store.k": 2, "generator.base_model": "tiny", "generator.tiny.vae_steps": 20, "finetune.steps": 10,
    "finetune.unlock_unet": True, "generate.steps": 3, "generate.guidance_scale": 1.0, "generate.workers": 1,
}


# --- pure statistics (Dice in points, i.e. x100) ------------------------------------------------

def column_value(metrics: dict[str, dict[str, Any]], column: str) -> float:
    """One run's Dice (points) on a test set, or on PD and T2 averaged (`pd_t2`)."""
    if column == PD_T2:
        return 100.0 * statistics.fmean(metrics[name]["dice_mean"] for name in ("spm_pd", "spm_t2"))
    return 100.0 * metrics[column]["dice_mean"]


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def t_interval(values: list[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(mean, low, high): the Student-t confidence interval of the mean over `values` (e.g. per-seed
    paired differences); NaN bounds for fewer than two values."""
    from scipy import stats

    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + confidence / 2, len(values) - 1)) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def paired_values(runs: list[dict[str, Any]], method: str, reference: str,
                  value: Callable[[dict[str, Any]], float | None]) -> list[float]:
    """Per seed that both methods ran and both have a value for (in seed order): method minus reference."""
    by_seed = {(run["method"], run["seed"]): run for run in runs}
    seeds = sorted(seed for (name, seed) in by_seed if name == method and (reference, seed) in by_seed)
    pairs = [(value(by_seed[(method, s)]), value(by_seed[(reference, s)])) for s in seeds]
    return [mine - theirs for mine, theirs in pairs if mine is not None and theirs is not None]


def paired_differences(runs: list[dict[str, Any]], method: str, reference: str, column: str) -> list[float]:
    """Per seed (those both methods ran, in seed order): method minus reference, Dice points."""
    return paired_values(runs, method, reference, lambda run: column_value(run["metrics"], column))


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, tuple[float, float]]]:
    """method -> column -> (mean, std over seeds), Dice points; `val` too when the runs selected on it."""
    summary: dict[str, dict[str, tuple[float, float]]] = {}
    for method in dict.fromkeys(run["method"] for run in runs):
        mine = [run for run in runs if run["method"] == method]
        columns = {column: mean_std([column_value(run["metrics"], column) for run in mine]) for column in COLUMNS}
        for column, key in VALIDATION_COLUMNS:
            vals = [100.0 * run[key] for run in mine if run.get(key) is not None]
            if vals:
                columns[column] = mean_std(vals)
        summary[method] = columns
    return summary


def selection_differences(runs: list[dict[str, Any]], method: str, reference: str) -> list[float]:
    """Per seed both ran: method minus reference on the validation score the runs keep their
    checkpoints by, mean(val, stack-val) in Dice points — the number a recipe is chosen on."""
    def score(run: dict[str, Any]) -> float | None:
        if run.get("stack_val_dice") is None:
            return None
        return 50.0 * (run["val_dice"] + run["stack_val_dice"])

    return paired_values(runs, method, reference, score)


def verdict(runs: list[dict[str, Any]], primary_method: str) -> dict[str, Any]:
    """The target, condition by condition, on means over seeds (Dice points)."""
    summary = summarise(runs)

    def gain(method: str, reference: str, column: str) -> float:
        return summary[method][column][0] - summary[reference][column][0]

    primary = primary_method[primary_method.index("["):] if "[" in primary_method else ""
    augmentations = [m for m in ("ls", "gin", f"s2s2_no_sc{primary}") if m in summary]
    best_augmentation = max(augmentations, key=lambda m: summary[m][PD_T2][0]) if augmentations else None
    conditions = {
        "pd_t2_vs_baseline": gain(primary_method, BASELINE, PD_T2),
        "pd_t2_vs_best_augmentation": gain(primary_method, best_augmentation, PD_T2) if best_augmentation else math.nan,
        "in_domain_vs_baseline": gain(primary_method, BASELINE, IN_DOMAIN),
        "spm_t1_vs_baseline": gain(primary_method, BASELINE, "spm_t1"),
    }
    met = (conditions["pd_t2_vs_baseline"] >= TARGET_VS_BASELINE
           and conditions["pd_t2_vs_best_augmentation"] >= TARGET_VS_AUGMENTATION
           and conditions["in_domain_vs_baseline"] >= -MAX_IN_DOMAIN_LOSS
           and conditions["spm_t1_vs_baseline"] >= 0.0)
    return {"met": bool(met), "best_augmentation": best_augmentation, **conditions}


def cell(values: list[float], differences: list[float] | None) -> str:
    """`mean ± std`, and for a compared method `Δ mean [low, high]` of its paired differences."""
    mean, std = mean_std(values)
    text = f"{mean:.1f} ± {std:.1f}"
    if differences:
        diff, low, high = t_interval(differences)
        bounds = f"[{low:+.1f}, {high:+.1f}]" if not math.isnan(low) else "[n<2]"
        text += f" (Δ {diff:+.1f} {bounds})"
    return text


# Validation numbers of a run's kept weights (Dice, not points), by table column: the real val, the
# stack-val store, and (when asked for) a held-out appearance family's val images.
VALIDATION_COLUMNS = (("val", "val_dice"), ("stack-val", "stack_val_dice"), ("held-out family val", "heldout_val_dice"))


def table_rows(runs: list[dict[str, Any]], methods: list[Method]) -> list[dict[str, Any]]:
    """One row per method that ran: its stack kind, seeds, time-capped runs, and per column
    mean ± std with the paired difference to the baseline and its 95 % interval."""
    rows = []
    for method in methods:
        mine = [run for run in runs if run["method"] == method.name]
        if not mine:
            continue
        capped = sum(bool(run["stopped_by_time_cap"]) for run in mine)
        row: dict[str, Any] = {"method": method.name, "stack": method.stack_kind or "none", "seeds": len(mine),
                               "steps": "/".join(map(str, sorted({run["steps"] for run in mine}))),
                               "stopped by time cap": f"YES ({capped} runs)" if capped else "no"}
        for column, key in VALIDATION_COLUMNS:
            vals = [100.0 * run[key] for run in mine if run.get(key) is not None]
            if vals:
                row[column] = cell(vals, None)
        for column in COLUMNS:
            differences = (paired_differences(runs, method.name, BASELINE, column)
                           if method.name != BASELINE else None)
            row["PD/T2 mean" if column == PD_T2 else column] = cell(
                [column_value(run["metrics"], column) for run in mine], differences)
        rows.append(row)
    return rows


def atlas_copy_row(metrics: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The atlas-copy reference row (the training label map at each test slice's position, no image:
    what position alone scores), from `s2s2.stages.evaluate.run_atlas_copy`'s test-set results."""
    row: dict[str, Any] = {"method": "atlas copy (label map, no image)", "stack": "none", "seeds": "–"}
    for column in COLUMNS:
        row["PD/T2 mean" if column == PD_T2 else column] = f"{column_value(metrics, column):.1f}"
    return row


PLOT_COLUMNS = ((PD_T2, "SPM PD/T2 mean", TARGET_VS_BASELINE), (IN_DOMAIN, "in-domain", -MAX_IN_DOMAIN_LOSS),
                ("spm_t1", "SPM T1", 0.0))


def plot_paired_differences(runs: list[dict[str, Any]], methods: list[Method], path: Path) -> Path:
    """A forest plot: per method, the paired per-seed difference to the baseline (mean and 95 %
    t-interval, Dice points) on PD/T2, in-domain and SPM T1, each panel with its target line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [m.name for m in methods if m.name != BASELINE and any(run["method"] == m.name for run in runs)]
    fig, axes = plt.subplots(1, len(PLOT_COLUMNS), figsize=(4.2 * len(PLOT_COLUMNS), 0.45 * len(names) + 1.6),
                             sharey=True)
    for ax, (column, title, target) in zip(axes, PLOT_COLUMNS):
        for row, name in enumerate(names):
            diffs = paired_differences(runs, name, BASELINE, column)
            if not diffs:
                continue
            mean, low, high = t_interval(diffs)
            if not math.isnan(low):
                ax.plot([low, high], [row, row], color="tab:blue", linewidth=2)
            ax.plot([mean], [row], "o", color="tab:blue")
            ax.text(mean, row - 0.25, f"{mean:+.1f} (n={len(diffs)})", ha="center", fontsize=7)
        ax.axvline(0.0, color="black", linewidth=0.8)
        ax.axvline(target, color="tab:red", linestyle="--", linewidth=0.8, label=f"target {target:+.0f}")
        ax.set_title(f"{title}: Δ vs baseline")
        ax.set_xlabel("Dice points (paired per seed, 95 % t-interval)")
        ax.legend(loc="lower right", fontsize=7)
    axes[0].set_yticks(range(len(names)), names)
    axes[0].set_ylim(len(names) - 0.5, -0.8)  # first method on top, room for its label
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- stacks -------------------------------------------------------------------------------------

def stack_is_usable(store_path: str, fingerprint: str) -> bool:
    """A complete store made for this dataset exists at `store_path`."""
    from s2s2.pipeline.errors import S2S2Error
    from s2s2.store.stack_store import StackStore

    try:
        store = StackStore.open(store_path, mode="r")
    except (S2S2Error, FileNotFoundError):
        return False
    return store.complete_fraction() >= 1.0 and store.manifest.dataset_fingerprint == fingerprint


def kind_config(name: str, kinds: StackKinds, quick: bool, config: Path = DEFAULT_CONFIG) -> Any:
    """The config that builds kind `name` (quick: a throwaway under the quick run folder)."""
    from s2s2.pipeline.config.base import load_config
    from s2s2.pipeline.config.project import ProjectConfig
    from s2s2.pipeline.generator.paths import generator_dir

    kind = kinds.kinds[name]
    run_dir = f"{QUICK.run_dir}/stacks/{name}" if quick else kind.run_dir
    store = f"{run_dir}/stack.zarr" if quick else kind.store_path()
    overrides = {**(QUICK_STACK if quick else {}), **kind.overlay, "run_dir": run_dir, "store.path": store}
    if kind.generator_from is not None:
        overrides["generate.generator_dir"] = str(generator_dir(kind_config(kind.generator_from, kinds, quick, config)))
    return load_config(ProjectConfig, config, overrides=overrides)


def ensure_stacks(kinds: StackKinds, fingerprint: str, quick: bool) -> tuple[dict[str, str], dict[str, str], float]:
    """Build every kind whose store is not usable; returns ({kind: store path}, {kind: why it is not
    available}, CPU seconds spent building). Full mode refuses a kind this build cannot configure."""
    from s2s2.pipeline.errors import ConfigError
    from s2s2.stages.finetune import run_finetune
    from s2s2.stages.generate import run_generate

    stores: dict[str, str] = {}
    unavailable: dict[str, str] = {}
    started = time.process_time()
    for name in build_order(kinds):
        if kinds.kinds[name].generator_from in unavailable:
            unavailable[name] = f"needs kind {kinds.kinds[name].generator_from}, which is not available"
            continue
        try:
            cfg = kind_config(name, kinds, quick)
        except ConfigError as err:
            if not quick:
                raise ConfigError(f"bench/stack_kinds.yaml: stack kind {name}: {err}") from None
            unavailable[name] = str(err).splitlines()[-1].strip()
            continue
        val_missing = cfg.generate.val_stack and not stack_is_usable(cfg.store.val_path, fingerprint)
        if not stack_is_usable(cfg.store.path, fingerprint) or val_missing:
            print(f"p5: building the {name} stack at {cfg.store.path}", flush=True)
            if kinds.kinds[name].finetune and kinds.kinds[name].generator_from is None:
                run_finetune(cfg, overwrite=quick)
            run_generate(cfg, overwrite=quick)
        stores[name] = cfg.store.path
    return stores, unavailable, time.process_time() - started


def existing_stacks(kinds: StackKinds, fingerprint: str, quick: bool) -> tuple[dict[str, str], dict[str, str], float]:
    """`ensure_stacks` without building: the kinds whose stores exist, complete, for this dataset."""
    stores: dict[str, str] = {}
    unavailable: dict[str, str] = {}
    for name in build_order(kinds):
        path = kind_config(name, kinds, quick).store.path
        if stack_is_usable(path, fingerprint):
            stores[name] = path
        else:
            unavailable[name] = f"no complete store at {path}"
    return stores, unavailable, 0.0


def describe_stack(store_path: str) -> dict[str, Any]:
    """What `s2s2 stack inspect --json` reports: mask fidelity (with its ceiling) and appearance."""
    from s2s2.store.inspect import summarise as inspect_summary
    from s2s2.store.stack_store import StackStore

    summary = inspect_summary(StackStore.open(store_path, mode="r"))
    return {"inspect": summary, "appearance": summary.get("appearance")}


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


# --- running the trainings ----------------------------------------------------------------------

def make_jobs(methods: list[Method], plan: Plan, config: Path, stores: dict[str, str],
              val_store: str | None = None, first: list[Method] | None = None) -> list[dict[str, Any]]:
    """One job per (method, seed), with its config overrides, log file and result file: the `first`
    methods' jobs seed-major, then the others' seed-major. A stack method's stack-val store is its
    store's sibling; the others validate on `val_store` (the primary kind's)."""
    first = first or []
    order = [(seed, m) for seed in plan.seeds for m in first]
    order += [(seed, m) for seed in plan.seeds for m in methods if m not in first]
    jobs = []
    for seed, method in order:
        name = f"{method.slug}_s{seed}"
        overrides = {"run_dir": plan.run_dir, "train.name": name, "train.seed": seed, **method.overrides}
        if method.stack_kind is not None:
            overrides["store.path"] = stores[method.stack_kind]
        elif val_store is not None:
            overrides["store.val_path"] = val_store
        if plan.steps is not None:
            overrides.update({"train.steps": plan.steps, "train.val_every": plan.steps,
                              "train.checkpoint_every": plan.steps})
        jobs.append({"method": method.name, "seed": seed, "config": str(config), "overrides": overrides, "log": str(REPO / plan.run_dir / "logs" / f"{name}.log"),
                     "result": str(REPO / plan.run_dir / "results" / f"{name}.json")})
    return jobs


def resolved_config_sha256(job: dict[str, Any]) -> str:
    """The identity of what a job trains: the sha256 of its resolved config (the config file with the
    job's overrides, every default filled in), so an edit of the file that changes no value keeps it."""
    from s2s2.pipeline.config.base import load_config
    from s2s2.pipeline.config.project import ProjectConfig

    cfg = load_config(ProjectConfig, job["config"], overrides=job["overrides"])
    return hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()


def finished_result(job: dict[str, Any]) -> dict[str, Any] | None:
    """The job's saved result when one exists for the same resolved config (a resumed study reuses
    it), else None."""
    path = Path(job["result"])
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    return saved["run"] if saved.get("resolved_config_sha256") == resolved_config_sha256(job) else None


def save_result(job: dict[str, Any], run: dict[str, Any]) -> None:
    """Write one finished run's numbers beside the study (atomically), keyed by its resolved config."""
    path = Path(job["result"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"resolved_config_sha256": resolved_config_sha256(job), "overrides": job["overrides"],
                               "run": run}, indent=1))
    tmp.replace(path)


def train_and_evaluate(job: dict[str, Any]) -> dict[str, Any]:
    """In a worker process: train one run (replacing an earlier one of the same name), evaluate it on
    every test set unless the job says `evaluate: False` (choices made on the validation split never
    read a test set), return its numbers and CPU seconds. Output goes to the run's own log file."""
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

    start, cpu_start = time.perf_counter(), time.process_time()
    cfg = load_config(ProjectConfig, job["config"], overrides=job["overrides"])
    folder = run_train(cfg, overwrite=True)
    train_cpu = time.process_time() - cpu_start
    metrics = run_evaluate(cfg)["test_sets"] if job.get("evaluate", True) else {}
    summary = json.loads((folder / "summary.json").read_text())
    return {
        "method": job["method"], "seed": job["seed"], "name": cfg.train.name, "folder": str(folder),
        "steps": summary["steps"], "stopped_by_time_cap": summary["stopped_by_time_cap"],
        "val_dice": summary["best_val_dice_mean"], "stack_val_dice": summary.get("best_stack_val_dice_mean"),
        "seconds": time.perf_counter() - start,
        "train_cpu_seconds": train_cpu, "cpu_seconds": time.process_time() - cpu_start,
        "metrics": {name: {"dice_mean": entry["dice_mean"], "dice": entry["dice"]} for name, entry in metrics.items()},
    }


def run_jobs(jobs: list[dict[str, Any]], parallel: int, train: bool = True) -> list[dict[str, Any]]:
    """Run the jobs `parallel` at a time in spawned processes (one torch thread each), in their order;
    a job with a saved result for the same config and overrides is not trained again (an interrupted
    study resumes). `train=False` only collects the saved results."""
    finished = [finished_result(job) for job in jobs]
    results = [run for run in finished if run is not None]
    todo = [job for job, run in zip(jobs, finished) if run is None] if train else []
    if results:
        print(f"p5: reusing {len(results)} finished runs; {len(todo)} to train", flush=True)
    with ProcessPoolExecutor(max_workers=max(1, parallel), mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(train_and_evaluate, job): job for job in todo}
        for future in as_completed(futures):
            job = futures[future]
            run = future.result()  # a failed run fails the study: the table needs every cell
            save_result(job, run)
            scores = (f"in-domain {100 * run['metrics'][IN_DOMAIN]['dice_mean']:.1f}, PD/T2 "
                      f"{column_value(run['metrics'], PD_T2):.1f} pts" if run["metrics"] else
                      f"val {100 * (run['val_dice'] or math.nan):.1f} pts")
            print(f"{job['method']} seed {job['seed']}: {scores}, {run['cpu_seconds']:.0f} CPU s (log {job['log']})",
                  flush=True)
            results.append(run)
    order = {(job["method"], job["seed"]): i for i, job in enumerate(jobs)}
    return sorted(results, key=lambda run: (run["seed"], order[(run["method"], run["seed"])]))


# --- the study ----------------------------------------------------------------------------------

def score_heldout_family(runs: list[dict[str, Any]], jobs: list[dict[str, Any]], store: str) -> None:
    """Add `heldout_val_dice` to every run: its kept weights on the images of `store`, a val-split store
    drawn by a generator no training stack used (reported beside val and stack-val; decides nothing)."""
    from s2s2.pipeline.config.base import load_config
    from s2s2.pipeline.config.project import ProjectConfig
    from bench.recipe_sweep import kept_weights_val_dice

    by_key = {(job["method"], job["seed"]): job for job in jobs}
    for run in runs:
        job = by_key[(run["method"], run["seed"])]
        cfg = load_config(ProjectConfig, job["config"], overrides={**job["overrides"], "store.val_path": store})
        run["heldout_val_dice"] = kept_weights_val_dice(cfg, Path(run["folder"]) / "model.safetensors")


def measure_ood_gain(quick: bool = False, config: Path = DEFAULT_CONFIG, kinds_file: Path = STACK_KINDS_FILE,
                     plan: Plan | None = None, train: bool = True, heldout_val: str | None = None) -> dict[str, Any]:
    """Train every method for every seed, evaluate in- and out-of-domain, summarise (figure p5).
    Runs finished earlier with the same config and overrides are reused; `train=False` summarises
    only those (stacks are then not built either). `heldout_val` names a val-split store of another
    generator to score every run's kept weights on as well."""
    from s2s2.pipeline.config.base import load_config
    from s2s2.pipeline.config.project import ProjectConfig
    from s2s2.pipeline.data.prepare import prepare_dataset
    from s2s2.stages.evaluate import run_atlas_copy, test_datasets

    plan = plan or (QUICK if quick else FULL)
    kinds = load_stack_kinds(kinds_file)
    cfg = load_config(ProjectConfig, config)
    dataset = prepare_dataset(cfg.data)
    test_datasets(cfg)  # prepare (and cache) every test set once, before parallel runs read them
    if train:
        stores, unavailable, stack_cpu = ensure_stacks(kinds, dataset.fingerprint(), quick)
    else:
        stores, unavailable, stack_cpu = existing_stacks(kinds, dataset.fingerprint(), quick)
    stacks = {name: describe_stack(path) for name, path in stores.items()}
    methods = study_methods(list(stores), kinds.primary)
    from s2s2.pipeline.config.project import val_store_path

    val_store = val_store_path(stores[kinds.primary]) if kinds.primary in stores else None
    jobs = make_jobs(methods, plan, config, stores, val_store, first=core_methods(methods, kinds.primary))
    runs = run_jobs(jobs, plan.parallel, train=train)
    if heldout_val:
        score_heldout_family(runs, jobs, heldout_val)
    primary = f"s2s2[{kinds.primary}]"
    judged = verdict(runs, primary) if primary in {run["method"] for run in runs} else None
    seg_only = f"s2s2_no_sc[{kinds.primary}]"
    choice = selection_differences(runs, primary, seg_only)
    choice_text = ""
    if choice:
        diff, low, high = t_interval(choice)
        choice_text = (f"Validation (what chooses between L_sc and seg-only, no test set): {primary} minus {seg_only} on "
                       f"mean(val, stack-val) {diff:+.1f} points [{low:+.1f}, {high:+.1f}] over {len(choice)} seeds. ")
    atlas = run_atlas_copy(cfg.model_copy(update={"run_dir": plan.run_dir}))["test_sets"]
    rows = table_rows(runs, methods) + [atlas_copy_row(atlas)]
    plot = plot_paired_differences(runs, methods, REPO / plan.run_dir / "p5-ood-gain.png") if runs else None
    capped = sum(bool(run["stopped_by_time_cap"]) for run in runs)
    train_cpu = sum(run["cpu_seconds"] for run in runs)
    loss = cfg.train.loss
    missing = "; ".join(f"{name}: {why}" for name, why in unavailable.items())
    return {
        "value": judged["pd_t2_vs_baseline"] if judged else None,
        "met": judged["met"] if judged else None,
        "how": (f"{len(plan.seeds)} seeds x {len(methods)} methods, unet {cfg.model.preset}, "
                f"{'/'.join(map(str, sorted({run['steps'] for run in runs})))} steps, checkpoint by "
                f"select_on={cfg.train.select_on}, "
                f"matched runs; mean ± std over seeds, Δ = paired per-seed difference to the baseline "
                f"[{100 * CONFIDENCE:.0f} % t-interval]"),
        "note": (f"Dice points (x100), grey/white-matter mean; PD/T2 mean = mean of SPM PD and T2. Primary stack "
                 f"{kinds.primary}. S2S2 rows: w_seg_gen {loss.w_seg_gen}, a_enc {S2S2_TERMS['train.loss.a_enc']:g}, "
                 f"a_dec {S2S2_TERMS['train.loss.a_dec']:g}, L_enc on {cfg.model.sc_stages or 'the model default'}; "
                 f"s2s2_no_sc is the seg-only ablation (stack images with the segmentation loss, no L_sc)"
                 + (", which is the recipe of the config (`make train`'s stack run)"
                    if (loss.a_enc, loss.a_dec) == (0.0, 0.0) else "") + ". "
                 + (f"Figure: {plot.relative_to(REPO)}. " if plot else "")
                 + choice_text
                 + (f"Target (>= +{TARGET_VS_BASELINE:.0f} PD/T2 vs baseline, >= +{TARGET_VS_AUGMENTATION:.0f} vs "
                    f"the best of LS/GIN/seg-only ({judged['best_augmentation']}), in-domain >= -{MAX_IN_DOMAIN_LOSS:.0f}, "
                    f"SPM T1 >= 0): {judged['pd_t2_vs_baseline']:+.1f} / {judged['pd_t2_vs_best_augmentation']:+.1f} / "
                    f"{judged['in_domain_vs_baseline']:+.1f} / {judged['spm_t1_vs_baseline']:+.1f}, "
                    f"{'met' if judged['met'] else 'NOT met'}. " if judged else "")
                 + f"Runs stopped by a time cap: {capped}. "
                 + (f"Stack kinds not available in this build: {missing}. " if missing else "")
                 + f"CPU: {train_cpu / 3600:.2f} h training + evaluation, {stack_cpu / 3600:.2f} h building stacks "
                   "(this process; dask workers not counted). "
                 + " ".join(f"Stack {name} ({stores[name]}): {stack_note(stacks[name])}" for name in stores)),
        "rows": rows,
        "raw": {"runs": runs, "summary": {m: {c: list(v) for c, v in cols.items()} for m, cols in summarise(runs).items()},
                "verdict": judged, "selection_vs_seg_only": choice, "plot": str(plot.relative_to(REPO)) if plot else None, "stores": stores, "unavailable": unavailable, "stacks": stacks,
                "atlas_copy": atlas, "plan": asdict(plan), "methods": [asdict(m) for m in methods],
                "cpu_seconds_runs": train_cpu, "cpu_seconds_stacks": stack_cpu},
    }


def main(argv: list[str] | None = None) -> None:
    """`python -m bench.ood_gain [--collect-only]`: the study (resuming), or the table of the runs
    finished so far; prints the table and the verdict. `bench.run_all --only p5_ood_gain` records it."""
    import argparse

    from bench.report import markdown_table
    from bench.run_all import quick_mode

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collect-only", action="store_true", help="summarise finished runs; train nothing")
    parser.add_argument("--kinds", type=Path, default=STACK_KINDS_FILE, help="the stack kinds file")
    parser.add_argument("--heldout-val", metavar="STORE",
                        help="a val-split store from a generator no stack used (e.g. generator.kind=synth): "
                             "score every run's kept weights on it too (reported only)")
    args = parser.parse_args(argv)
    result = measure_ood_gain(quick=quick_mode(), kinds_file=args.kinds, train=not args.collect_only,
                              heldout_val=args.heldout_val)
    print(result["note"])
    print(markdown_table(result["rows"]))


if __name__ == "__main__":
    main()
