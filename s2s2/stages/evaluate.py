"""Stage two: evaluate a trained segmenter in-domain and out-of-domain (`s2s2 evaluate`).

Test sets: `in_domain` (the test split of the training data) and every entry of
`evaluate.out_of_domain` (e.g. SPM avg152 T1/PD/T2: all their slices). Classes are matched by name
(`evaluate.eval_classes`), so a test set may number its labels differently. Dice and HD95 follow
the empty-mask policy of `s2s2.pipeline.metrics`, per 2-D slice and, for slices of volumes, per
3-D volume (slices stacked back at their positions, spacing incl. slice thickness). Writes
metrics.json and predictions.png into the run folder.

The **atlas copy** is the reference every table carries: for each test slice, the training label
map at the same position, without looking at the image. It shows how much position alone scores.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from s2s2.pipeline.atomic import atomic_path
from s2s2.pipeline.config.project import ProjectConfig, out_of_domain_config
from s2s2.pipeline.data.prepared import PreparedDataset
from s2s2.pipeline.errors import ConfigError
from s2s2.pipeline.metrics import case_metrics, present_planes, stack_slices, summarise
from s2s2.pipeline.segmenters import ACTIVATION, build_segmenter, from_pretrained, load_weights, model_identity, predict
from s2s2.stages.run_folder import run_folder
from s2s2.store.provenance import evaluation_provenance

POLICY = ("Dice/HD95 per case (a 2-D slice, or under `volume` a 3-D volume of stacked slices) and class; truth "
          "and prediction both empty: NaN (left out of the mean); exactly one empty: Dice 0 and HD95 = the image "
          "(volume) diagonal; mean over cases, then over classes; HD95 in `hd95_unit` (px: the data has no spacing)")
ATLAS_COPY = "atlas-copy"


def json_safe(value: Any) -> Any:
    """NaN -> null, recursively, so metrics.json is strict JSON."""
    if isinstance(value, float) and np.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def test_datasets(cfg: ProjectConfig, names: list[str] | None = None,
                  train_data: PreparedDataset | None = None) -> dict[str, tuple[PreparedDataset, list[int]]]:
    """{test-set name: (dataset, indices)}: the in-domain test split and the out-of-domain sets (all
    slices, or the split named by their `eval_split`).

    `train_data` is the already prepared training data (its test split is the in-domain set)."""
    from s2s2.pipeline.data.prepare import prepare_dataset

    wanted = names or ["in_domain", *cfg.evaluate.out_of_domain]
    out: dict[str, tuple[PreparedDataset, list[int]]] = {}
    for name in wanted:
        if name == "in_domain":
            dataset = train_data if train_data is not None else prepare_dataset(cfg.data)
            out[name] = (dataset, dataset.indices("test"))
        elif name in cfg.evaluate.out_of_domain:
            data_cfg = out_of_domain_config(cfg.data, cfg.evaluate.out_of_domain[name])
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


def common_labels(labels: np.ndarray, ids: list[int]) -> np.ndarray:
    """Relabel to the evaluation space: 0 = not evaluated, j = the j-th evaluated class (`ids[j-1]`)."""
    out = np.zeros_like(labels)
    for j, class_id in enumerate(ids, start=1):
        out[labels == class_id] = j
    return out


def volume_scores(predictions: list[np.ndarray], truths: list[np.ndarray], dataset: PreparedDataset,
                  indices: list[int], classes: dict[str, int], percentile: float) -> dict[str, Any] | None:
    """Per-volume metrics: the slices of each volume stacked back at their positions, spacing
    (slice thickness, rows, cols); None when no test sample is a slice of a volume. Planes with no test
    slice (the gaps between the slabs of a split) are marked (`missing_planes`) and left out of HD95."""
    members: dict[str, list[int]] = {}
    for k, index in enumerate(indices):
        if dataset.is_volume_slice(index):
            members.setdefault(dataset.cases[index], []).append(k)
    if not members:
        return None
    cases = []
    for case, ks in members.items():
        positions = [int(dataset.positions[indices[k]]) for k in ks]
        first = indices[ks[0]]
        spacing = (float(dataset.thickness[first]), *(float(v) for v in dataset.spacings[first]))
        present = present_planes(positions)
        metrics = case_metrics(stack_slices([predictions[k] for k in ks], positions),
                               stack_slices([truths[k] for k in ks], positions), classes, spacing, percentile, present)
        cases.append({"id": case, "slices": len(ks), "missing_planes": int((~present).sum()), "spacing": list(spacing),
                      **metrics})
    return {"n_cases": len(cases), "hd95_unit": dataset.spacing_unit,
            **summarise([{n: c[n] for n in classes} for c in cases]), "cases": cases}


def evaluate_set(predictions: np.ndarray, dataset: PreparedDataset, indices: list[int],
                 classes: dict[str, tuple[int, int]], percentile: float) -> dict[str, Any]:
    """Metrics of one test set (the metrics.json entry): per 2-D slice at the top level, per 3-D volume
    under `volume` (None for 2-D images)."""
    common = {n: j for j, n in enumerate(classes, start=1)}
    predicted = [common_labels(p, [train_id for train_id, _ in classes.values()]) for p in predictions]
    truths = [common_labels(dataset.masks[i], [test_id for _, test_id in classes.values()]) for i in indices]
    cases = []
    for prediction, truth, index in zip(predicted, truths, indices):
        spacing = tuple(float(s) for s in dataset.spacings[index])
        cases.append({"id": dataset.ids[index], **case_metrics(prediction, truth, common, spacing, percentile)})
    summary = summarise([{n: c[n] for n in classes} for c in cases])
    return {"n_cases": len(cases), "hd95_unit": dataset.spacing_unit, **summary, "cases": cases,
            "volume": volume_scores(predicted, truths, dataset, indices, common, percentile)}


def atlas_copy(train: PreparedDataset, dataset: PreparedDataset, indices: list[int]) -> np.ndarray:
    """The atlas-copy "prediction" (training class ids) for samples `indices` of `dataset`: the label map of
    the training split at the same position, the image never looked at.

    On the training data's own grid (the in-domain test split, or a test set resampled onto it) that is
    the training slice nearest in position. Otherwise each training volume contributes its slice nearest
    in relative position (0 = its first slice, 1 = its last; a 2-D image is 0.5) and the per-pixel
    majority of those wins; for 2-D data that is the majority of all training masks.
    """
    train_indices = train.indices("train")
    if not train_indices:
        raise ConfigError(f"dataset {train.name} has no training split to copy label maps from")
    if dataset.grid and dataset.grid == train.grid:
        positions = train.positions[train_indices]
        nearest = [train_indices[int(np.argmin(np.abs(positions - dataset.positions[i])))] for i in indices]
        return train.masks[nearest].copy()
    train_relative, test_relative = relative_positions(train), relative_positions(dataset)
    by_case: dict[str, list[int]] = {}
    for i in train_indices:
        by_case.setdefault(train.cases[i], []).append(i)
    votes: dict[tuple[int, ...], np.ndarray] = {}
    out = np.zeros((len(indices), *train.masks.shape[1:]), np.uint8)
    for k, index in enumerate(indices):
        picks = tuple(members[int(np.argmin(np.abs(train_relative[members] - test_relative[index])))]
                      for members in by_case.values())
        if picks not in votes:
            counts = np.stack([(train.masks[list(picks)] == c).sum(axis=0) for c in range(train.num_classes)])
            votes[picks] = np.argmax(counts, axis=0).astype(np.uint8)
        out[k] = votes[picks]
    return out


def relative_positions(dataset: PreparedDataset) -> np.ndarray:
    """Each sample's position within its case, 0 (first slice) .. 1 (last); 0.5 for a one-slice case."""
    out = np.full(len(dataset), 0.5)
    cases = np.asarray(dataset.cases)
    for case in set(dataset.cases):
        members = np.flatnonzero(cases == case)
        low, high = dataset.positions[members].min(), dataset.positions[members].max()
        if high > low:
            out[members] = (dataset.positions[members] - low) / (high - low)
    return out


