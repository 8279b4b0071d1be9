"""bench/recipe_sweep.py: sweep processes running side by side keep each other's rows, and every
variant states the settings it sweeps."""

from __future__ import annotations

import multiprocessing

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
    steps_only = {"seg-only-st300", "seg-only-st2000"}  # the steps are the variant's own field
    assert all(changed[key] == {} for key in steps_only)
    assert all(len(settings) == 1 for key, settings in changed.items() if key not in steps_only), changed
    assert len({v.key for v in sweep.variants()}) == len(sweep.variants())
