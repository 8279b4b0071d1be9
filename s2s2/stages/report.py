"""The comparison table of `make train`: one row per run, plus the atlas-copy reference row.

Reads each run folder's summary.json and metrics.json; writes {run_dir}/results.json and results.md
with two tables: per 2-D slice, and (where the test sets are slices of volumes) per 3-D volume.
The atlas-copy row (the training label map at the test slice's position, no image) shows how much a
model could score without looking.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from s2s2.pipeline.atomic import atomic_path
from s2s2.pipeline.config.project import ProjectConfig
from s2s2.pipeline.errors import S2S2Error

IN_DOMAIN = "in_domain"
SCORES = ("dice_mean", "dice", "hd95_mean", "hd95_unit", "n_cases")
log = logging.getLogger(__name__)


def set_scores(entry: dict[str, Any]) -> dict[str, Any]:
    """The table's part of one test set's metrics.json entry: per slice, and per volume when there is one."""
    volume = entry.get("volume")
    return {**{k: entry.get(k) for k in SCORES}, "volume": {k: volume.get(k) for k in SCORES} if volume else None}


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
        # validation Dice of the kept checkpoint: real val and stack-val (the val masks' stack images)
        "val": summary.get("best_val_dice_mean"), "stack_val": summary.get("best_stack_val_dice_mean"),
        "metrics": {name: set_scores(entry) for name, entry in metrics["test_sets"].items()},
        # which stack, generator, data and code the run was trained and evaluated with
        "provenance": metrics.get("provenance"),
    }


def reference_entry(results: dict[str, Any]) -> dict[str, Any]:
    """The atlas-copy row of results.json, from the results of `run_atlas_copy`."""
    return {"name": results["run"], "model": "–", "method": results["method"], "seed": "–", "steps": "–",
            "metrics": {name: set_scores(entry) for name, entry in results["test_sets"].items()}}


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def steps_cell(row: dict[str, Any]) -> str:
    """The steps a run trained; a run stopped by its time cap says so (its numbers are not comparable)."""
    if row.get("stopped_by_time_cap"):
        return f"{row['steps']} of {row['planned_steps']} (STOPPED BY TIME CAP)"
    return str(row["steps"])


def _best(values: list[float | None], higher: bool) -> float | None:
    """The best of a column's values (None when it has none), compared as printed."""
    shown = [round(v, 6) for v in values if v is not None and v == v]
    return (max(shown) if higher else min(shown)) if shown else None


def _table(rows: list[dict[str, Any]], sets: list[str], volume: bool) -> list[str]:
    """Markdown lines of one table: mean Dice (per class in brackets) and mean HD95 per test set; the best
    value of each test-set column (highest Dice, lowest HD95) in bold."""
    header = ("| run | model | method | seed | steps | val Dice | stack-val Dice | "
              + " | ".join(f"{s} Dice (per class) | {s} HD95" for s in sets) + " |")
    lines = [header, "|" + "---|" * (7 + 2 * len(sets))]

    def entry_of(row: dict[str, Any], name: str) -> dict[str, Any] | None:
        entry = row["metrics"].get(name)
        return entry and (entry["volume"] if volume else entry)

    best = {s: (_best([(entry_of(r, s) or {}).get("dice_mean") for r in rows], higher=True),
                _best([(entry_of(r, s) or {}).get("hd95_mean") for r in rows], higher=False)) for s in sets}

    def bold(text: str, value: float | None, top: float | None) -> str:
        return f"**{text}**" if value is not None and top is not None and round(value, 6) == top else text

    for row in rows:
        cells = []
        for s in sets:
            entry = entry_of(row, s)
            if not entry:
                cells += ["–", "–"]
                continue
            per_class = " / ".join(_fmt(v) for v in entry["dice"].values())
            hd95 = f"{_fmt(entry['hd95_mean'], 2)} {entry['hd95_unit'] or ''}".strip()
            cells += [f"{bold(_fmt(entry['dice_mean']), entry['dice_mean'], best[s][0])} ({per_class})",
                      bold(hd95, entry["hd95_mean"], best[s][1])]
        lines.append(f"| {row['name']} | {row['model']} | {row['method']} | {row['seed']} | {steps_cell(row)} | "
                     f"{_fmt(row.get('val'))} | {_fmt(row.get('stack_val'))} | " + " | ".join(cells) + " |")
    return lines