def figure_rows(images: np.ndarray, truths: np.ndarray, predictions: np.ndarray, count: int, num_classes: int) -> list[list[np.ndarray]]:
    """`count` evenly spaced cases as [image | truth overlay | prediction overlay] tiles."""
    from s2s2.pipeline.viz import overlay_mask, to_rgb_uint8

    picks = np.unique(np.linspace(0, len(images) - 1, num=min(count, len(images))).round().astype(int))
    return [[to_rgb_uint8(images[i]), overlay_mask(images[i], truths[i], num_classes),
             overlay_mask(images[i], predictions[i], num_classes)] for i in picks]


def summary_lines(results: dict[str, Any]) -> list[str]:
    """One line per test set: mean and per-class Dice, mean HD95, per slice and per volume (what
    `s2s2 evaluate` prints)."""
    lines = []
    for name, entry in results["test_sets"].items():
        text = f"{results['run']} {name}: {score_text(entry)} per slice ({entry['n_cases']})"
        if entry.get("volume"):
            text += f"; {score_text(entry['volume'])} per volume ({entry['volume']['n_cases']})"
        lines.append(text)
    return lines


def merge_metrics(previous: dict[str, Any] | None, results: dict[str, Any]) -> dict[str, Any]:
    """`results` plus the test sets of an earlier evaluation of the same checkpoint that this one
    did not redo (evaluating one set adds it to metrics.json instead of dropping the others)."""
    if not previous or not same_checkpoint(previous.get("checkpoint"), results["checkpoint"]):
        return results
    return {**results, "test_sets": {**previous.get("test_sets", {}), **results["test_sets"]}}


