"""The recipe sweep: S2S2's loss weights, encoder stages, steps, K and the batch-norm option, one
factor at a time around a centre, matched seeds, the baseline at the same steps. Every choice is
made on validation only: the real val split and stack-val (the model segmenting the stack images
of the val masks, `store.val_path`). The test sets are evaluated for reporting only.

    python -m bench.recipe_sweep                     # the planned runs, in priority order; resumable
    python -m bench.recipe_sweep --only centre-st300 w0.1-st300 --seeds 0 1 2
    python -m bench.recipe_sweep --collect-only      # add every finished run to sweep.json, train nothing
    python -m bench.recipe_sweep --table             # re-render runs/sweep/sweep.md from sweep.json
    python -m bench.recipe_sweep --table --paired    # + the variants around the recipe paired by seed
        # with the robustness study's recipe and baseline runs at 1,000 steps (runs/sweep/paired.md;
        # `--study FOLDER` names that study's results folder once the config trains other steps)
    python -m bench.recipe_sweep --collect-only --heldout-val runs/heldout/stack-val.zarr
        # also score every run's kept weights on the val masks' images from another generator
        # (a held-out appearance family, e.g. `generator.kind=synth`): reported beside the choice

Each run uses one torch thread; on 2 cores, two sweep processes with disjoint `--only` lists run side
by side (sweep.json is merged under a lock). Each run `s2s2 train` + `s2s2 evaluate` in its
own process; a run whose folder holds summary.json and metrics.json is skipped. Results go to
`runs/sweep/sweep.json` (every run: val Dice, stack-val Dice, the test sets, CPU seconds) and the
table to `runs/sweep/sweep.md`. Stores: the default stack and its stack-val store
(`make generate` makes both).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import resource
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RUN_DIR = "runs/sweep"
CONFIG = "configs/default.yaml"
STORE = "runs/default/stack.zarr"
VAL_STORE = "runs/default/stack-val.zarr"
SEEDS = (0, 1, 2)
TEST_SETS = ("in_domain", "spm_t1", "spm_pd", "spm_t2")
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
# Every run states the settings the sweep varies, so the config's defaults cannot decide a row.
CENTRE: dict[str, Any] = {"train.loss.w_seg_gen": 1.0, "train.loss.a_enc": 1.0, "train.loss.a_dec": 0.0,
                          "train.bn_stack_stats": True, "train.select_on": "mean"}


@dataclass(frozen=True)
class Variant:
    """One row of the sweep: a name, the train overrides on top of the centre, the steps."""

    name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    steps: int = 300
    baseline: bool = False

    @property
    def key(self) -> str:
        return f"{self.name}-st{self.steps}"

    def settings(self) -> dict[str, Any]:
        if self.baseline:
            return {"train.stack": False, "train.select_on": "val"}  # it never sees stack images
        return {"train.stack": True, **CENTRE, **self.overrides}


def variants() -> list[Variant]:
    """Every variant, one factor changed from the centre (w_seg_gen 1, a_enc 1, a_dec 0, batch-norm
    statistics over all 2B images, the model's default encoder stage, K = 4, checkpoint on the mean
    of val and stack-val)."""
    return [
        Variant("baseline", baseline=True, steps=300),
        Variant("centre", steps=300),
        Variant("w0.1", {"train.loss.w_seg_gen": 0.1}),  # the library default before the sweep
        Variant("seg-only", {"train.loss.a_enc": 0.0}),  # stack images with the seg loss, no L_sc
        Variant("bn-originals", {"train.bn_stack_stats": False}),
        Variant("baseline", baseline=True, steps=1000),
        Variant("centre", steps=1000),
        Variant("seg-only", {"train.loss.a_enc": 0.0}, steps=1000),
        Variant("a_dec1", {"train.loss.a_dec": 1.0}),
        Variant("w0.5", {"train.loss.w_seg_gen": 0.5}),
        Variant("sc-stage2", {"model.sc_stages": ["stage2"]}),
        # around the chosen recipe (seg-only, 1,000 steps): levers on its in-domain cost
        Variant("seg-only-w0.5", {"train.loss.a_enc": 0.0, "train.loss.w_seg_gen": 0.5}, steps=1000),
        Variant("seg-only-bn-originals", {"train.loss.a_enc": 0.0, "train.bn_stack_stats": False}, steps=1000),
        # the L_sc settings at the recipe's steps, against S2S2 with L_sc on the encoder's stage4 alone
        Variant("a_dec1", {"train.loss.a_dec": 1.0}, steps=1000),
        Variant("sc-stage2", {"model.sc_stages": ["stage2"]}, steps=1000),
        # around the recipe: more steps (the baseline at the same steps), fewer stack images per mask
        # (the first K of the store's 4), the checkpoint rule
        Variant("baseline", baseline=True, steps=2000),
        Variant("seg-only", {"train.loss.a_enc": 0.0}, steps=2000),
        Variant("baseline", baseline=True, steps=3000),
        Variant("seg-only", {"train.loss.a_enc": 0.0}, steps=3000),
        Variant("seg-only-k1", {"train.loss.a_enc": 0.0, "train.stack_k": 1}, steps=1000),
        Variant("seg-only-k2", {"train.loss.a_enc": 0.0, "train.stack_k": 2}, steps=1000),
        Variant("seg-only-select-val", {"train.loss.a_enc": 0.0, "train.select_on": "val"}, steps=1000),
        Variant("seg-only-select-stack-val", {"train.loss.a_enc": 0.0, "train.select_on": "stack_val"}, steps=1000),
    ]


# The order runs are made in when the CPU budget is short: the centre and the old default first, then
# one seed of each factor, then more seeds.
PRIORITY = ("centre-st300", "w0.1-st300", "centre-st1000", "bn-originals-st300", "seg-only-st300")


def plan(names: list[str] | None, seeds: tuple[int, ...]) -> list[tuple[Variant, int]]:
    """(variant, seed) in priority order: the PRIORITY variants' seed 0, their other seeds pairwise,
    then every other variant seed by seed."""
    chosen = [v for v in variants() if not names or v.key in names]
    first = [v for key in PRIORITY for v in chosen if v.key == key]
    rest = [v for v in chosen if v not in first]
    order = [(v, seeds[0]) for v in first] + [(v, seed) for seed in seeds[1:] for v in first]
    return order + [(v, seed) for seed in seeds for v in rest]


def run_name(variant: Variant, seed: int) -> str:
    return f"{variant.key}_s{seed}"


def overrides(variant: Variant, seed: int) -> list[str]:
    """`--set` arguments of one run."""
    values = {"run_dir": RUN_DIR, "store.path": STORE, "store.val_path": VAL_STORE, "train.seed": seed,
              "train.steps": variant.steps, **variant.settings()}
    args = []
    for key, value in values.items():
        args += ["--set", f"{key}={json.dumps(value) if isinstance(value, list) else value}"]
    return args


def folder(name: str) -> Path:
    return REPO / RUN_DIR / "train" / name


def finished(name: str) -> bool:
    return (folder(name) / "summary.json").is_file() and (folder(name) / "metrics.json").is_file()


def train_and_evaluate(variant: Variant, seed: int) -> float:
    """Train and evaluate one run in child processes; returns their CPU seconds."""
    name = run_name(variant, seed)
    log = REPO / RUN_DIR / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    base = [sys.executable, "-m", "s2s2.cli"]
    with log.open("w") as sink:
        for command in (["train", "--config", CONFIG, "--name", name, "--overwrite"],
                        ["evaluate", "--config", CONFIG, "--name", name]):
            subprocess.run(base + command + overrides(variant, seed), cwd=REPO, stdout=sink, stderr=subprocess.STDOUT,
                           env={**os.environ, **ENV}, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def kept_weights_val_dice(cfg: Any, weights: Path) -> float:
    """The Dice (eval classes, mean per image) of the weights file of a run of `cfg` on every image of
    the val-split store `cfg.store.val_path`."""
    import torch

    from s2s2.pipeline.data.prepare import prepare_dataset
    from s2s2.pipeline.metrics import nanmean
    from s2s2.pipeline.segmenters.registry import build_segmenter
    from s2s2.pipeline.segmenters.weights import load_weights, model_identity
    from s2s2.stages.train.stack_val import load_stack_val
    from s2s2.stages.train.validation import eval_class_ids, validate_stack

    torch.set_num_threads(1)
    dataset = prepare_dataset(cfg.data)
    shape = (cfg.model, dataset.image_shape[0], dataset.num_classes, dataset.image_shape[1])
    model = build_segmenter(*shape)
    load_weights(model, weights, model_identity(*shape))
    scores = validate_stack(model, load_stack_val(cfg, dataset), dataset.class_names, torch.device("cpu"), 16)
    return nanmean([scores[n] for n in eval_class_ids(dataset.class_names, cfg.evaluate.eval_classes)])


def stack_val_of_kept_weights(name: str, variant: Variant, val_store: str = VAL_STORE) -> float:
    """The Dice of a run's model.safetensors on the images of a val-split store (`val_store`: the
    stack-val store, for a run trained without it, or another generator's), its config rebuilt from
    the sweep's config and the variant, as the run was started."""
    from s2s2.pipeline.config.base import load_config
    from s2s2.pipeline.config.project import ProjectConfig

    cfg = load_config(ProjectConfig, REPO / CONFIG,
                      overrides={**variant.settings(), "store.path": STORE, "store.val_path": val_store})
    return kept_weights_val_dice(cfg, folder(name) / "model.safetensors")


