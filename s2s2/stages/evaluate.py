"""Stage two: evaluate a trained segmenter in-domain and out-of-domain (`s2s2 evaluate`).

Test sets: `in_domain` (the test split of the training data) and every entry of
`evaluate.out_of_domain` (e.g. SPM avg152 T1/PD/T2: all their slices). Classes are matched by name
(`evaluate.eval_classes`), so a test set may number its labels differently. Per-case Dice and HD95
follow the empty-mask policy of `s2s2.pipeline.metrics`. Writes metrics.json and predictions.png
into the run folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from s2s2.pipeline.atomic import atomic_path
from s2s2.pipeline.config.data import DataConfig
from s2s2.pipeline.config.project import ProjectConfig
from s2s2.pipeline.data.prepared import PreparedDataset
from s2s2.pipeline.errors import ConfigError
from s2s2.pipeline.metrics import case_metrics, summarise
from s2s2.pipeline.segmenters import build_segmenter, load_weights, model_identity, predict

POLICY = ("Dice/HD95 per case and class; truth and prediction both empty: NaN (left out of the mean); "
          "exactly one empty: Dice 0 and HD95 = image diagonal in mm; mean over cases, then over classes")


def json_safe(value: Any) -> Any:
    """NaN -> null, recursively, so metrics.json is strict JSON."""
    if isinstance(value, float) and np.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def test_datasets(cfg: ProjectConfig, names: list[str] | None = None) -> dict[str, tuple[PreparedDataset, list[int]]]:
    """{test-set name: (dataset, indices)}: the in-domain test split and the out-of-domain sets (all
    slices, or the split named by their `eval_split`)."""
    from s2s2.pipeline.data.prepare import prepare_dataset

    wanted = names or ["in_domain", *cfg.evaluate.out_of_domain]
    out: dict[str, tuple[PreparedDataset, list[int]]] = {}
    for name in wanted:
        if name == "in_domain":
            dataset = prepare_dataset(cfg.data)
            out[name] = (dataset, dataset.indices("test"))
        elif name in cfg.evaluate.out_of_domain:
            fields = {"size": cfg.data.size, "cache_dir": cfg.data.cache_dir, **cfg.evaluate.out_of_domain[name]}
            data_cfg = DataConfig.model_validate(fields)
            dataset = prepare_dataset(data_cfg)
            out[name] = (dataset, dataset.indices(data_cfg.eval_split))
        else:
            raise ConfigError(f"unknown test set {name!r}; known: in_domain, {', '.join(cfg.evaluate.out_of_domain)} "
                              "(add it under evaluate.out_of_domain)")
    return out


def shared_classes(train_names: tuple[str, ...], test_names: tuple[str, ...], eval_classes: list[str] | None,
                   test_set: str) -> dict[str, tuple[int, int]]:
    """{class name: (id predicted by the model, id in the test set)} for the evaluated classes
    (None: every foreground class of the training data)."""
    if eval_classes is None:
        eval_classes = list(train_names[1:])
    missing = [n for n in eval_classes if n not in train_names or n not in test_names]
    if missing:
        raise ConfigError(f"evaluate.eval_classes {missing} are not classes of both the training data "
                          f"{list(train_names)} and test set {test_set} {list(test_names)}; fix: list shared classes")
    return {n: (train_names.index(n), test_names.index(n)) for n in eval_classes}


def evaluate_set(predictions: np.ndarray, dataset: PreparedDataset, indices: list[int],
                 classes: dict[str, tuple[int, int]], percentile: float) -> dict[str, Any]:
    """Per-case metrics of one test set and their summary (the metrics.json entry)."""
    cases = []
    for prediction, index in zip(predictions, indices):
        truth = dataset.masks[index]
        # Relabel both to a common space (0 = not evaluated, 1.. = eval classes in order).
        pred_common, truth_common = np.zeros_like(prediction), np.zeros_like(truth)
        for j, (train_id, test_id) in enumerate(classes.values(), start=1):
            pred_common[prediction == train_id] = j
            truth_common[truth == test_id] = j
        spacing = tuple(float(s) for s in dataset.spacings[index])
        metrics = case_metrics(pred_common, truth_common, {n: j for j, n in enumerate(classes, start=1)}, spacing, percentile)
        cases.append({"id": dataset.ids[index], **{n: m for n, m in metrics.items()}})
    summary = summarise([{n: c[n] for n in classes} for c in cases])
    return {"n_cases": len(cases), **summary, "cases": cases}


def figure_rows(images: np.ndarray, truths: np.ndarray, predictions: np.ndarray, count: int, num_classes: int) -> list[list[np.ndarray]]:
    """`count` evenly spaced cases as [image | truth overlay | prediction overlay] tiles."""
    from s2s2.pipeline.viz import overlay_mask, to_rgb_uint8

    picks = np.unique(np.linspace(0, len(images) - 1, num=min(count, len(images))).round().astype(int))
    return [[to_rgb_uint8(images[i]), overlay_mask(images[i], truths[i], num_classes),
             overlay_mask(images[i], predictions[i], num_classes)] for i in picks]


def summary_lines(results: dict[str, Any]) -> list[str]:
    """One line per test set: mean and per-class Dice, mean HD95 (what `s2s2 evaluate` prints)."""
    lines = []
    for name, entry in results["test_sets"].items():
        per_class = ", ".join(f"{n} {v:.3f}" for n, v in entry["dice"].items())
        lines.append(f"{results['run']} {name}: Dice {entry['dice_mean']:.3f} ({per_class}), "
                     f"HD95 {entry['hd95_mean']:.2f} mm")
    return lines


def merge_metrics(previous: dict[str, Any] | None, results: dict[str, Any]) -> dict[str, Any]:
    """`results` plus the test sets of an earlier evaluation of the same checkpoint that this one
    did not redo (evaluating one set adds it to metrics.json instead of dropping the others)."""
    if not previous or Path(previous.get("checkpoint", "")).resolve() != Path(results["checkpoint"]).resolve():
        return results
    return {**results, "test_sets": {**previous.get("test_sets", {}), **results["test_sets"]}}


def read_metrics(path: Path) -> dict[str, Any] | None:
    """An existing metrics.json, or None if there is none or it cannot be read (it is then replaced)."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def run_evaluate(cfg: ProjectConfig, checkpoint: str | Path | None = None, sets: list[str] | None = None,
                 datasets: dict[str, tuple[PreparedDataset, list[int]]] | None = None,
                 folder: str | Path | None = None) -> dict[str, Any]:
    """Evaluate the run's best or last checkpoint (`evaluate.checkpoint`, or `checkpoint`) on the test
    sets; returns the results and merges them into the run's metrics.json.

    `folder` is the run folder for every read and write (default {run_dir}/train/{train.name}).
    `datasets` replaces `test_datasets(cfg, sets)` (tests that hold the data in memory); its first
    entry must be the training data's in-domain split (it defines the model's classes).
    """
    from s2s2.pipeline.viz import save_grid
    from s2s2.stages.train.loop import run_folder

    folder = Path(folder) if folder is not None else run_folder(cfg)
    default = "model.safetensors" if cfg.evaluate.checkpoint == "best" else "last.safetensors"
    checkpoint = Path(checkpoint) if checkpoint else folder / default
    datasets = datasets or test_datasets(cfg, sets)
    train_data, _ = next(iter(datasets.values()))
    c, size = train_data.image_shape[0], train_data.image_shape[1]
    model = build_segmenter(cfg.model, c, train_data.num_classes, size)
    load_weights(model, checkpoint, model_identity(cfg.model, c, train_data.num_classes, size))
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.train.device != "cpu" else "cpu")
    model.to(device)
    results: dict[str, Any] = {"checkpoint": str(checkpoint), "model": cfg.model.name, "run": cfg.train.name,
                               "policy": POLICY, "eval_classes": cfg.evaluate.eval_classes, "test_sets": {}}
    rows, titles = [], []
    for name, (dataset, indices) in datasets.items():
        if dataset.image_shape != train_data.image_shape:
            raise ConfigError(f"test set {name} has images {dataset.image_shape}, the model takes "
                              f"{train_data.image_shape}; fix: prepare it at data.size={size}")
        classes = shared_classes(train_data.class_names, dataset.class_names, cfg.evaluate.eval_classes, name)
        predictions = predict(model, dataset.images[indices], device, cfg.evaluate.batch_size)
        results["test_sets"][name] = evaluate_set(predictions, dataset, indices, classes, cfg.evaluate.hd95_percentile)
        truths = np.stack([np.select([dataset.masks[i] == t for _, t in classes.values()],
                                     [p for p, _ in classes.values()], 0) for i in indices])
        shown = np.where(np.isin(predictions, [p for p, _ in classes.values()]), predictions, 0)
        for row in figure_rows(dataset.images[indices], truths, shown, cfg.evaluate.figure_cases, train_data.num_classes):
            rows.append(row)
            titles.append(name)
    folder.mkdir(parents=True, exist_ok=True)
    merged = merge_metrics(read_metrics(folder / "metrics.json"), json_safe(results))
    with atomic_path(folder / "metrics.json") as tmp:
        tmp.write_text(json.dumps(merged, indent=1, allow_nan=False))
    if rows:
        save_grid(rows, folder / "predictions.png", row_titles=titles, col_titles=["image", "truth", "prediction"])
    return results
