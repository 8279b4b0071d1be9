"""The GPU benchmark's code path at tiny size on the CPU (`--dry-run`): rows, FLOPs, skips, JSON."""

from __future__ import annotations

import json

from bench.gpu_generate import main


def test_gpu_benchmark_dry_run_times_counts_and_compares_rows(tmp_path):
    out = tmp_path / "gpu.json"
    result = main(["--dry-run", "--settings", "2,5", "--repeats", "1", "--peak-tflops", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    reference, combined = result["rows"]
    assert reference["setting"] == "eager bf16" and combined["setting"] == "+ prompt encoded once"
    for row in (reference, combined):
        assert row["status"] == "ok" and row["images_per_s"] > 0 and row["tflop_per_image"] > 0
        assert row["fraction_of_peak"] > 0 and abs(row["fraction_of_peak"] - row["achieved_tflops"]) < 1e-3 * row["achieved_tflops"]
    assert combined["channels_last"] and combined["fused_qkv"] and combined["embeds_once"]
    assert reference["max_abs_diff_vs_eager_bf16"] == 0.0
    assert combined["max_abs_diff_vs_eager_bf16"] < 0.05  # the same images, up to float rounding
    assert result["rows"][0]["resolution"] == 64 and "dry run" in result["model"]


def test_rows_past_the_budget_are_skipped(tmp_path):
    result = main(["--dry-run", "--settings", "1", "--max-seconds", "0", "--out", str(tmp_path / "gpu.json")])
    assert [row["status"] for row in result["rows"]] == ["skipped: past the 0 s budget"]
