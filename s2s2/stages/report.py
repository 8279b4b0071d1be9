"""The comparison table of `make train`: one row per run, Dice per class and mean per test set.

Reads each run folder's summary.json and metrics.json; writes {run_dir}/results.json and results.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from s2s2.pipeline.atomic import atomic_path
from s2s2.pipeline.errors import S2S2Error

IN_DOMAIN = "in_domain"


def run_entry(folder: Path) -> dict[str, Any]:
    """One run's row of results.json: name, model, method, seed, steps and per-test-set metrics."""
    try:
        summary = json.loads((folder / "summary.json").read_text())
        metrics = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError) as err:
        raise S2S2Error(f"{folder}: cannot read summary.json/metrics.json ({err}); fix: run `s2s2 train` and "
                        "`s2s2 evaluate` for this run first") from None
    return {
        "name": summary["name"], "model": summary["model"], "method": summary["method"], "seed": summary["seed"],
        "steps": summary["steps"], "planned_steps": summary.get("planned_steps", summary["steps"]),
        "stopped_by_time_cap": bool(summary.get("stopped_by_time_cap", False)), "seconds": summary["seconds"],
        "metrics": {name: {"dice_mean": entry["dice_mean"], "dice": entry["dice"], "hd95_mean": entry["hd95_mean"]}
                    for name, entry in metrics["test_sets"].items()},
    }


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def steps_cell(run: dict[str, Any]) -> str:
    """The steps a run trained; a run stopped by its time cap says so (its numbers are not comparable)."""
    if run.get("stopped_by_time_cap"):
        return f"{run['steps']} of {run['planned_steps']} (STOPPED BY TIME CAP)"
    return str(run["steps"])


def results_markdown(runs: list[dict[str, Any]]) -> str:
    """A Markdown table: per test set, mean Dice (per-class Dice in brackets) and mean HD95 in mm."""
    sets = list(dict.fromkeys(s for r in runs for s in r["metrics"]))  # in evaluation (config) order
    sets = [s for s in sets if s == IN_DOMAIN] + [s for s in sets if s != IN_DOMAIN]
    header = "| run | model | method | seed | steps | " + " | ".join(f"{s} Dice (per class) | {s} HD95" for s in sets) + " |"
    lines = [header, "|" + "---|" * (5 + 2 * len(sets))]
    for run in runs:
        cells = []
        for s in sets:
            entry = run["metrics"].get(s)
            if entry is None:
                cells += ["–", "–"]
                continue
            per_class = " / ".join(_fmt(v) for v in entry["dice"].values())
            cells += [f"**{_fmt(entry['dice_mean'])}** ({per_class})", _fmt(entry["hd95_mean"], 2)]
        lines.append(f"| {run['name']} | {run['model']} | {run['method']} | {run['seed']} | {steps_cell(run)} | "
                     + " | ".join(cells) + " |")
    classes = next((list(e["dice"]) for r in runs for e in r["metrics"].values()), [])
    lines.append("")
    lines.append(f"Dice per class in brackets: {' / '.join(classes)}. HD95 in mm (mean over classes). "
                 "Empty-mask policy: see metrics.json `policy`.")
    return "\n".join(lines) + "\n"


def write_report(run_dir: str | Path, names: list[str] | None = None) -> tuple[dict[str, Any], str]:
    """Collect the runs under {run_dir}/train (all, or `names` in that order); write results.json/.md.

    Returns the results and the Markdown table."""
    root = Path(run_dir) / "train"
    folders = [root / n for n in names] if names else sorted(p for p in root.glob("*") if (p / "metrics.json").is_file())
    if not folders:
        raise S2S2Error(f"{root}: no evaluated runs; fix: run `s2s2 train` and `s2s2 evaluate` first")
    results = {"runs": [run_entry(f) for f in folders]}
    with atomic_path(Path(run_dir) / "results.json") as tmp:
        tmp.write_text(json.dumps(results, indent=1))
    table = results_markdown(results["runs"])
    with atomic_path(Path(run_dir) / "results.md") as tmp:
        tmp.write_text("# Results\n\n" + table)
    return results, table
