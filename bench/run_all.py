"""Run every benchmark figure (p1..p6), each in its own process, into `bench/results.json` and the
tables of `BENCHMARKS.md`.

Why a process per figure: one figure that crashes, leaks memory or hangs records its error (or its
timeout) and the others still run; every figure starts with one torch thread and a clean heap.
Each figure is a ratio measured within one run, because these machines are noisy.

    python -m bench.run_all                      # full run (`make bench`), ~2 h on 2 idle cores (p5 ~1.5 h of it)
    BENCH_QUICK=1 python -m bench.run_all        # a few minutes, tiny sizes (`make bench-quick`)
    python -m bench.run_all --only p1_step_ratio # one figure; the others' results are kept
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.report import FIGURES, GPU_JSON, GPU_SMOKE_JSON, RESULTS_JSON, read_json, update_benchmarks_md
from s2s2.pipeline.atomic import atomic_path

REPO = Path(__file__).resolve().parent.parent
# Wall-clock limit per figure, seconds (full, quick): safety limits, well above what each needs on 2
# idle cores (the robustness study p5 ~2.7 h at 2,000 steps, the others ~15 min together).
TIME_LIMITS: dict[str, tuple[int, int]] = {
    "p1_step_ratio": (420, 120),
    "p2_read_reduction": (300, 90),
    "p3_loader_speedup": (2400, 600),
    "p4_gen_images_per_s": (300, 120),
    "p5_ood_gain": (4 * 3600, 1200),  # the robustness study: hours in full (see bench/ood_gain.py)
    "p6_scaling": (300, 150),
}
ONE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
                  "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


def now_utc() -> str:
    """The current time, ISO 8601 in UTC to the second."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def quick_mode() -> bool:
    """BENCH_QUICK=1 (any value but empty/0) selects the few-minute development run."""
    return os.environ.get("BENCH_QUICK", "") not in ("", "0")


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return None


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_info() -> dict[str, Any]:
    """CPU model, cores, RAM and the versions that matter, so a number can be traced to its machine."""
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gb": _ram_gb(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "zarr": _version("zarr"),
        "numpy": _version("numpy"),
        "diffusers": _version("diffusers"),
        "dask": _version("dask"),
        "git_commit": _git_commit(),
        "date": now_utc(),
    }


def figure_command(name: str, quick: bool) -> str:
    """The command that re-measures one figure on its own."""
    return f"{'BENCH_QUICK=1 ' if quick else ''}python -m bench.run_all --only {name}"


# --- the figures: each calls its owner's measuring function and returns value, rows and raw data --

def _p1_step_ratio(quick: bool) -> dict[str, Any]:
    from bench.train_step import measure_step_ratio

    return measure_step_ratio(quick=quick)


def _p2_read_reduction(quick: bool) -> dict[str, Any]:
    from bench.store_read import measure_read_reduction

    return measure_read_reduction(quick=quick)


def _p3_loader_speedup(quick: bool) -> dict[str, Any]:
    from bench.store_read import measure_loader_speedup

    return measure_loader_speedup(quick=quick)


def _p4_gen_images_per_s(quick: bool) -> dict[str, Any]:
    from bench.gen_speed import measure_batch_speed

    return measure_batch_speed(quick=quick)


def _p5_ood_gain(quick: bool) -> dict[str, Any]:
    from bench.ood_gain import measure_ood_gain

    return measure_ood_gain(quick=quick)


def _p6_scaling(quick: bool) -> dict[str, Any]:
    from bench.gen_speed import measure_dask_scaling

    return measure_dask_scaling(quick=quick)


RUNNERS: dict[str, Callable[[bool], dict[str, Any]]] = {
    "p1_step_ratio": _p1_step_ratio,
    "p2_read_reduction": _p2_read_reduction,
    "p3_loader_speedup": _p3_loader_speedup,
    "p4_gen_images_per_s": _p4_gen_images_per_s,
    "p5_ood_gain": _p5_ood_gain,
    "p6_scaling": _p6_scaling,
}