def same_checkpoint(a: str | None, b: str | None) -> bool:
    """Whether two metrics.json entries score the same weights (the atlas copy has none)."""
    if a is None or b is None:
        return a is None and b is None
    return Path(a).resolve() == Path(b).resolve()


def read_metrics(path: Path) -> dict[str, Any] | None:
    """An existing metrics.json, or None if there is none or it cannot be read (it is then replaced)."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def score_text(entry: dict[str, Any]) -> str:
    """"Dice 0.812 (grey matter 0.801, ...), HD95 3.20 mm" of one metrics entry."""
    per_class = ", ".join(f"{n} {v:.3f}" for n, v in entry["dice"].items())
    return f"Dice {entry['dice_mean']:.3f} ({per_class}), HD95 {entry['hd95_mean']:.2f} {entry['hd95_unit']}"


def load_model(cfg: ProjectConfig, checkpoint: Path, train_data: PreparedDataset) -> tuple[torch.nn.Module, torch.device]:
    """The segmenter of `cfg.model` with the weights of `checkpoint`, on the evaluation device.

    Its classes and input shape are the training data's (never a test set's); a checkpoint made
    for another architecture, class count or size is refused."""
    c, size = train_data.image_shape[0], train_data.image_shape[1]
    model = build_segmenter(cfg.model, c, train_data.num_classes, size)
    load_weights(model, checkpoint, model_identity(cfg.model, c, train_data.num_classes, size))
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.train.device != "cpu" else "cpu")
    return model.to(device), device


def score_test_sets(cfg: ProjectConfig, train_data: PreparedDataset,
                    datasets: dict[str, tuple[PreparedDataset, list[int]]],
                    segment: Callable[[PreparedDataset, list[int]], np.ndarray]
                    ) -> tuple[dict[str, Any], list[list[np.ndarray]], list[str]]:
    """Metrics of `segment` (dataset, indices -> class ids in the training data's label space) on every
    test set, plus figure rows (image | truth | prediction) and their titles."""
    scores: dict[str, Any] = {}
    rows, titles = [], []
    for name, (dataset, indices) in datasets.items():
        if dataset.image_shape != train_data.image_shape:
            raise ConfigError(f"test set {name} has images {dataset.image_shape}, the model takes "
                              f"{train_data.image_shape}; fix: prepare it at data.size={train_data.image_shape[1]}")
        classes = shared_classes(train_data.class_names, dataset.class_names, cfg.evaluate.eval_classes, name)
        predictions = segment(dataset, indices)
        scores[name] = evaluate_set(predictions, dataset, indices, classes, cfg.evaluate.hd95_percentile)
        truths = np.stack([np.select([dataset.masks[i] == t for _, t in classes.values()],
                                     [p for p, _ in classes.values()], 0) for i in indices])
        shown = np.where(np.isin(predictions, [p for p, _ in classes.values()]), predictions, 0)
        for row in figure_rows(dataset.images[indices], truths, shown, cfg.evaluate.figure_cases, train_data.num_classes):
            rows.append(row)
            titles.append(name)
    return scores, rows, titles


def write_results(folder: Path, results: dict[str, Any], rows: list[list[np.ndarray]], titles: list[str]) -> None:
    """metrics.json (strict JSON; merged with the sets of an earlier evaluation of the same weights)
    and predictions.png into `folder`."""
    from s2s2.pipeline.viz import save_grid

    folder.mkdir(parents=True, exist_ok=True)
    merged = merge_metrics(read_metrics(folder / "metrics.json"), json_safe(results))
    with atomic_path(folder / "metrics.json") as tmp:
        tmp.write_text(json.dumps(merged, indent=1, allow_nan=False))
    if rows:
        save_grid(rows, folder / "predictions.png", row_titles=titles, col_titles=["image", "truth", "prediction"])


def run_evaluate(cfg: ProjectConfig, checkpoint: str | Path | None = None, sets: list[str] | None = None,
                 datasets: dict[str, tuple[PreparedDataset, list[int]]] | None = None,
                 train_data: PreparedDataset | None = None, folder: str | Path | None = None,
                 model_folder: str | Path | None = None) -> dict[str, Any]:
    """Evaluate the run's best or last checkpoint (`evaluate.checkpoint`, or `checkpoint`) on the test sets;
    returns the results and merges them into the run's metrics.json.

    `folder` is the run folder for every read and write (default {run_dir}/train/{train.name}).
    The model's classes and input shape come from the training data (`train_data`, default
    `prepare_dataset(cfg.data)`), whichever test sets are asked for. `datasets` replaces
    `test_datasets(cfg, sets)` (tests that hold the data in memory). `model_folder`: evaluate a model
    folder (`s2s2 export`) instead of a run's checkpoint; results go into it unless `folder` is given.
    Classes follow the loss the model was trained with (argmax, or sigmoid > 0.5 per class).
    """
    from s2s2.pipeline.data.prepare import prepare_dataset

    train_data = train_data if train_data is not None else prepare_dataset(cfg.data)
    if model_folder is not None:
        folder = Path(folder) if folder is not None else Path(model_folder)
        model, card = from_pretrained(model_folder)
        if (card.class_names, card.image_size) != (train_data.class_names, train_data.image_shape[1]):
            raise ConfigError(f"model folder {model_folder} predicts {list(card.class_names)} at {card.image_size} px, "
                              f"the config's data has {list(train_data.class_names)} at {train_data.image_shape[1]} "
                              "px; fix: evaluate it with the config it was trained with (its training_config.yaml)")
        checkpoint, activation = Path(model_folder) / "model.safetensors", card.activation
        device = torch.device("cuda" if torch.cuda.is_available() and cfg.train.device != "cpu" else "cpu")
        model = model.to(device)
    else:
        folder = Path(folder) if folder is not None else run_folder(cfg)
        default = "model.safetensors" if cfg.evaluate.checkpoint == "best" else "last.safetensors"
        checkpoint = Path(checkpoint) if checkpoint else folder / default
        model, device = load_model(cfg, checkpoint, train_data)
        activation = ACTIVATION[cfg.train.loss.seg]
    datasets = datasets or test_datasets(cfg, sets, train_data)

    def segment(dataset: PreparedDataset, indices: list[int]) -> np.ndarray:
        return predict(model, dataset.images[indices], device, cfg.evaluate.batch_size, activation)

    scores, rows, titles = score_test_sets(cfg, train_data, datasets, segment)
    results: dict[str, Any] = {"checkpoint": str(checkpoint), "model": cfg.model.name, "run": cfg.train.name,
                               "policy": POLICY, "eval_classes": cfg.evaluate.eval_classes, "test_sets": scores,
                               "provenance": evaluation_provenance(folder, train_data,
                                                                   {name: data for name, (data, _) in datasets.items()})}
    write_results(folder, results, rows, titles)
    return results


def run_atlas_copy(cfg: ProjectConfig, sets: list[str] | None = None,
                   datasets: dict[str, tuple[PreparedDataset, list[int]]] | None = None,
                   train_data: PreparedDataset | None = None) -> dict[str, Any]:
    """Score the atlas copy (see `atlas_copy`) on the test sets like a run; returns the results and writes
    them to {run_dir}/atlas-copy/ (metrics.json, predictions.png). Arguments as for `run_evaluate`."""
    from s2s2.pipeline.data.prepare import prepare_dataset

    train_data = train_data if train_data is not None else prepare_dataset(cfg.data)
    datasets = datasets or test_datasets(cfg, sets, train_data)
    scores, rows, titles = score_test_sets(cfg, train_data, datasets,
                                           lambda dataset, indices: atlas_copy(train_data, dataset, indices))
    results: dict[str, Any] = {"checkpoint": None, "model": ATLAS_COPY, "run": ATLAS_COPY, "policy": POLICY,
                               "eval_classes": cfg.evaluate.eval_classes, "test_sets": scores,
                               "method": "reference: no image"}
    write_results(Path(cfg.run_dir) / ATLAS_COPY, results, rows, titles)
    return results
