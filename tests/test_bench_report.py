"""The benchmark plumbing: results JSON, table rendering, marker-preserving BENCHMARKS.md updates,
and per-figure isolation (an error or a timeout is recorded, not raised). No timings asserted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench import ood_gain, run_all
from bench.report import (
    BEGIN_MARK,
    END_MARK,
    FIGURES,
    fmt,
    markdown_table,
    meets,
    render_gpu,
    render_gpu_smoke,
    render_tables,
    replace_between_markers,
    update_benchmarks_md,
)
from s2s2.pipeline.errors import S2S2Error

MACHINE = {"cpu_model": "Test CPU", "cores": 2, "cores_usable": 2, "ram_gb": 24.0, "torch": "2.x", "zarr": "3.x"}


def _results() -> dict:
    return {
        "date": "2026-01-01T00:00:00+00:00",
        "machine": MACHINE,
        "figures": {
            "p1_step_ratio": {
                "status": "ok", "value": 1.5, "how": "median of 30 steps", "mode": "quick", "seconds": 12.0,
                "command": "python -m bench.run_all --only p1_step_ratio", "date": "2026-01-01T00:00:00+00:00",
                "rows": [{"preset": "unet", "baseline_s": 0.1, "s2s2_s": 0.15, "ratio": 1.5}],
            },
            "p2_read_reduction": {
                "status": "ok", "value": 40.0, "how": "bytes", "mode": "full", "seconds": 3.0,
                "command": "c2", "date": "d2", "rows": [{"dataset": "ct|mri", "ratio": 40.0}],
            },
            "p3_loader_speedup": {
                "status": "error", "error": "Traceback ...\nZeroDivisionError: boom", "mode": "full",
                "seconds": 1.0, "command": "c3", "date": "d3",
            },
            "p5_ood_gain": {
                "status": "ok", "value": 4.0, "met": False, "how": "3 seeds", "mode": "full", "seconds": 9.0,
                "command": "c5", "date": "d5", "rows": [], "note": "in-domain dropped by 2 points",
            },
        },
    }


def test_meets_and_fmt() -> None:
    assert meets(1.04, "<=", 1.05) is True
    assert meets(1.06, "<=", 1.05) is False
    assert meets(8.0, ">=", 8.0) is True
    assert meets(None, ">=", 8.0) is None
    assert meets(1.7, ">=", None) is None  # reported figures are not judged
    with pytest.raises(S2S2Error):
        meets(1.0, "==", 1.0)
    assert fmt(None) == "–"
    assert fmt(True) == "yes"
    assert fmt(1.23456) == "1.23"
    assert fmt(12.345) == "12.3"
    assert fmt(1234.0) == "1234"
    assert fmt("a|b") == "a\\|b"


def test_markdown_table_columns_in_first_seen_order() -> None:
    table = markdown_table([{"a": 1, "b": 2.0}, {"c": "x", "a": 3}])
    lines = table.splitlines()
    assert lines[0] == "| a | b | c |"
    assert lines[1] == "|---|---|---|"
    assert lines[2] == "| 1 | 2 | – |"
    assert lines[3] == "| 3 | – | x |"
    assert markdown_table([]) == "_(no rows)_"


def test_render_tables_shows_every_figure_its_verdict_and_errors() -> None:
    text = render_tables(_results(), gpu=None)
    summary = text.split("### Details")[0]
    rows = {line.split("|")[1].strip(): line for line in summary.splitlines() if line.startswith("| p")}
    assert set(rows) == set(FIGURES)  # every figure has a row, run or not
    assert "1.5 x" in rows["p1_step_ratio"] and "| no |" in rows["p1_step_ratio"]  # 1.5 > 1.05
    assert "ok (quick)" in rows["p1_step_ratio"]
    assert "| yes |" in rows["p2_read_reduction"]
    assert "error" in rows["p3_loader_speedup"]
    assert "| no |" in rows["p5_ood_gain"]  # the figure's own verdict wins over value >= 3
    assert "not run" in rows["p6_scaling"]
    assert "Test CPU, 2 cores, 24 GB RAM" in rows["p1_step_ratio"]
    assert "ZeroDivisionError: boom" in text  # the error text is shown in the details
    assert "ct\\|mri" in text  # cells are escaped
    assert "in-domain dropped by 2 points" in text
    assert "No `bench/gpu_results.json` yet" in text


def test_render_gpu_names_the_card() -> None:
    gpu = {"device": "NVIDIA H100 80GB HBM3", "rows": [{"attention": "sdpa", "dtype": "bf16", "images_per_s": 9.5}]}
    text = render_gpu(gpu)
    assert "NVIDIA H100 80GB HBM3" in text
    assert "| sdpa | bf16 | 9.5 |" in text


def test_render_gpu_smoke_names_the_card_or_says_not_run() -> None:
    assert "Not run yet" in render_gpu_smoke(None)
    smoke = {"device": "NVIDIA H200", "seconds_total": 412.0,
             "rows": [{"phase": "finetune", "status": "ok", "s_per_step": 0.81, "peak_gib": 30.5}]}
    text = render_gpu_smoke(smoke)
    assert "NVIDIA H200" in text and "| finetune | ok | 0.81 | 30.5 |" in text


def test_markers_keep_prose_and_replace_only_the_block() -> None:
    original = f"# Benchmarks\n\nprose before\n\n{BEGIN_MARK}\nold table\n{END_MARK}\n\n## Notes\nprose after\n"
    updated = replace_between_markers(original, "NEW")
    assert "old table" not in updated
    assert updated.startswith("# Benchmarks\n\nprose before\n\n")
    assert updated.endswith(f"{BEGIN_MARK}\nNEW\n{END_MARK}\n\n## Notes\nprose after\n")
    assert replace_between_markers(updated, "NEW") == updated  # idempotent
    appended = replace_between_markers("# B\nonly prose\n", "T")
    assert appended == f"# B\nonly prose\n\n{BEGIN_MARK}\nT\n{END_MARK}\n"
    with pytest.raises(S2S2Error, match="markers are broken"):
        replace_between_markers(f"x\n{END_MARK}\n{BEGIN_MARK}\n", "T")
    with pytest.raises(S2S2Error, match="markers are broken"):
        replace_between_markers(f"x\n{BEGIN_MARK}\n", "T")


def test_update_benchmarks_md_on_disk(tmp_path: Path) -> None:
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\nWhat the figures mean.\n")
    update_benchmarks_md(_results(), None, path=md)
    first = md.read_text()
    assert first.startswith("# Benchmarks\n\nWhat the figures mean.\n")
    assert first.count(BEGIN_MARK) == 1 and "p1_step_ratio" in first
    update_benchmarks_md(_results(), None, path=md)
    assert md.read_text() == first
    assert [p.name for p in tmp_path.iterdir()] == ["BENCHMARKS.md"]  # no temporary left behind


def test_results_json_merge_and_atomic_write(tmp_path: Path) -> None:
    machine = run_all.machine_info()
    assert machine["cores"] >= 1 and machine["ram_gb"] > 0 and machine["torch"] != "not installed"
    results = run_all.merge_entry({}, "p2_read_reduction", {"status": "ok", "value": 9.0}, machine)
    results = run_all.merge_entry(results, "p1_step_ratio", {"status": "ok", "value": 1.0}, machine)
    assert list(results["figures"]) == ["p1_step_ratio", "p2_read_reduction"]  # figure order, both kept
    results = run_all.merge_entry(results, "p2_read_reduction", {"status": "error", "error": "x"}, machine)
    assert results["figures"]["p2_read_reduction"]["status"] == "error"
    assert results["figures"]["p1_step_ratio"]["value"] == 1.0
    path = tmp_path / "results.json"
    run_all.write_results(results, path)
    assert json.loads(path.read_text()) == results
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_failing_figure_is_recorded_not_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(quick: bool) -> dict:
        raise RuntimeError(f"figure failed (quick={quick})")

    monkeypatch.setitem(run_all.RUNNERS, "p6_scaling", broken)
    out = tmp_path / "entry.json"
    assert run_all.run_child("p6_scaling", True, out) == 1
    entry = json.loads(out.read_text())
    assert entry["status"] == "error" and "RuntimeError: figure failed (quick=True)" in entry["error"]


def test_figure_timeout_kills_the_child_and_records_it() -> None:
    entry = run_all.run_figure("p5_ood_gain", quick=True, limit_s=1)  # trains for minutes
    assert entry["status"] == "error" and "timed out after 1 s" in entry["error"]
    assert entry["command"] == "BENCH_QUICK=1 python -m bench.run_all --only p5_ood_gain"
    assert entry["mode"] == "quick" and entry["seconds"] < 30


# --- p5: the robustness study's statistics (pure) ----------------------------------------------

def _run(method: str, seed: int, in_domain: float, ood: tuple[float, float, float], val: float | None = 0.7,
         capped: bool = False) -> dict:
    sets = dict(zip(ood_gain.TEST_SETS, (in_domain, *ood)))
    return {"method": method, "seed": seed, "val_dice": val, "steps": 300, "stopped_by_time_cap": capped,
            "metrics": {name: {"dice_mean": value, "dice": {}} for name, value in sets.items()}}


def test_t_interval_matches_the_textbook_formula() -> None:
    values = [1.0, 2.0, 4.0, 7.0, 6.0]
    mean, low, high = ood_gain.t_interval(values)
    sd = float(np.std(values, ddof=1))
    half = 2.7764451051977987 * sd / np.sqrt(5)  # t_{0.975, 4} from tables
    assert mean == pytest.approx(4.0) and low == pytest.approx(4.0 - half) and high == pytest.approx(4.0 + half)
    assert ood_gain.t_interval([3.0, 3.0, 3.0]) == (3.0, 3.0, 3.0)
    one = ood_gain.t_interval([2.5])
    assert one[0] == 2.5 and np.isnan(one[1]) and np.isnan(one[2])
    narrow = ood_gain.t_interval(values, confidence=0.5)
    assert low < narrow[1] < narrow[2] < high


def test_paired_differences_match_seeds_and_summaries_use_points() -> None:
    runs = [
        _run("baseline", 0, 0.80, (0.80, 0.30, 0.30)), _run("baseline", 1, 0.78, (0.84, 0.32, 0.28)),
        _run("baseline", 2, 0.70, (0.70, 0.20, 0.20)),
        _run("s2s2[synth]", 1, 0.79, (0.84, 0.58, 0.54)), _run("s2s2[synth]", 0, 0.80, (0.82, 0.60, 0.56)),
    ]
    # seed 2 has no partner; pairs are by seed, not by position
    assert ood_gain.paired_differences(runs, "s2s2[synth]", "baseline", "pd_t2") == pytest.approx([28.0, 26.0])
    assert ood_gain.paired_differences(runs, "s2s2[synth]", "baseline", "in_domain") == pytest.approx([0.0, 1.0])
    summary = ood_gain.summarise(runs)
    assert summary["baseline"]["in_domain"][0] == pytest.approx(76.0)
    assert summary["s2s2[synth]"]["pd_t2"] == pytest.approx((57.0, np.std([58.0, 56.0], ddof=1)))
    assert summary["baseline"]["val"] == pytest.approx((70.0, 0.0))


def test_p5_verdict_checks_each_condition() -> None:
    def study(primary_pd_t2: float, ls_pd_t2: float, in_domain: float, t1: float) -> dict:
        runs = []
        for seed in (0, 1):
            runs += [_run("baseline", seed, 0.80, (0.80, 0.30, 0.30)),
                     _run("ls", seed, 0.78, (0.80, ls_pd_t2, ls_pd_t2)),
                     _run("gin", seed, 0.78, (0.80, 0.40, 0.40)),
                     _run("s2s2[c]", seed, in_domain, (t1, primary_pd_t2, primary_pd_t2))]
        return ood_gain.verdict(runs, "s2s2[c]")

    good = study(0.55, 0.50, 0.795, 0.80)
    assert good["met"] and good["best_augmentation"] == "ls"
    assert good["pd_t2_vs_baseline"] == pytest.approx(25.0) and good["pd_t2_vs_best_augmentation"] == pytest.approx(5.0)
    assert not study(0.45, 0.30, 0.80, 0.80)["met"]  # +15 over the baseline only
    assert not study(0.55, 0.53, 0.80, 0.80)["met"]  # +2 over LS
    runs = [_run("baseline", 0, 0.80, (0.80, 0.30, 0.30)), _run("s2s2[c]", 0, 0.80, (0.80, 0.60, 0.60)),
            _run("s2s2_no_sc[c]", 0, 0.80, (0.80, 0.58, 0.58))]
    judged = ood_gain.verdict(runs, "s2s2[c]")
    assert judged["best_augmentation"] == "s2s2_no_sc[c]" and not judged["met"]  # +2 over the seg-only ablation
    assert not study(0.55, 0.50, 0.785, 0.80)["met"]  # 1.5 points lost in-domain
    assert not study(0.55, 0.50, 0.80, 0.79)["met"]  # SPM T1 lower


def test_p5_rows_label_stack_kind_time_cap_and_paired_interval() -> None:
    methods = ood_gain.study_methods(["synth"], "synth")
    runs = [_run("baseline", 0, 0.80, (0.80, 0.30, 0.30)), _run("baseline", 1, 0.78, (0.84, 0.32, 0.28)),
            _run("s2s2[synth]", 0, 0.80, (0.82, 0.60, 0.56)),
            _run("s2s2[synth]", 1, 0.79, (0.84, 0.58, 0.54), capped=True)]
    rows = ood_gain.table_rows(runs, methods)
    assert [row["method"] for row in rows] == ["baseline", "s2s2[synth]"]  # methods that did not run: no row
    base, s2s2 = rows
    assert base["stack"] == "none" and base["stopped by time cap"] == "no" and base["in_domain"] == "79.0 ± 1.4"
    assert s2s2["stack"] == "synth" and s2s2["stopped by time cap"] == "YES (1 runs)"
    diff, low, high = ood_gain.t_interval([28.0, 26.0])
    assert s2s2["PD/T2 mean"] == f"57.0 ± 1.4 (Δ {diff:+.1f} [{low:+.1f}, {high:+.1f}])"
    atlas = ood_gain.atlas_copy_row({name: {"dice_mean": 0.66} for name in ood_gain.TEST_SETS})
    assert atlas["method"].startswith("atlas copy") and atlas["spm_pd"] == "66.0" and atlas["PD/T2 mean"] == "66.0"


def test_p5_methods_and_jobs_are_real_matched_configs(tmp_path: Path) -> None:
    methods = ood_gain.study_methods(["controlnet", "synth"], "controlnet")
    assert [m.name for m in methods] == ["baseline", "ls", "gin", "s2s2[controlnet]", "s2s2[synth]",
                                         "ls+s2s2[controlnet]", "gin+s2s2[controlnet]", "s2s2_no_sc[controlnet]"]
    plan = ood_gain.Plan(seeds=(0, 1), steps=7, parallel=2, run_dir="runs/x")
    stores = {"controlnet": "runs/c/stack.zarr", "synth": "runs/s/stack.zarr"}
    core = ood_gain.core_methods(methods, "controlnet")
    assert [m.name for m in core] == ["baseline", "ls", "gin", "s2s2[controlnet]", "s2s2_no_sc[controlnet]"]
    jobs = ood_gain.make_jobs(methods, plan, tmp_path / "c.yaml", stores, "runs/c/stack-val.zarr", first=core)
    rest = [m for m in methods if m not in core]  # the core rows' seeds first, then the others'
    assert [(j["method"], j["seed"]) for j in jobs] == ([(m.name, s) for s in (0, 1) for m in core]
                                                       + [(m.name, s) for s in (0, 1) for m in rest])
    names = [j["overrides"]["train.name"] for j in jobs]
    assert len(set(names)) == len(names) and "ls_s2s2-controlnet_s1" in names  # unique, filesystem-safe
    by_name = {j["overrides"]["train.name"]: j["overrides"] for j in jobs}
    assert by_name["baseline_s0"]["train.stack"] is False and "store.path" not in by_name["baseline_s0"]
    assert by_name["baseline_s0"]["store.val_path"] == "runs/c/stack-val.zarr"  # validates on the primary's stack-val
    assert "store.val_path" not in by_name["s2s2-synth_s1"]  # its own store's sibling
    assert by_name["gin_s2s2-controlnet_s0"]["train.gin"] and by_name["gin_s2s2-controlnet_s0"]["train.stack"]
    assert by_name["s2s2-synth_s1"]["store.path"] == "runs/s/stack.zarr"
    authors = by_name["ls_s2s2-controlnet_s0"]
    assert authors["train.location_scale"] and authors["train.augment.stack_photometric"] is False
    assert by_name["gin_s0"]["train.gin"] and not by_name["gin_s0"]["train.location_scale"]
    assert by_name["s2s2_no_sc-controlnet_s0"]["train.loss.a_enc"] == 0.0 and by_name["s2s2-synth_s1"]["train.steps"] == 7
    # S2S2 rows name L_sc themselves: the config's recipe (seg-only) cannot turn them into the ablation
    for name in ("s2s2-synth_s0", "ls_s2s2-controlnet_s0", "gin_s2s2-controlnet_s1"):
        assert by_name[name]["train.loss.a_enc"] == 1.0 and by_name[name]["train.loss.a_dec"] == 0.0
    from s2s2.pipeline.config.base import load_config
    from s2s2.pipeline.config.project import ProjectConfig

    for job in jobs:  # every override is a real config field; only the seed and the method differ
        cfg = load_config(ProjectConfig, ood_gain.DEFAULT_CONFIG, overrides=job["overrides"])
        assert cfg.train.seed == job["seed"] and cfg.train.steps == 7


def test_p5_resumes_only_runs_of_the_same_resolved_config(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("run_dir: runs/x\n")
    methods = ood_gain.study_methods(["synth"], "synth")
    plan = ood_gain.Plan(seeds=(0,), steps=7, parallel=1, run_dir=str(tmp_path / "study"))
    jobs = ood_gain.make_jobs(methods, plan, config, {"synth": "runs/s/stack.zarr"})
    job = jobs[0]
    assert ood_gain.finished_result(job) is None
    run = _run(job["method"], 0, 0.8, (0.8, 0.3, 0.3))
    ood_gain.save_result(job, run)
    assert ood_gain.finished_result(job) == run
    assert ood_gain.run_jobs(jobs[:1], parallel=1) == [run]  # nothing left to train: no process started
    assert ood_gain.run_jobs(jobs, parallel=1, train=False) == [run]  # collect-only: the finished ones
    longer = ood_gain.make_jobs(methods, ood_gain.Plan(seeds=(0,), steps=8, parallel=1, run_dir=plan.run_dir),
                                config, {"synth": "runs/s/stack.zarr"})[0]
    assert ood_gain.finished_result(longer) is None  # other steps: trained again
    config.write_text("# the same values, spelled out\nrun_dir: runs/x\nmodel: {preset: small}\n")
    assert ood_gain.finished_result(job) == run  # an edit that changes no value: reused
    config.write_text("run_dir: runs/x\nmodel: {preset: full}\n")
    assert ood_gain.finished_result(job) is None  # another model: trained again


def test_stack_kinds_file_is_valid_and_ordered(tmp_path: Path) -> None:
    kinds = ood_gain.load_stack_kinds()
    assert kinds.primary in kinds.kinds and {"controlnet", "synth", "mixed"} <= set(kinds.kinds)
    order = ood_gain.build_order(kinds)
    for name, kind in kinds.kinds.items():
        if kind.generator_from:
            assert order.index(kind.generator_from) < order.index(name)
    bad = tmp_path / "kinds.yaml"
    bad.write_text("primary: x\nkinds: {a: {run_dir: r}}\n")
    with pytest.raises(S2S2Error, match="primary 'x' is not one of the kinds"):
        ood_gain.load_stack_kinds(bad)
    bad.write_text("primary: a\nkinds: {a: {run_dir: r, generator_from: b}, b: {run_dir: s, finetune: false}}\n")
    with pytest.raises(S2S2Error, match="must name a kind that fine-tunes"):
        ood_gain.load_stack_kinds(bad)


def test_stack_note_reports_fidelity_and_appearance() -> None:
    look = {"class_mean_spread_across_k": 0.02, "class_mean_gap": 0.2, "order_changed_fraction": 0.25}
    fidelity = {"dice_own": 0.81, "dice_chance": 0.4, "normalised": {"global": 0.9, "adaptive": 0.95}}
    with_fidelity = ood_gain.stack_note({"inspect": {"mask_fidelity": fidelity}, "appearance": look})
    assert "Dice 0.81 vs 0.40 by chance" in with_fidelity and "originals: 0.95" in with_fidelity and "0.020" in with_fidelity and "25%" in with_fidelity
    assert "fidelity Dice not available" in ood_gain.stack_note({"inspect": {"mask_fidelity": None}, "appearance": look})


def test_stack_kind_configs_apply_overlays_and_share_generators(tmp_path: Path) -> None:
    from s2s2.pipeline.config.base import load_config
    from s2s2.pipeline.errors import ConfigError

    spec = tmp_path / "kinds.yaml"
    spec.write_text("primary: a\nkinds:\n  a: {run_dir: runs/a, overlay: {store.k: 6}}\n"
                    "  b: {run_dir: runs/b, store: elsewhere/b.zarr, generator_from: a}\n"
                    "  c: {run_dir: runs/c, overlay: {generator.no_such_field: 1}}\n")
    kinds = load_config(ood_gain.StackKinds, spec)
    a = ood_gain.kind_config("a", kinds, quick=False)
    assert (a.run_dir, a.store.path, a.store.k) == ("runs/a", "runs/a/stack.zarr", 6)
    b = ood_gain.kind_config("b", kinds, quick=False)
    assert b.store.path == "elsewhere/b.zarr" and b.generate.generator_dir == "runs/a/generator"
    quick = ood_gain.kind_config("b", kinds, quick=True)  # throwaway: own folder, seconds of training
    assert quick.store.path == f"{ood_gain.QUICK.run_dir}/stacks/b/stack.zarr" and quick.store.k == 2
    assert quick.generate.generator_dir == f"{ood_gain.QUICK.run_dir}/stacks/a/generator"
    with pytest.raises(ConfigError, match="no_such_field"):
        ood_gain.kind_config("c", kinds, quick=True)


def test_p5_plot_draws_every_method_that_ran(tmp_path: Path) -> None:
    from PIL import Image

    methods = ood_gain.study_methods(["synth"], "synth")
    runs = [_run("baseline", 0, 0.80, (0.80, 0.30, 0.30)), _run("baseline", 1, 0.78, (0.84, 0.32, 0.28)),
            _run("s2s2[synth]", 0, 0.80, (0.82, 0.60, 0.56)), _run("s2s2[synth]", 1, 0.79, (0.84, 0.58, 0.54)),
            _run("gin", 0, 0.70, (0.70, 0.40, 0.40))]
    few = ood_gain.plot_paired_differences(runs[:3], methods, tmp_path / "few.png")
    path = ood_gain.plot_paired_differences(runs, methods, tmp_path / "p5.png")
    with Image.open(path) as image, Image.open(few) as smaller:
        assert image.format == "PNG" and image.height > smaller.height  # one row per method that ran


def test_p5_selection_differences_pair_the_validation_score_by_seed() -> None:
    runs = [{**_run("s2s2[c]", 0, 0.8, (0.8, 0.6, 0.6), val=0.80), "stack_val_dice": 0.70},
            {**_run("s2s2_no_sc[c]", 0, 0.8, (0.8, 0.6, 0.6), val=0.82), "stack_val_dice": 0.66},
            {**_run("s2s2[c]", 1, 0.8, (0.8, 0.6, 0.6), val=0.78), "stack_val_dice": 0.72},
            {**_run("s2s2_no_sc[c]", 2, 0.8, (0.8, 0.6, 0.6), val=0.9), "stack_val_dice": 0.7}]
    # seed 0 only has both: (80 + 70) / 2 - (82 + 66) / 2
    assert ood_gain.selection_differences(runs, "s2s2[c]", "s2s2_no_sc[c]") == pytest.approx([1.0])