# --- running one figure in a child process ------------------------------------------------------

def run_child(name: str, quick: bool, out: Path) -> int:
    """In the child process: measure one figure and write its entry (or its traceback) to `out`."""
    import torch

    from s2s2.stages.evaluate import json_safe

    torch.set_num_threads(1)
    start = time.perf_counter()
    try:
        entry = {"status": "ok", **RUNNERS[name](quick)}
    except Exception:  # a figure's failure is its result: recorded, never fatal to the others
        entry = {"status": "error", "error": traceback.format_exc()}
    entry["seconds"] = time.perf_counter() - start
    out.write_text(json.dumps(json_safe(entry), default=_json_default))  # NaN -> null: strict JSON
    return 0 if entry["status"] == "ok" else 1


def _json_default(value: Any) -> Any:
    """numpy scalars/arrays and paths as plain JSON."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def run_figure(name: str, quick: bool, limit_s: int) -> dict[str, Any]:
    """Measure one figure in a child process with a time limit; always return an entry."""
    started = now_utc()
    env = {**os.environ, **ONE_THREAD_ENV, "BENCH_QUICK": "1" if quick else "0"}
    with tempfile.TemporaryDirectory(prefix="s2s2-bench-") as tmp:
        out = Path(tmp) / "entry.json"
        cmd = [sys.executable, "-m", "bench.run_all", "--child", name, "--child-out", str(out)]
        t0 = time.perf_counter()
        # Own process group, so a timeout also ends the figure's workers (dask, DataLoader).
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True)
        try:
            code: int | None = proc.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
        except KeyboardInterrupt:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
        elapsed = time.perf_counter() - t0
        if out.is_file():
            entry = json.loads(out.read_text())
        elif code is None:
            entry = {"status": "error", "error": f"timed out after {limit_s} s (limit in bench/run_all.py)"}
        else:
            entry = {"status": "error", "error": f"the figure's process died with exit code {code} "
                                                 "before writing a result (killed for memory?); see the log"}
    entry.setdefault("seconds", elapsed)
    entry.update({"mode": "quick" if quick else "full", "date": started,
                  "command": figure_command(name, quick)})
    return entry


def write_results(results: dict[str, Any], path: Path = RESULTS_JSON) -> None:
    """Write the results file atomically (a crash never leaves half a JSON)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(results, indent=2, sort_keys=False, default=_json_default) + "\n")


def merge_entry(results: dict[str, Any], name: str, entry: dict[str, Any], machine: dict[str, Any]) -> dict[str, Any]:
    """`results` with one figure's entry replaced; figures not re-run keep their earlier entries."""
    figures = {**results.get("figures", {}), name: {**entry, "machine": machine}}
    ordered = {key: figures[key] for key in FIGURES if key in figures}
    return {"date": now_utc(), "machine": machine, "figures": ordered}


def main(argv: list[str] | None = None) -> int:
    """Run the selected figures one after another, saving results and tables after each."""
    parser = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=list(FIGURES), help="figures to run (default: all)")
    parser.add_argument("--child", choices=list(FIGURES), help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return run_child(args.child, quick_mode(), args.child_out)

    quick = quick_mode()
    machine = machine_info()
    results = read_json(RESULTS_JSON) or {}
    names = args.only or list(FIGURES)
    print(f"bench: {'QUICK' if quick else 'full'} run of {', '.join(names)} on {machine['cpu_model']}", flush=True)
    for name in names:
        limit = TIME_LIMITS[name][1 if quick else 0]
        print(f"bench: {name} (limit {limit} s) ...", flush=True)
        entry = run_figure(name, quick, limit)
        print(f"bench: {name} {entry['status']} in {entry['seconds']:.0f} s, value {entry.get('value')}", flush=True)
        results = merge_entry(results, name, entry, machine)
        write_results(results)
        update_benchmarks_md(results, read_json(GPU_JSON), smoke=read_json(GPU_SMOKE_JSON))
    print(f"bench: wrote {RESULTS_JSON} and BENCHMARKS.md", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