def results_markdown(runs: list[dict[str, Any]], reference: dict[str, Any] | None = None) -> str:
    """Markdown tables: per 2-D slice, then per 3-D volume where the test sets have volumes; the
    atlas-copy `reference` row last in each."""
    rows = runs + ([reference] if reference else [])
    sets = list(dict.fromkeys(s for r in rows for s in r["metrics"]))  # in evaluation (config) order
    sets = [s for s in sets if s == IN_DOMAIN] + [s for s in sets if s != IN_DOMAIN]
    lines = ["Per 2-D slice (mean over slices):", "", *_table(rows, sets, volume=False)]
    volume_sets = [s for s in sets if any((r["metrics"].get(s) or {}).get("volume") for r in rows)]
    if volume_sets:
        lines += ["", "Per 3-D volume (slices stacked back at their positions, spacing incl. slice thickness; "
                  "mean over volumes, as nnU-Net reports):", "", *_table(rows, volume_sets, volume=True)]
    classes = next((list(e["dice"]) for r in rows for e in r["metrics"].values()), [])
    lines.append("")
    lines.append(f"Dice per class in brackets: {' / '.join(classes)}. HD95: mean over classes, in mm (px where the "
                 "data has no pixel spacing). Bold: the best value of each test-set column. Empty-mask policy: see "
                 "metrics.json `policy`.")
    lines.append("val / stack-val Dice: the kept checkpoint on the real val split and on the stack images of the "
                 "val masks (all K; – without a stack-val store); summary.json `select_on` says which chose it.")
    if reference:
        lines.append(f"{reference['name']}: for each test slice, the training split's label map at the same position "
                     "(no image looked at) — what position alone scores.")
    return "\n".join(lines) + "\n"


def collect_runs(run_dir: str | Path, names: list[str] | None = None) -> list[dict[str, Any]]:
    """The rows of the evaluated runs under {run_dir}/train (all, or `names` in that order)."""
    root = Path(run_dir) / "train"
    folders = [root / n for n in names] if names else sorted(p for p in root.glob("*") if (p / "metrics.json").is_file())
    if not folders:
        raise S2S2Error(f"{root}: no evaluated runs; fix: run `s2s2 train` and `s2s2 evaluate` first")
    return [run_entry(folder) for folder in folders]


def write_report(run_dir: str | Path, runs: list[dict[str, Any]],
                 reference: dict[str, Any] | None = None) -> tuple[dict[str, Any], str]:
    """Write {run_dir}/results.json and results.md for the `runs` rows; `reference` is the atlas copy's
    results (`run_atlas_copy`), shown as the last row. Returns the results and the Markdown tables."""
    results: dict[str, Any] = {"runs": runs, "reference": reference_entry(reference) if reference else None}
    with atomic_path(Path(run_dir) / "results.json") as tmp:
        tmp.write_text(json.dumps(results, indent=1))
    table = results_markdown(results["runs"], results["reference"])
    with atomic_path(Path(run_dir) / "results.md") as tmp:
        tmp.write_text("# Results\n\n" + table)
    return results, table


def run_report(cfg: ProjectConfig, names: list[str] | None = None, atlas_copy: bool = True) -> tuple[dict[str, Any], str]:
    """`s2s2 report`: the evaluated runs' tables, with the atlas-copy row scored on the test sets the runs
    were evaluated on (those this config knows)."""
    from s2s2.stages.evaluate import run_atlas_copy

    runs = collect_runs(cfg.run_dir, names)
    reference = None
    if atlas_copy:
        evaluated = list(dict.fromkeys(s for r in runs for s in r["metrics"]))
        sets = [s for s in evaluated if s in (IN_DOMAIN, *cfg.evaluate.out_of_domain)]
        if len(sets) < len(evaluated):
            log.info("atlas copy: test sets %s are not in this config's evaluate.out_of_domain; left out",
                     [s for s in evaluated if s not in sets])
        reference = run_atlas_copy(cfg, sets=sets) if sets else None
    return write_report(cfg.run_dir, runs, reference)