def collect(name: str, variant: Variant, seed: int, cpu: float | None) -> dict[str, Any]:
    """One run's row of sweep.json."""
    summary = json.loads((folder(name) / "summary.json").read_text())
    metrics = json.loads((folder(name) / "metrics.json").read_text())["test_sets"]
    stack_val = summary.get("best_stack_val_dice_mean")
    if stack_val is None:
        stack_val = stack_val_of_kept_weights(name, variant)
    return {"name": name, "variant": variant.key, "seed": seed, "steps": summary["steps"],
            "settings": variant.settings(), "select_on": summary.get("select_on", "val"),
            "selected_step": summary.get("selected_step"),
            "val": summary["best_val_dice_mean"], "stack_val": stack_val,
            "test": {s: metrics[s]["dice_mean"] for s in TEST_SETS if s in metrics},
            "stopped_by_time_cap": summary["stopped_by_time_cap"], "train_seconds": summary["seconds"],
            "cpu_seconds": cpu}


def points(runs: list[dict[str, Any]], pick: Any) -> str:
    """mean ± std over the runs that have the value, in points; "–" when none has it."""
    values = [100 * value for value in map(pick, runs) if value is not None]
    if not values:
        return "–"
    return f"{statistics.fmean(values):.1f}" + (f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else "")


