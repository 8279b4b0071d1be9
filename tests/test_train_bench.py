"""bench/train_step.py measures the three step kinds on the real trainer and returns raw timings."""

from __future__ import annotations

from bench.train_step import time_preset


def test_time_preset_returns_positive_medians_and_raw_timings():
    row = time_preset("unet", size=32, batch=2, warmup=1, steps=2)
    assert row["baseline_2b_s"] > 0 and row["s2s2_s"] > 0 and row["authors_s"] > 0
    assert row["ratio"] == row["s2s2_s"] / row["baseline_2b_s"]
    assert {k: len(v) for k, v in row["raw_s"].items()} == {"s2s2": 2, "baseline_2b": 2, "authors": 2}
