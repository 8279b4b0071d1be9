"""Which encoder stage(s) L_enc should compare (`model.sc_stages`), chosen on the validation split.

S2S2 runs of one model against the default stack, one per candidate and seed, plus the baseline of
the same seeds for scale; each run keeps its best validation checkpoint, and the table reports the
best validation Dice (mean ± std over seeds), the paired difference to the baseline with its 95 %
t-interval, and the size of L_enc at the end of training. No test set is read.

    python -m bench.sc_stages                                  # unet, 3 seeds, the config's steps
    python -m bench.sc_stages --store runs/bench/stacks/synth/stack.zarr --run-dir runs/bench/sc_stages_synth
    python -m bench.sc_stages --model transunet --seeds 0 1 --candidates tokens stage2 stage2+tokens
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Any

from bench.ood_gain import (
    BASELINE,
    DEFAULT_CONFIG,
    NO_AUGMENTATION,
    Method,
    Plan,
    make_jobs,
    mean_std,
    run_jobs,
    t_interval,
)
from bench.report import markdown_table

CANDIDATES = {"unet": ("stage5", "stage4", "stage3", "stage2", "stage3+stage4+stage5")}
RUN_DIR = "runs/bench/sc_stages"


def candidate_methods(model: str, candidates: list[str]) -> list[Method]:
    """The baseline and one S2S2 method per candidate (`a+b` compares stages a and b)."""
    common = {"model.name": model, **NO_AUGMENTATION}
    return [Method(BASELINE, None, {**common, "train.stack": False})] + [
        Method(f"s2s2[sc={candidate}]", "default", {**common, "train.stack": True,
                                                    "model.sc_stages": candidate.split("+")})
        for candidate in candidates]


def final_l_enc(folder: str) -> float:
    """L_enc averaged over the last logged window of a run (log.csv)."""
    rows = [row for row in csv.DictReader(open(Path(folder) / "log.csv")) if row["enc"]]
    return float(rows[-1]["enc"])


def table(runs: list[dict[str, Any]], methods: list[Method]) -> list[dict[str, Any]]:
    """One row per method: validation Dice (points), paired difference to the baseline, final L_enc."""
    base = {run["seed"]: 100.0 * run["val_dice"] for run in runs if run["method"] == BASELINE}
    rows = []
    for method in methods:
        mine = sorted((run for run in runs if run["method"] == method.name), key=lambda run: run["seed"])
        values = [100.0 * run["val_dice"] for run in mine]
        mean, std = mean_std(values)
        row: dict[str, Any] = {"method": method.name, "seeds": len(mine), "val Dice": f"{mean:.1f} ± {std:.1f}"}
        if method.name != BASELINE:
            diff, low, high = t_interval([100.0 * run["val_dice"] - base[run["seed"]] for run in mine])
            row["Δ vs baseline [95 %]"] = f"{diff:+.1f} [{low:+.1f}, {high:+.1f}]"
            row["L_enc at end"] = f"{mean_std([final_l_enc(run['folder']) for run in mine])[0]:.2g}"
        row["CPU s/run"] = f"{mean_std([run['cpu_seconds'] for run in mine])[0]:.0f}"
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sc_stages", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="unet")
    parser.add_argument("--candidates", nargs="+", help="stage names, `a+b` for several (default: per model)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, help="steps per run (default: the config's)")
    parser.add_argument("--store", default="runs/default/stack.zarr", help="the stack S2S2 trains against")
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--run-dir", default=RUN_DIR, help="where the runs go")
    args = parser.parse_args(argv)
    methods = candidate_methods(args.model, args.candidates or list(CANDIDATES[args.model]))
    plan = Plan(seeds=tuple(args.seeds), steps=None, parallel=args.parallel, run_dir=args.run_dir)
    jobs = make_jobs(methods, plan, DEFAULT_CONFIG, {"default": args.store})
    for job in jobs:
        job["evaluate"] = False  # the choice is made on the validation split only
        if args.steps:
            job["overrides"]["train.steps"] = args.steps
    runs = run_jobs(jobs, plan.parallel)
    print(markdown_table(table(runs, methods), ["method", "seeds", "val Dice", "Δ vs baseline [95 %]",
                                                 "L_enc at end", "CPU s/run"]))


if __name__ == "__main__":
    main()
