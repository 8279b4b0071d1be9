"""Evaluation of a trained run in- and out-of-domain, class matching by name, and the results table."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest

from s2s2.cli import main
from s2s2.pipeline.config.data import data_config
from s2s2.pipeline.data.prepared import PreparedDataset
from s2s2.pipeline.errors import ConfigError, S2S2Error
from s2s2.pipeline.metrics import dice
from s2s2.stages.evaluate import (atlas_copy, evaluate_set, out_of_domain_config, run_atlas_copy, run_evaluate,
                                  shared_classes, volume_scores)
from s2s2.stages.report import collect_runs, write_report
from s2s2.stages.train import run_train
from fixtures_data import write_folder_dataset, write_nnunet_nifti, write_nnunet_png
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
    atlas = run_atlas_copy(cfg, datasets=sets, train_data=ds)
    assert (tmp_path / "run" / "atlas-copy" / "metrics.json").is_file()
    report, _ = write_report(tmp_path / "run", collect_runs(tmp_path / "run", list(names)), atlas)
    assert [r["name"] for r in report["runs"]] == list(names)
    row = report["runs"][0]
    assert set(row) >= {"name", "model", "method", "seed", "metrics"} and row["method"] == "baseline"
    assert set(row["metrics"]) == {"in_domain", "spm_t1"}
    assert set(row["metrics"]["in_domain"]) == {"dice_mean", "dice", "hd95_mean", "hd95_unit", "n_cases", "volume"}
    assert row["metrics"]["in_domain"]["hd95_unit"] == "px" and row["metrics"]["in_domain"]["volume"] is None
    assert report["reference"]["name"] == "atlas-copy"
    assert report["reference"]["metrics"]["spm_t1"]["dice_mean"] == atlas["test_sets"]["spm_t1"]["dice_mean"]
    table = (tmp_path / "run" / "results.md").read_text()
    assert "| base | unet | baseline | 0 | 12 |" in table and "| atlas-copy | – |" in table
    assert "Per 3-D volume" not in table  # 2-D images: no volumes
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
    cfg.data = data_config(adapter="nnunet", root=root, size=32, cache_dir=tmp_path / "cache")
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
    data = data_config(axis=0, size=48, min_foreground_fraction=0.1, slab_gap=5)
    ood = out_of_domain_config(data, {"adapter": "spm152", "contrast": "PD"})
    assert (ood.adapter, ood.contrast, ood.axis, ood.size, ood.min_foreground_fraction) == ("spm152", "PD", 0, 48, 0.1)
    assert out_of_domain_config(data, {"adapter": "spm152", "axis": 2}).axis == 2  # what an entry names wins
    data = data_config(perturb={"seed": 7, "max_rotate_deg": 5})
    ood = out_of_domain_config(data, {"adapter": "spm152", "perturb": {"enabled": False}})
    assert (ood.perturb.enabled, ood.perturb.seed, ood.perturb.max_rotate_deg) == (False, 7, 5)



def slices_of_volumes(dataset: PreparedDataset, cases: list[str], positions: list[int], thickness: float,
                      grid: str = "") -> PreparedDataset:
    """`dataset` with every sample declared a slice of a volume (case, position, thickness in mm)."""
    return PreparedDataset(**{**dataset.__dict__, "cases": cases, "positions": np.asarray(positions),
                              "thickness": np.full(len(dataset), thickness), "spacing_unit": "mm", "grid": grid})


def test_volume_metrics_stack_slices_at_their_positions():
    """Class 2 is a square in slices 1..4 of the truth and 2..5 of the prediction (one slice too far)."""
    square = np.zeros((16, 16), np.uint8)
    square[4:12, 4:12] = 2
    positions = [5, 0, 1, 2, 3, 4]  # samples stored out of position order on purpose
    truth = np.stack([square * (p in (1, 2, 3, 4)) for p in positions]).astype(np.uint8)
    prediction = np.stack([square * (p in (2, 3, 4, 5)) for p in positions]).astype(np.uint8)
    base = blob_dataset(n=6, size=16)
    ds = slices_of_volumes(PreparedDataset(**{**base.__dict__, "masks": truth}), ["vol"] * 6, positions, thickness=2.0)
    classes = {"grey matter": (2, 2)}
    entry = evaluate_set(prediction, ds, list(range(6)), classes, 100.0)
    assert entry["dice"]["grey matter"] == pytest.approx(0.6)  # per slice: 3 hits, 2 misses, 1 both empty
    volume = entry["volume"]
    assert volume["n_cases"] == 1 and volume["cases"][0]["slices"] == 6 and volume["hd95_unit"] == "mm"
    assert volume["cases"][0]["spacing"] == [2.0, 1.0, 1.0]
    assert volume["dice"]["grey matter"] == pytest.approx(0.75)  # 3 of 4 slices overlap, in 3-D
    assert volume["hd95"]["grey matter"] == pytest.approx(2.0)  # one slice = 2 mm
    perfect = evaluate_set(truth, ds, list(range(6)), classes, 95.0)
    assert perfect["volume"]["dice_mean"] == 1.0 and perfect["volume"]["hd95_mean"] == 0.0


def test_atlas_copy_on_the_training_grid_copies_the_nearest_training_slice():
    train = slices_of_volumes(blob_dataset(n=12, size=16), ["icbm"] * 12, list(range(20, 32)), 1.0, grid="g")
    train.splits = {"train": [0, 1, 2, 7, 8, 9, 10, 11], "val": [], "test": [3, 4, 5, 6]}
    test = slices_of_volumes(blob_dataset(n=3, size=16, seed=5), ["spm"] * 3, [22, 24, 26], 1.0, grid="g")
    copied = atlas_copy(train, test, [0, 1, 2])
    assert np.array_equal(copied, train.masks[[2, 2, 7]])  # positions 22 -> 22, 24 -> 22 (tie: lower), 26 -> 27
    in_domain = atlas_copy(train, train, train.indices("test"))  # never the test slice itself
    assert np.array_equal(in_domain, train.masks[[2, 2, 7, 7]])


def test_atlas_copy_elsewhere_takes_the_majority_at_the_relative_position():
    masks = np.zeros((6, 4, 4), np.uint8)
    masks[[0, 2, 4], 0, 0] = 1  # first slice of each of three training volumes
    masks[[0, 2], 1, 1], masks[4, 1, 1] = 3, 2  # 3 wins the vote 2:1
    base = blob_dataset(n=6, size=4)
    train = slices_of_volumes(PreparedDataset(**{**base.__dict__, "masks": masks}),
                              ["a", "a", "b", "b", "c", "c"], [0, 1, 5, 9, 2, 3], 1.0, grid="icbm")
    train.splits = {"train": list(range(6))}
    test = slices_of_volumes(blob_dataset(n=2, size=4), ["x", "x"], [40, 90], 2.0, grid="other")
    copied = atlas_copy(train, test, [0, 1])
    assert copied[0, 0, 0] == 1 and copied[0, 1, 1] == 3  # relative position 0: the first slices
    assert copied[1].sum() == 0  # relative position 1: the last slices (empty)
    flat = PreparedDataset(**{**base.__dict__, "masks": masks})  # 2-D images: the majority of all masks
    flat.splits = {"train": list(range(6))}
    assert np.array_equal(atlas_copy(flat, flat, [0])[0], (np.argmax(np.stack([(masks == c).sum(0) for c in range(4)]), 0)))


def test_volume_data_is_scored_per_volume_and_reported_with_the_atlas_copy(tmp_path, monkeypatch, capsys):
    """nnU-Net 3-D data end to end through the CLI: per-slice and per-volume metrics in mm, a perturbed
    out-of-domain copy, and `s2s2 report` with the atlas-copy row in both tables."""
    root = write_nnunet_nifti(tmp_path / "Dataset001_Toy", cases=6)
    cfg = tiny_config(tmp_path, stack=False, steps=2)
    cfg.data = data_config(adapter="nnunet", root=root, size=32, cache_dir=tmp_path / "cache")
    cfg.evaluate.out_of_domain = {"moved": {"perturb": {"enabled": True}}}
    folder = run_train(cfg)
    monkeypatch.setattr(sys, "argv", ["s2s2", "evaluate", "--run", str(folder)])
    main()
    out = capsys.readouterr().out
    assert "per slice (8)" in out and "per volume (1)" in out and "per volume (6)" in out
    saved = json.loads((folder / "metrics.json").read_text())
    moved = saved["test_sets"]["moved"]
    assert moved["hd95_unit"] == "mm" and moved["volume"]["n_cases"] == 6
    assert {c["id"] for c in moved["volume"]["cases"]} == {f"case{i:03d}" for i in range(6)}
    monkeypatch.setattr(sys, "argv", ["s2s2", "report", "-c", str(folder / "config.yaml")])
    main()
    table = capsys.readouterr().out
    assert table.count("| atlas-copy |") == 2 and "Per 3-D volume" in table and " mm |" in table
    assert table == (tmp_path / "run" / "results.md").read_text().removeprefix("# Results\n\n") + "\n"
    reference = json.loads((tmp_path / "run" / "results.json").read_text())["reference"]
    assert set(reference["metrics"]) == {"in_domain", "moved"} and reference["metrics"]["moved"]["volume"]


def test_volume_hd95_of_a_slab_split_is_taken_over_the_slices_that_exist():
    """Test slabs of one volume with gaps between them score as the whole volume does when the anatomy
    does not change along the slices: the gap planes are no surface (stacked empty, their borders used to
    count as surface everywhere and pulled HD95 down), and the gaps are marked."""
    yy, xx = np.mgrid[:32, :32]
    truth = np.repeat((np.hypot(yy - 16, xx - 15) < 8)[None], 30, 0).astype(np.uint8)
    predicted = np.repeat((np.hypot(yy - 16, xx - 18) < 7)[None], 30, 0).astype(np.uint8)
    kept = [p for p in range(30) if p % 5 < 2]  # slabs of 2 slices, 3 planes of other splits between them
    dataset = PreparedDataset(
        name="slabs", images=np.zeros((30, 1, 32, 32), np.float32), masks=truth, ids=[f"v-{p}" for p in range(30)],
        spacings=np.ones((30, 2), np.float32), class_names=("background", "organ"), modality="m",
        prompt_template="{modality} {classes}", cases=["v"] * 30, positions=np.arange(30),
        thickness=np.full(30, 2.5, np.float32), spacing_unit="mm")
    whole = volume_scores(list(predicted), list(truth), dataset, list(range(30)), {"organ": 1}, 95.0)
    slabs = volume_scores([predicted[p] for p in kept], [truth[p] for p in kept], dataset, kept, {"organ": 1}, 95.0)
    assert slabs["hd95"]["organ"] == pytest.approx(whole["hd95"]["organ"]) == pytest.approx(4.0)
    assert whole["cases"][0]["missing_planes"] == 0 and slabs["cases"][0]["missing_planes"] == max(kept) + 1 - len(kept)
    assert slabs["dice"]["organ"] == pytest.approx(whole["dice"]["organ"])