def table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown: per variant, seeds done, validation (the choice) and the test sets (reported only),
    mean ± std over seeds in Dice points."""
    heldout = any("heldout_val" in r for r in results.values())
    lines = ["| variant | seeds | val | stack-val | **selection: mean(val, stack-val)** | "
             + ("held-out family val | " if heldout else "")
             + "in_domain | spm_t1 | spm_pd | spm_t2 | PD/T2 mean | CPU s/run |", "|" + "---|" * (12 if heldout else 11)]
    for variant in variants():
        runs = [r for r in results.values() if r["variant"] == variant.key]
        if not runs:
            continue
        runs.sort(key=lambda r: r["seed"])
        cpu = [r["cpu_seconds"] for r in runs if r["cpu_seconds"]]
        cells = [points(runs, lambda r: r["val"]), points(runs, lambda r: r["stack_val"]),
                 points(runs, lambda r: (r["val"] + r["stack_val"]) / 2),
                 *([points(runs, lambda r: r.get("heldout_val"))] if heldout else []),
                 *(points(runs, lambda r, s=s: r["test"][s]) for s in TEST_SETS),
                 points(runs, lambda r: (r["test"]["spm_pd"] + r["test"]["spm_t2"]) / 2),
                 f"{statistics.fmean(cpu):.0f}" if cpu else "–"]
        lines.append(f"| {variant.key} | {','.join(str(r['seed']) for r in runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# The robustness study's matched runs of the recipe and the baseline at 1,000 steps (same config, code
# and seeds as the sweep's rows): the reference the variants around the recipe are paired with. The
# study follows the config's steps, so a study at other steps is refused rather than paired.
STUDY_RESULTS = "runs/bench/p5/results"
REFERENCE_STEPS = 1000
STUDY_ROWS = {"baseline": f"baseline-st{REFERENCE_STEPS}", "s2s2_no_sc[controlnet_appearance]": f"seg-only-st{REFERENCE_STEPS}"}
AROUND_THE_RECIPE = ("seg-only-st2000", "seg-only-st3000", "seg-only-k1-st1000", "seg-only-k2-st1000", "seg-only-select-val-st1000",
                     "seg-only-select-stack-val-st1000", "seg-only-w0.5-st1000", "seg-only-bn-originals-st1000")


def study_rows(folder: Path) -> list[dict[str, Any]]:
    """The study's recipe and baseline runs as sweep rows (variant keys of STUDY_ROWS); a run at other
    than REFERENCE_STEPS steps is refused, naming the file and the fix."""
    rows = []
    for path in sorted(folder.glob("*.json")):
        run = json.loads(path.read_text())["run"]
        if run["method"] not in STUDY_ROWS:
            continue
        if run["steps"] != REFERENCE_STEPS:
            raise SystemExit(f"{path}: the study run trained {run['steps']} steps, and the variants around the "
                             f"recipe are paired with the recipe at {REFERENCE_STEPS}; fix: pass --study with "
                             f"the results folder of a study at {REFERENCE_STEPS} steps")
        rows.append({"variant": STUDY_ROWS[run["method"]], "seed": run["seed"], "val": run["val_dice"],
                     "stack_val": run["stack_val_dice"],
                     "test": {s: run["metrics"][s]["dice_mean"] for s in TEST_SETS}})
    return rows


def selection(row: dict[str, Any]) -> float:
    return (row["val"] + row["stack_val"]) / 2


def pd_t2(row: dict[str, Any]) -> float:
    return (row["test"]["spm_pd"] + row["test"]["spm_t2"]) / 2


def paired_cell(diffs: list[float]) -> str:
    """Mean of per-seed differences in points, with its 95 % t-interval from two seeds on."""
    from bench.ood_gain import t_interval

    if not diffs:
        return "–"
    mean, low, high = t_interval([100 * d for d in diffs])
    return f"{mean:+.1f}" + (f" [{low:+.1f}, {high:+.1f}]" if len(diffs) > 1 else "")


def paired_table(results: dict[str, dict[str, Any]], study: list[dict[str, Any]]) -> str:
    """Markdown: each variant around the recipe paired by seed with the recipe (selection score, the
    choice) and with the baseline at its own steps (test sets, reported only), in Dice points."""
    baselines = ("baseline-st2000", "baseline-st3000")  # the sweep's; at 1,000 steps the study's
    rows = [r for r in results.values() if r["variant"] in (*AROUND_THE_RECIPE, *baselines)] + study
    by_key = {(r["variant"], r["seed"]): r for r in rows}
    lines = ["| variant | seeds | selection − the recipe's (per seed) | mean [95 % CI] | in-domain − baseline "
             "| SPM T1 − baseline | PD/T2 − baseline |", "|---|---|---|---|---|---|---|"]
    for key in ("seg-only-st1000", *AROUND_THE_RECIPE):
        steps = key.rsplit("-st", 1)[1]
        mine = sorted((r for r in rows if r["variant"] == key), key=lambda r: r["seed"])
        recipe = [(r, by_key.get(("seg-only-st1000", r["seed"]))) for r in mine]
        base = [(r, by_key.get((f"baseline-st{steps}", r["seed"]))) for r in mine]
        chosen = [selection(r) - selection(ref) for r, ref in recipe if ref is not None]
        against_base = [(r, ref) for r, ref in base if ref is not None]
        cells = [", ".join(f"{100 * d:+.1f}" for d in chosen) or "–", paired_cell(chosen),
                 paired_cell([r["test"]["in_domain"] - ref["test"]["in_domain"] for r, ref in against_base]),
                 paired_cell([r["test"]["spm_t1"] - ref["test"]["spm_t1"] for r, ref in against_base]),
                 paired_cell([pd_t2(r) - pd_t2(ref) for r, ref in against_base])]
        lines.append(f"| {key}{' (the recipe, from the study)' if key == 'seg-only-st1000' else ''} | "
                     f"{','.join(str(r['seed']) for r in mine)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def load() -> dict[str, dict[str, Any]]:
    path = REPO / RUN_DIR / "sweep.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def write(results: dict[str, dict[str, Any]]) -> None:
    out = REPO / RUN_DIR
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "sweep.json.tmp"
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(out / "sweep.json")
    (out / "sweep.md").write_text(table(results))


def record(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Merge `rows` into sweep.json under an exclusive lock, so that sweep processes running side by
    side (one per core) keep each other's rows; returns the merged results."""
    lock_path = REPO / RUN_DIR / "sweep.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = {**load(), **rows}
        write(results)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="variant keys (e.g. centre-st300); default every variant")
    parser.add_argument("--seeds", nargs="*", type=int, default=list(SEEDS))
    parser.add_argument("--collect-only", action="store_true", help="collect finished runs, train nothing")
    parser.add_argument("--table", action="store_true", help="only re-render the table from sweep.json")
    parser.add_argument("--paired", action="store_true",
                        help="also pair the variants around the recipe by seed with the study's recipe and "
                             "baseline runs (--study); written to paired.md")
    parser.add_argument("--study", type=Path, default=REPO / STUDY_RESULTS,
                        help=f"the results folder of the robustness study at {REFERENCE_STEPS} steps "
                             f"(default {STUDY_RESULTS})")
    parser.add_argument("--heldout-val", metavar="STORE",
                        help="a val-split store from another generator: score every run's kept weights on it "
                             "(reported; the choice stays on val and stack-val)")
    args = parser.parse_args()
    results = load()
    if not args.table:
        for variant, seed in plan(args.only, tuple(args.seeds)):
            name = run_name(variant, seed)
            cpu = None
            if not finished(name) and args.collect_only:
                continue
            if not finished(name):
                print(f"sweep: {name}", flush=True)
                cpu = train_and_evaluate(variant, seed)
            if name not in results or cpu is not None:
                row = collect(name, variant, seed, cpu)
                results = record({name: row})
                print(f"sweep: {name}: val {100 * row['val']:.1f}, stack-val {100 * row['stack_val']:.1f}"
                      + (f", {cpu:.0f} CPU s" if cpu else ""), flush=True)
    if args.heldout_val:
        scored = {}
        for name, row in results.items():
            variant = next(v for v in variants() if v.key == row["variant"])
            scored[name] = {**row, "heldout_val": stack_val_of_kept_weights(name, variant, args.heldout_val),
                            "heldout_val_store": args.heldout_val}
        results = record(scored)
    print(table(load()))
    if args.paired:
        paired = paired_table(load(), study_rows(args.study))
        (REPO / RUN_DIR / "paired.md").write_text(paired)
        print(paired)


if __name__ == "__main__":
    main()
