"""The recipe's validation and batch-norm options on real stores and real training steps: stack-val
images drawn for the val masks (never served to training), stack-val Dice and `train.select_on`,
and batch-norm running statistics from the originals only."""

from __future__ import annotations

import copy
import csv
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from s2s2.pipeline.config.project import ProjectConfig
from s2s2.pipeline.config.train import ModelConfig
from s2s2.pipeline.data.prepared import PreparedDataset
from s2s2.pipeline.errors import ConfigError, StoreError
from s2s2.pipeline.segmenters import build_segmenter
from s2s2.stages.generate import run_generate
from s2s2.stages.report import collect_runs, results_markdown
from s2s2.stages.train.batchnorm import originals_only_running_stats
from s2s2.stages.train.loop import run_train
from s2s2.stages.train.stack_val import selected_row
from s2s2.store.manifest import VAL_SPLIT
from s2s2.store.stack_store import StackStore
from fixtures_toy import toy_dataset, toy_project_config
from test_train_support import blob_dataset, filled_store, tiny_config


@pytest.fixture(scope="module")
def dataset() -> PreparedDataset:
    """Blobs whose images are exact uint8 levels, so a stack image that copies the original (stored
    as uint8) is the original to the bit."""
    blobs = blob_dataset(n=24, size=32)
    levels = np.round(blobs.images * 255).astype(np.uint8)
    return PreparedDataset(name=blobs.name, images=levels.astype(np.float32) * np.float32(1 / 255),
                           masks=blobs.masks, ids=blobs.ids, spacings=blobs.spacings, class_names=blobs.class_names,
                           modality=blobs.modality, prompt_template=blobs.prompt_template, splits=blobs.splits)


def val_store(path, dataset: PreparedDataset, k: int = 2, copies: bool = False) -> StackStore:
    """A real stack-val store of the val split: random tissue levels, or (`copies`) the originals."""
    store = StackStore.create(path, dataset, k=k, split=VAL_SPLIT, shard_size=4)
    originals = np.round(dataset.images[store.source_indices] * 255).astype(np.uint8)
    rng = np.random.default_rng(3)
    masks = store.read_masks(range(store.n_samples))
    for shard in range(store.num_shards):
        rows = store.shard_samples(shard)
        images = np.zeros((len(rows), k, *dataset.image_shape), np.uint8)
        for j, row in enumerate(rows):
            for kk in range(k):
                levels = rng.uniform(0, 1, dataset.num_classes)
                images[j, kk] = originals[row] if copies else np.clip(levels[masks[row]] * 255, 0, 255)[None]
        store.write_shard(shard, images)
    return store


def with_val_store(cfg: ProjectConfig, path) -> ProjectConfig:
    return cfg.model_copy(update={"store": cfg.store.model_copy(update={"val_path": str(path)})})


def test_the_val_store_is_the_training_stores_sibling_by_default(tmp_path):
    cfg = tiny_config(tmp_path)
    assert cfg.store.val_path == str(tmp_path / "stack-val.zarr")
    assert ProjectConfig.model_validate({"run_dir": "r"}).store.val_path == "r/stack-val.zarr"


def test_generate_draws_the_val_masks_stack_with_the_same_generator(tmp_path):
    data = toy_dataset()
    cfg = toy_project_config(str(tmp_path), generator={"kind": "synth"}, store={"k": 2, "shard_size": 2},
                             generate={"val_stack": True})
    results = run_generate(cfg, data)
    train, val = StackStore.open(cfg.store.path), StackStore.open(cfg.store.val_path)
    assert (train.manifest.split, val.manifest.split) == ("train", VAL_SPLIT)
    assert list(val.source_indices) == list(data.splits[VAL_SPLIT])
    assert val.complete_fraction() == 1.0 and val.k == train.k
    assert val.manifest.generator == train.manifest.generator  # one generator draws both
    assert len(results) == train.num_shards + val.num_shards
    assert run_generate(cfg, data) == []  # both complete: a rerun skips them
    no_val = PreparedDataset(name=data.name, images=data.images, masks=data.masks, ids=data.ids,
                             spacings=data.spacings, class_names=data.class_names, modality=data.modality,
                             prompt_template=data.prompt_template, splits={**data.splits, VAL_SPLIT: []})
    with pytest.raises(ConfigError, match="generate.val_stack.*no 'val' split"):
        run_generate(cfg, no_val)


def test_training_refuses_the_stack_val_store(tmp_path, dataset):
    val_store(tmp_path / "stack-val.zarr", dataset)
    cfg = tiny_config(tmp_path, steps=2)
    cfg = cfg.model_copy(update={"store": cfg.store.model_copy(update={"path": str(tmp_path / "stack-val.zarr")})})
    with pytest.raises(StoreError, match="stack images of the 'val' split.*training never does"):
        run_train(cfg, dataset=dataset)


def test_stack_val_of_copies_of_the_originals_equals_the_real_val_dice(tmp_path, dataset):
    """The stack-val Dice is the model segmenting the val masks' stack images: when every stack image
    is its original, it equals the real val Dice at every validation, and log.csv, summary.json and
    the report show both."""
    filled_store(tmp_path / "stack.zarr", dataset, k=3)
    val_store(tmp_path / "stack-val.zarr", dataset, k=2, copies=True)
    folder = run_train(tiny_config(tmp_path, steps=6, val_every=2), dataset=dataset)
    rows = [r for r in csv.DictReader(open(folder / "log.csv")) if r["val_dice_mean"]]
    assert len(rows) == 3 and all(r["stack_val_dice_mean"] for r in rows)
    for row in rows:
        assert float(row["stack_val_dice_mean"]) == pytest.approx(float(row["val_dice_mean"]), abs=1e-9)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["best_stack_val_dice_mean"] == pytest.approx(summary["best_val_dice_mean"], abs=1e-9)
    (folder / "metrics.json").write_text(json.dumps({"test_sets": {}}))
    table = results_markdown(collect_runs(tmp_path / "run"))
    assert "| val Dice | stack-val Dice |" in table
    assert f"| {summary['best_val_dice_mean']:.3f} | {summary['best_stack_val_dice_mean']:.3f} |" in table


