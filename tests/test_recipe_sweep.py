"""bench/recipe_sweep.py: sweep processes running side by side keep each other's rows, and every
variant states the settings it sweeps."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

import bench.recipe_sweep as sweep

ROWS_PER_PROCESS = 30


def record_rows(prefix: str) -> None:
    for i in range(ROWS_PER_PROCESS):
        sweep.record({f"{prefix}{i}": {"variant": "none", "seed": i}})


def test_two_sweep_processes_recording_at_once_keep_every_row(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "REPO", tmp_path)  # forked children inherit it
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=record_rows, args=(prefix,)) for prefix in ("a", "b")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    assert sorted(sweep.load()) == sorted(f"{p}{i}" for p in "ab" for i in range(ROWS_PER_PROCESS))


def test_the_variants_around_the_recipe_change_one_setting_each():
    recipe = next(v for v in sweep.variants() if v.key == "seg-only-st1000").settings()
    changed = {v.key: {k: value for k, value in v.settings().items() if recipe.get(k) != value}
               for v in sweep.variants() if v.key.startswith("seg-only-") and v.key != "seg-only-st1000"}
    assert changed["seg-only-k2-st1000"] == {"train.stack_k": 2}
    assert changed["seg-only-select-val-st1000"] == {"train.select_on": "val"}
    steps_only = {"seg-only-st300", "seg-only-st2000", "seg-only-st3000"}  # the steps are the variant's own field
    assert all(changed[key] == {} for key in steps_only)
    assert all(len(settings) == 1 for key, settings in changed.items() if key not in steps_only), changed
    assert len({v.key for v in sweep.variants()}) == len(sweep.variants())


def row(variant: str, seed: int, val: float, stack_val: float, in_domain: float, pd: float) -> dict:
    return {"variant": variant, "seed": seed, "val": val, "stack_val": stack_val,
            "test": {"in_domain": in_domain, "spm_t1": 0.8, "spm_pd": pd, "spm_t2": pd}}


def test_paired_table_pairs_each_seed_with_the_recipe_and_the_baseline_at_the_same_steps():
    study = [row("seg-only-st1000", s, 0.80, 0.70, 0.86, 0.60) for s in (0, 1)]
    study += [row("baseline-st1000", s, 0.84, 0.58, 0.88, 0.34) for s in (0, 1)]
    results = {"a": row("seg-only-st2000", 0, 0.82, 0.72, 0.87, 0.62),
               "b": row("seg-only-st2000", 1, 0.80, 0.74, 0.87, 0.64),
               "c": row("baseline-st2000", 0, 0.85, 0.58, 0.89, 0.30),
               "d": row("baseline-st2000", 1, 0.85, 0.58, 0.89, 0.34),
               "e": row("seg-only-k2-st1000", 1, 0.80, 0.60, 0.84, 0.50)}
    lines = {line.split(" | ")[0].strip("| "): line for line in sweep.paired_table(results, study).splitlines()}
    assert "| 0,1 | +2.0, +2.0 | +2.0 [+2.0, +2.0] | -2.0 [-2.0, -2.0] | +0.0 [+0.0, +0.0] | +31.0 [" in \
        lines["seg-only-st2000"]
    assert "| 1 | -5.0 | -5.0 | -4.0 | +0.0 | +16.0 |" in lines["seg-only-k2-st1000"]
    assert "| – | – | – | – | – |" in lines["seg-only-k1-st1000"]  # no run yet


def study_run(folder: Path, name: str, method: str, steps: int) -> None:
    metrics = {s: {"dice_mean": 0.5} for s in sweep.TEST_SETS}
    run = {"method": method, "seed": 0, "steps": steps, "val_dice": 0.8, "stack_val_dice": 0.7, "metrics": metrics}
    (folder / f"{name}.json").write_text(json.dumps({"run": run}))


def test_study_rows_take_the_recipe_at_the_reference_steps_and_refuse_a_study_at_other_steps(tmp_path):
    study_run(tmp_path, "s2s2_no_sc-controlnet_appearance_s0", "s2s2_no_sc[controlnet_appearance]", 1000)
    study_run(tmp_path, "gin_s0", "gin", 2000)  # not a reference method: ignored
    assert [(r["variant"], r["seed"]) for r in sweep.study_rows(tmp_path)] == [("seg-only-st1000", 0)]
    study_run(tmp_path, "baseline_s0", "baseline", 2000)
    with pytest.raises(SystemExit, match=r"baseline_s0\.json: the study run trained 2000 steps.*--study"):
        sweep.study_rows(tmp_path)
