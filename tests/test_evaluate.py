"""Evaluation of a trained run in- and out-of-domain, class matching by name, and the results table."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from s2s2.pipeline.data.prepared import PreparedDataset
from s2s2.pipeline.errors import ConfigError, S2S2Error
from s2s2.pipeline.metrics import dice
from s2s2.stages.evaluate import evaluate_set, run_evaluate, shared_classes
from s2s2.stages.report import write_report
from s2s2.stages.train import run_train
from test_train_support import blob_dataset, tiny_config


def relabelled(dataset: PreparedDataset, order: tuple[str, ...], invert: bool) -> PreparedDataset:
    """The same anatomy with another label numbering (and optionally inverted contrast): an OOD stand-in."""
    lut = np.array([order.index(n) for n in dataset.class_names], np.uint8)
    images = 1.0 - dataset.images if invert else dataset.images
    return PreparedDataset(name="ood", images=images.astype(np.float32), masks=lut[dataset.masks], ids=dataset.ids,
                           spacings=dataset.spacings * 2, class_names=order, modality="other",
                           prompt_template=dataset.prompt_template, splits=dataset.splits)


def test_evaluate_set_matches_classes_by_name():
    ds = blob_dataset(n=12, size=32)
    ood = relabelled(ds, ("background", "white matter", "grey matter", "csf"), invert=False)
    classes = shared_classes(ds.class_names, ood.class_names, ["grey matter", "white matter"], "ood")
    assert classes == {"grey matter": (2, 2), "white matter": (3, 1)}
    indices = ood.indices("test")
    perfect = ds.masks[indices]  # the model's label space
    entry = evaluate_set(perfect, ood, indices, classes, 95.0)
    assert entry["dice_mean"] == 1.0 and entry["hd95_mean"] == 0.0 and entry["n_cases"] == len(indices)
    swapped = np.where(perfect == 2, 3, np.where(perfect == 3, 2, perfect))
    entry = evaluate_set(swapped, ood, indices, classes, 95.0)
    assert entry["dice"]["grey matter"] == pytest.approx(np.mean([dice(s == 2, m == 2) for s, m in
                                                                   zip(swapped, ood.masks[indices])]))
    with pytest.raises(ConfigError, match="not classes of both"):
        shared_classes(ds.class_names, ("background", "tumour"), ["grey matter"], "other")


def test_trained_run_is_evaluated_and_reported(tmp_path):
    ds = blob_dataset(n=24, size=32)
    ood = relabelled(ds, ("background", "white matter", "grey matter", "csf"), invert=True)
    names = ("base", "other")
    for name in names:
        run_train(tiny_config(tmp_path, stack=False, name=name, steps=12, val_every=6), dataset=ds)
        cfg = tiny_config(tmp_path, stack=False, name=name)
        cfg.evaluate.eval_classes = ["grey matter", "white matter"]
        sets = {"in_domain": (ds, ds.indices("test")), "spm_t1": (ood, ood.indices("all"))}
        results = run_evaluate(cfg, datasets=sets)
    folder = tmp_path / "run" / "train" / "other"
    saved = json.loads((folder / "metrics.json").read_text())
    assert saved["test_sets"]["in_domain"]["dice_mean"] == pytest.approx(results["test_sets"]["in_domain"]["dice_mean"])
    in_domain = saved["test_sets"]["in_domain"]
    assert set(in_domain["dice"]) == {"grey matter", "white matter"} and len(in_domain["cases"]) == 4
    assert in_domain["dice_mean"] == pytest.approx(np.mean(list(in_domain["dice"].values())))
    assert saved["test_sets"]["spm_t1"]["n_cases"] == 24
    assert (folder / "predictions.png").stat().st_size > 0
    report, _ = write_report(tmp_path / "run", list(names))
    assert [r["name"] for r in report["runs"]] == list(names)
    row = report["runs"][0]
    assert set(row) >= {"name", "model", "method", "seed", "metrics"} and row["method"] == "baseline"
    assert set(row["metrics"]) == {"in_domain", "spm_t1"}
    assert set(row["metrics"]["in_domain"]) == {"dice_mean", "dice", "hd95_mean"}
    table = (tmp_path / "run" / "results.md").read_text()
    assert "| base | unet | baseline | 0 | 12 |" in table
    assert json.loads((tmp_path / "run" / "results.json").read_text()) == report


def test_checkpoint_of_another_architecture_or_class_count_is_refused(tmp_path):
    ds = blob_dataset(n=24, size=32)
    run_train(tiny_config(tmp_path, stack=False, steps=2), dataset=ds)
    cfg = tiny_config(tmp_path, stack=False)
    cfg.model.name = "transunet"
    with pytest.raises(S2S2Error, match="made for another model"):
        run_evaluate(cfg, datasets={"in_domain": (ds, ds.indices("test"))})
    three = PreparedDataset(name="three", images=ds.images, masks=np.minimum(ds.masks, 2), ids=ds.ids,
                            spacings=ds.spacings, class_names=("background", "grey matter", "white matter"),
                            modality="x", prompt_template="{modality} {classes}", splits=ds.splits)
    with pytest.raises(S2S2Error, match="num_classes: checkpoint '4' vs config '3'"):
        run_evaluate(tiny_config(tmp_path, stack=False), datasets={"in_domain": (three, three.indices("test"))})


def test_no_nan_in_metrics_json(tmp_path):
    ds = blob_dataset(n=24, size=32)
    run_train(tiny_config(tmp_path, stack=False, steps=1), dataset=ds)
    run_evaluate(tiny_config(tmp_path, stack=False), datasets={"in_domain": (ds, ds.indices("test"))})
    text = (tmp_path / "run" / "train" / "s2s2" / "metrics.json").read_text()

    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    saved = json.loads(text, parse_constant=refuse)  # strict JSON: absent values are null, never NaN
    assert not any(isinstance(v, float) and math.isnan(v) for v in saved["test_sets"]["in_domain"]["dice"].values())
