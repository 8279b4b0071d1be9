"""The GPU benchmark's code path at tiny size on the CPU (`--dry-run`): rows, skips, JSON."""

from __future__ import annotations

import json

from bench.gpu_generate import main


def test_gpu_benchmark_dry_run_times_a_row_and_skips_missing_backends(tmp_path):
    out = tmp_path / "gpu.json"
    result = main(["--dry-run", "--attention", "sdpa,xformers", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    ok = [row for row in result["rows"] if row["attention"] == "sdpa"]
    assert len(ok) == 1 and ok[0]["status"] == "ok" and ok[0]["images_per_s"] > 0
    xformers = [row for row in result["rows"] if row["attention"] == "xformers"]
    assert len(xformers) == 1 and xformers[0]["status"].startswith(("ok", "skipped"))
    assert result["rows"][0]["resolution"] == 64 and "dry run" in result["model"]
