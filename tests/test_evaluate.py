"""Evaluation of a trained run in- and out-of-domain, class matching by name, and the results table."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest

from s2s2.cli import main
from s2s2.pipeline.config.data import DataConfig
from s2s2.pipeline.data.prepared import PreparedDataset
from s2s2.pipeline.errors import ConfigError, S2S2Error
from s2s2.pipeline.metrics import dice
from s2s2.stages.evaluate import evaluate_set, out_of_domain_config, run_evaluate, shared_classes
from s2s2.stages.report import write_report
from s2s2.stages.train import run_train
from fixtures_data import write_folder_dataset, write_nnunet_png
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
        results = run_evaluate(cfg, datasets=sets, train_data=ds)
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
        run_evaluate(cfg, datasets={"in_domain": (ds, ds.indices("test"))}, train_data=ds)
    three = PreparedDataset(name="three", images=ds.images, masks=np.minimum(ds.masks, 2), ids=ds.ids,
                            spacings=ds.spacings, class_names=("background", "grey matter", "white matter"),
                            modality="x", prompt_template="{modality} {classes}", splits=ds.splits)
    with pytest.raises(S2S2Error, match="num_classes: checkpoint '4' vs config '3'"):
        run_evaluate(tiny_config(tmp_path, stack=False), datasets={"in_domain": (three, three.indices("test"))},
                     train_data=three)


def test_no_nan_in_metrics_json(tmp_path):
    ds = blob_dataset(n=24, size=32)
    run_train(tiny_config(tmp_path, stack=False, steps=1), dataset=ds)
    run_evaluate(tiny_config(tmp_path, stack=False), datasets={"in_domain": (ds, ds.indices("test"))}, train_data=ds)
    text = (tmp_path / "run" / "train" / "s2s2" / "metrics.json").read_text()

    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    saved = json.loads(text, parse_constant=refuse)  # strict JSON: absent values are null, never NaN
    assert not any(isinstance(v, float) and math.isnan(v) for v in saved["test_sets"]["in_domain"]["dice"].values())


def test_out_of_domain_only_evaluation_keeps_the_models_classes(tmp_path, monkeypatch, capsys):
    """`s2s2 evaluate --test-set ood` on a set with fewer classes: the model keeps the training data's 3."""
    root = write_nnunet_png(tmp_path / "train_data", cases=12)  # background, polyp, tool
    ood_root = write_folder_dataset(tmp_path / "ood_data", n=4)  # 0/255 masks: background, polyp
    cfg = tiny_config(tmp_path, stack=False, steps=2, batch_size=2)
    cfg.data = DataConfig(adapter="nnunet", root=root, size=32, cache_dir=tmp_path / "cache")
    cfg.evaluate.eval_classes = ["polyp"]
    cfg.evaluate.out_of_domain = {"ood": {"adapter": "folder", "root": str(ood_root),
                                          "class_names": ["background", "polyp"]}}
    folder = run_train(cfg)
    monkeypatch.setattr(sys, "argv", ["s2s2", "evaluate", "--run", str(folder), "--test-set", "ood"])
    main()
    assert "s2s2 ood: Dice" in capsys.readouterr().out
    saved = json.loads((folder / "metrics.json").read_text())
    assert list(saved["test_sets"]) == ["ood"] and saved["test_sets"]["ood"]["n_cases"] == 4
    assert list(saved["test_sets"]["ood"]["dice"]) == ["polyp"]


def test_out_of_domain_sets_inherit_every_data_field():
    data = DataConfig(axis=0, size=48, min_foreground_fraction=0.1, slab_gap=5)
    ood = out_of_domain_config(data, {"adapter": "spm152", "contrast": "PD"})
    assert (ood.adapter, ood.contrast, ood.axis, ood.size, ood.min_foreground_fraction) == ("spm152", "PD", 0, 48, 0.1)
    assert out_of_domain_config(data, {"adapter": "spm152", "axis": 2}).axis == 2  # what an entry names wins