@pytest.mark.parametrize("select_on", ["val", "stack_val", "mean"])
def test_select_on_decides_which_validation_keeps_the_checkpoint(tmp_path, dataset, select_on):
    filled_store(tmp_path / "stack.zarr", dataset, k=3)
    val_store(tmp_path / "stack-val.zarr", dataset, k=2)
    folder = run_train(tiny_config(tmp_path, steps=5, val_every=1, checkpoint_every=5, select_on=select_on),
                       dataset=dataset)
    rows = [{k: float(v) for k, v in r.items() if v} for r in csv.DictReader(open(folder / "log.csv"))
            if r["val_dice_mean"]]
    score = {"val": lambda r: r["val_dice_mean"], "stack_val": lambda r: r["stack_val_dice_mean"],
             "mean": lambda r: (r["val_dice_mean"] + r["stack_val_dice_mean"]) / 2}[select_on]
    best = max(rows, key=score)  # the first of equal maxima
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["select_on"] == select_on and summary["selected_step"] == int(best["step"])
    assert summary["best_val_dice_mean"] == pytest.approx(best["val_dice_mean"])
    assert summary["best_stack_val_dice_mean"] == pytest.approx(best["stack_val_dice_mean"])
    assert selected_row([{"step": 1, "val_dice_mean": 0.5, "stack_val_dice_mean": 0.1},
                         {"step": 2, "val_dice_mean": 0.4, "stack_val_dice_mean": 0.3}], select_on)["step"] == (
        {"val": 1, "stack_val": 2, "mean": 2}[select_on])


def test_selection_on_stack_val_without_its_store_is_a_clear_error(tmp_path, dataset):
    with pytest.raises(StoreError, match="select_on=mean needs the stack-val store.*make generate"):
        run_train(tiny_config(tmp_path, stack=False, steps=2, select_on="mean"), dataset=dataset)
    assert not (tmp_path / "run").exists()  # refused before anything is written
    folder = run_train(tiny_config(tmp_path, stack=False, steps=2, val_every=1), dataset=dataset)
    summary = json.loads((folder / "summary.json").read_text())  # select_on=val: the real val alone
    assert summary["best_stack_val_dice_mean"] is None and summary["best_val_dice_mean"] is not None
    wrong = with_val_store(tiny_config(tmp_path, stack=False, steps=2, name="wrong"), tmp_path / "stack.zarr")
    filled_store(tmp_path / "stack.zarr", dataset, k=2)
    with pytest.raises(StoreError, match="must hold the 'val' split"):
        run_train(wrong, dataset=dataset)


def bn_buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if "running_" in k or "num_batches_tracked" in k}


def test_originals_only_running_stats_equal_the_baselines_for_the_same_batch():
    torch.manual_seed(0)
    model = build_segmenter(ModelConfig(), 1, 4, 32).train()
    baseline, joint, split = model, copy.deepcopy(model), copy.deepcopy(model)
    originals, stack_images = torch.rand(4, 1, 32, 32), torch.rand(4, 1, 32, 32) * 0.5 + 0.5
    out_baseline = baseline(originals).logits
    joint(torch.cat([originals, stack_images]))
    with originals_only_running_stats(split, len(originals)):
        out_split = split(torch.cat([originals, stack_images])).logits
    want, got, mixed = bn_buffers(baseline), bn_buffers(split), bn_buffers(joint)
    assert want and want.keys() == got.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6, msg=key)
    assert any(not torch.allclose(mixed[k], want[k]) for k in want if "running_mean" in k)  # the 2B forward mixes
    torch.testing.assert_close(out_split[:4], out_baseline, rtol=1e-4, atol=1e-5)  # the originals as the baseline's
    assert not any("forward" in vars(m) for m in split.modules())  # the layers are restored


@pytest.mark.parametrize("bn_stack_stats", [False, True])
def test_the_trainers_first_step_keeps_the_baselines_running_stats_only_when_asked(tmp_path, dataset, bn_stack_stats):
    """One step from the same init and batch: with `bn_stack_stats: false` the S2S2 run's batch-norm
    running statistics are the baseline's; with `true` (one forward of 2B images) they are not."""
    filled_store(tmp_path / "stack.zarr", dataset, k=3)
    common = {"steps": 1, "val_every": 5, "checkpoint_every": 1, "augment": {"enabled": False}}
    base = run_train(tiny_config(tmp_path, stack=False, name="base", **common), dataset=dataset)
    s2s2 = run_train(tiny_config(tmp_path, name="s2s2", bn_stack_stats=bn_stack_stats,
                                 loss={"w_seg_gen": 1.0}, **common), dataset=dataset)
    a, b = load_file(str(base / "last.safetensors")), load_file(str(s2s2 / "last.safetensors"))
    stats = [k for k in a if "running_mean" in k or "running_var" in k]
    assert stats
    same = all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in stats)
    assert same is (not bn_stack_stats)
    assert not all(torch.equal(a[k], b[k]) for k in a if k not in stats and "num_batches" not in k)  # weights moved apart
