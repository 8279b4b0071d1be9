"""The trainer on real stores: one stack image per visit, exact resume, NaN stop, refusal of bad inputs."""

from __future__ import annotations

import csv
import json
from collections import Counter

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from s2s2.pipeline.data.prepared import PreparedDataset
from s2s2.pipeline.errors import ConfigError, S2S2Error, StoreError
from s2s2.stages.train.loop import run_train
from s2s2.stages.train.schedule import learning_rate_schedule, lr_factor
from s2s2.stages.train.datasets import draw_k
from s2s2.store.fast_read import ShardReader
from s2s2.store.stack_store import StackStore
from test_train_support import blob_dataset, filled_store, tiny_config


@pytest.fixture(scope="module")
def dataset() -> PreparedDataset:
    return blob_dataset(n=24, size=32)


def test_s2s2_reads_exactly_one_stack_image_per_sample_visit(tmp_path, dataset, monkeypatch):
    store = filled_store(tmp_path / "stack.zarr", dataset, k=3)
    stack_reads: list[tuple[int, int]] = []  # (sample, k) of every stack image decoded, by any read path
    real_read, real_read_shard_stack = ShardReader.read, StackStore.read_shard_stack

    def read(self, requests):  # every single-image read of the store goes through here
        stack_reads.extend((int(lead[0]), int(lead[1])) for name, lead in requests if name == "stack")
        return real_read(self, requests)

    def read_shard_stack(self, shard):
        stack_reads.extend((i, k) for i in self.shard_samples(shard) for k in range(self.k))
        return real_read_shard_stack(self, shard)

    monkeypatch.setattr(ShardReader, "read", read)
    monkeypatch.setattr(StackStore, "read_shard_stack", read_shard_stack)
    cfg = tiny_config(tmp_path, steps=8, batch_size=4, val_every=100, checkpoint_every=100)
    run_train(cfg, dataset=dataset)
    assert len(stack_reads) == 8 * 4  # steps x batch: one stack image per visit, never all K
    # 16 training samples, batch 4: epoch 0 = steps 1-4 visits each sample once, epoch 1 again
    per_epoch = [Counter(i for i, _ in stack_reads[e * 16:(e + 1) * 16]) for e in range(2)]
    assert all(set(c.values()) == {1} and len(c) == store.n_samples for c in per_epoch)
    # the k read is the reader's seeded draw for (seed, epoch, index)
    for epoch in range(2):
        for index, k in stack_reads[epoch * 16:(epoch + 1) * 16]:
            assert k == draw_k(cfg.train.seed, epoch, index, np.arange(3))


def weights(path):
    return load_file(str(path))


def test_resume_reproduces_the_uninterrupted_run(tmp_path, dataset):
    filled_store(tmp_path / "stack.zarr", dataset, k=3)
    straight = run_train(tiny_config(tmp_path, name="straight", steps=7, checkpoint_every=2), dataset=dataset)
    cut = tiny_config(tmp_path, name="cut", steps=7, checkpoint_every=2)
    run_train(cut, stop_after=3, dataset=dataset)  # epoch boundary at step 4 is crossed after resuming
    assert json.loads((straight.parent / "cut" / "summary.json").read_text())["steps"] == 3
    resumed = run_train(cut, resume=True, dataset=dataset)
    a, b = weights(straight / "last.safetensors"), weights(resumed / "last.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    rows = list(csv.DictReader(open(resumed / "log.csv")))
    assert [int(r["step"]) for r in rows if r["loss"]] == list(range(1, 8))


def test_resume_refuses_a_changed_config(tmp_path, dataset):
    run_train(tiny_config(tmp_path, stack=False, steps=2), dataset=dataset)
    with pytest.raises(ConfigError, match="train.lr changed"):
        run_train(tiny_config(tmp_path, stack=False, steps=2, lr=0.1), resume=True, dataset=dataset)


def test_baseline_needs_no_store_and_writes_the_run_folder(tmp_path, dataset):
    folder = run_train(tiny_config(tmp_path, stack=False, name="base", steps=4), dataset=dataset)
    assert not (tmp_path / "stack.zarr").exists()
    assert {"config.yaml", "model.safetensors", "last.safetensors", "state.pt", "log.csv", "progress.png",
            "summary.json"} <= {p.name for p in folder.iterdir()}
    summary = json.loads((folder / "summary.json").read_text())
    assert (summary["method"], summary["steps"]) == ("baseline", 4)


def test_non_finite_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path, dataset):
    cfg = tiny_config(tmp_path, stack=False, steps=20, optimizer="sgd", lr=1e12, momentum=0.0,
                      checkpoint_every=1, schedule="constant")
    with pytest.raises(S2S2Error, match="loss is not finite at step .*last good checkpoint"):
        run_train(cfg, dataset=dataset)
    kept = weights(tmp_path / "run" / "train" / "s2s2" / "last.safetensors")
    assert all(torch.isfinite(t.float()).all() for t in kept.values())


def test_refuses_a_store_of_another_dataset(tmp_path, dataset):
    filled_store(tmp_path / "stack.zarr", blob_dataset(n=24, size=32, seed=5))
    with pytest.raises(StoreError, match="another dataset"):
        run_train(tiny_config(tmp_path), dataset=dataset)


def test_refuses_an_incomplete_store_unless_allowed(tmp_path, dataset):
    filled_store(tmp_path / "stack.zarr", dataset, complete=False)
    with pytest.raises(StoreError, match="generated"):
        run_train(tiny_config(tmp_path), dataset=dataset)
    cfg = tiny_config(tmp_path, steps=2)
    cfg.store.allow_incomplete = True
    assert (run_train(cfg, dataset=dataset) / "last.safetensors").is_file()


def test_refuses_a_missing_store_with_the_fix(tmp_path, dataset):
    with pytest.raises(StoreError, match="make generate"):
        run_train(tiny_config(tmp_path), dataset=dataset)


def test_refuses_batch_larger_than_the_data(tmp_path, dataset):
    with pytest.raises(ConfigError, match="exceeds"):
        run_train(tiny_config(tmp_path, stack=False, batch_size=64), dataset=dataset)


def test_learning_rate_schedules():
    cfg = tiny_config(__import__("pathlib").Path("/tmp"), steps=10, lr=1.0).train
    assert lr_factor(0, cfg) == 1.0 and lr_factor(9, cfg) == pytest.approx(0.1 ** 0.9)
    cfg = cfg.model_copy(update={"schedule": "cosine", "warmup_steps": 2})
    assert lr_factor(0, cfg) == 0.5 and lr_factor(2, cfg) == 1.0 and lr_factor(6, cfg) == pytest.approx(0.5)


def test_a_resumed_schedule_continues_from_its_state_dict():
    cfg = tiny_config(__import__("pathlib").Path("/tmp"), steps=10, lr=0.1, warmup_steps=3).train
    weight = torch.nn.Parameter(torch.ones(2))

    def run(optimizer, schedule, steps):
        rates = []
        for _ in range(steps):
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.step(), schedule.step()
        return rates

    whole = torch.optim.SGD([weight], lr=cfg.lr)
    rates = run(whole, learning_rate_schedule(whole, cfg), 10)
    assert rates == [cfg.lr * lr_factor(step, cfg) for step in range(10)]
    first = torch.optim.SGD([weight], lr=cfg.lr)
    schedule = learning_rate_schedule(first, cfg)
    run(first, schedule, 4)
    resumed = torch.optim.SGD([weight], lr=cfg.lr)
    again = learning_rate_schedule(resumed, cfg)
    resumed.load_state_dict(first.state_dict())
    again.load_state_dict(schedule.state_dict())
    assert run(resumed, again, 6) == rates[4:]


@pytest.mark.parametrize("option", ["location_scale", "gin"])
def test_intensity_augmentations_touch_the_original_only(option):
    from s2s2.pipeline.config.train import AugmentConfig
    from s2s2.stages.train.augment import PairAugment

    ds = blob_dataset(n=6, size=32)
    original, stack_image, mask = ds.images[0], 1.0 - ds.images[0], ds.masks[0]
    transform = PairAugment(AugmentConfig(enabled=False), **{option: True})
    new_original, new_stack, new_mask = transform(original, stack_image, mask, np.random.default_rng(3),
                                                  np.random.default_rng(4))
    assert not np.allclose(new_original, original)
    np.testing.assert_array_equal(new_stack, stack_image)
    np.testing.assert_array_equal(new_mask, mask)


def test_baseline_with_location_scale_trains(tmp_path, dataset):
    folder = run_train(tiny_config(tmp_path, stack=False, location_scale=True, steps=3), dataset=dataset)
    assert json.loads((folder / "summary.json").read_text())["steps"] == 3


def log_rows(folder):
    return [{k: v for k, v in row.items() if k not in ("seconds",)} for row in csv.DictReader(open(folder / "log.csv"))]


def test_s2s2_without_stack_terms_reproduces_the_baseline_exactly(tmp_path, dataset, monkeypatch):
    """Matched runs: same seed, same samples, order, augmentation draws, init and steps. With every
    stack term at zero, S2S2 reads its stack images but never forwards them, so its losses, validation
    scores and weights equal the baseline's bit for bit; any stack term makes them differ."""
    filled_store(tmp_path / "stack.zarr", dataset, k=3)
    reads = []
    real_read = ShardReader.read
    monkeypatch.setattr(ShardReader, "read", lambda self, requests: reads.extend(requests) or real_read(self, requests))
    common = {"steps": 7, "val_every": 3, "checkpoint_every": 7, "location_scale": True}  # crosses an epoch
    base = run_train(tiny_config(tmp_path, stack=False, name="base", **common), dataset=dataset)
    zero = {"w_seg_gen": 0.0, "a_enc": 0.0, "a_dec": 0.0}
    matched = run_train(tiny_config(tmp_path, stack=True, name="zero", loss=zero, **common), dataset=dataset)
    assert len(reads) == 7 * 4  # the S2S2 reader ran: one stack image per visit
    assert json.loads((matched / "summary.json").read_text())["method"] == "s2s2"
    assert log_rows(matched) == log_rows(base)  # every logged loss and validation Dice
    for name in ("last.safetensors", "model.safetensors"):
        a, b = weights(base / name), weights(matched / name)
        assert all(torch.equal(a[key], b[key]) for key in a), name
    seg_only = run_train(tiny_config(tmp_path, stack=True, name="seg_only", loss={**zero, "w_seg_gen": 0.1},
                                     **common), dataset=dataset)
    a, b = weights(base / "last.safetensors"), weights(seg_only / "last.safetensors")
    assert not all(torch.equal(a[key], b[key]) for key in a)


def test_dataloader_workers_do_not_change_a_run(tmp_path, dataset):
    """Two forked DataLoader workers (started again each epoch, reading through the dataset's shard
    reader) give the same losses, validation scores and weights as reading in the main process."""
    filled_store(tmp_path / "stack.zarr", dataset, k=3)
    common = {"steps": 6, "val_every": 3, "checkpoint_every": 6}  # 4 steps per epoch: crosses one
    inline = run_train(tiny_config(tmp_path, name="inline", num_workers=0, **common), dataset=dataset)
    workers = run_train(tiny_config(tmp_path, name="workers", num_workers=2, **common), dataset=dataset)
    assert log_rows(workers) == log_rows(inline)
    a, b = weights(inline / "last.safetensors"), weights(workers / "last.safetensors")
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_a_new_run_refuses_an_existing_run_folder_unless_overwrite(tmp_path, dataset):
    first = run_train(tiny_config(tmp_path, stack=False, steps=2), dataset=dataset)
    before = weights(first / "model.safetensors")
    with pytest.raises(ConfigError, match="already holds a run.*--overwrite.*--resume"):
        run_train(tiny_config(tmp_path, stack=False, steps=2, seed=1), dataset=dataset)
    after = weights(first / "model.safetensors")
    assert all(torch.equal(before[key], after[key]) for key in before)  # nothing was deleted
    run_train(tiny_config(tmp_path, stack=False, steps=2), resume=True, dataset=dataset)
    assert json.loads((first / "summary.json").read_text())["steps"] == 2
    with pytest.raises(ConfigError, match="pass one of them"):
        run_train(tiny_config(tmp_path, stack=False, steps=4), resume=True, overwrite=True, dataset=dataset)
    run_train(tiny_config(tmp_path, stack=False, steps=2, seed=1), overwrite=True, dataset=dataset)
    summary = json.loads((first / "summary.json").read_text())
    assert (summary["seed"], summary["steps"]) == (1, 2)


def test_without_a_val_split_there_is_no_model_selection_on_training_data(tmp_path, dataset):
    no_val = PreparedDataset(name=dataset.name, images=dataset.images, masks=dataset.masks, ids=dataset.ids,
                             spacings=dataset.spacings, class_names=dataset.class_names, modality=dataset.modality,
                             prompt_template=dataset.prompt_template,
                             splits={**dataset.splits, "val": []})  # e.g. data.val_fraction: 0
    folder = run_train(tiny_config(tmp_path, stack=False, steps=6, val_every=2), dataset=no_val)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["model_selection"] == "last" and summary["best_val_dice_mean"] is None
    assert not any(row["val_dice_mean"] for row in csv.DictReader(open(folder / "log.csv")))
    a, b = weights(folder / "model.safetensors"), weights(folder / "last.safetensors")
    assert all(torch.equal(a[key], b[key]) for key in a)
    with_val = run_train(tiny_config(tmp_path, stack=False, steps=6, val_every=2, name="val"), dataset=dataset)
    assert json.loads((with_val / "summary.json").read_text())["model_selection"] == "best_val"


def test_a_run_stopped_by_its_time_cap_is_flagged_in_summary_and_report(tmp_path, dataset):
    from s2s2.stages.report import results_markdown, run_entry

    folder = run_train(tiny_config(tmp_path, stack=False, steps=500, max_seconds=0.01), dataset=dataset)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["stopped_by_time_cap"] is True and summary["steps"] < 500 and summary["max_seconds"] == 0.01
    (folder / "metrics.json").write_text(json.dumps({"test_sets": {"in_domain": {
        "dice_mean": 0.5, "dice": {"grey matter": 0.5}, "hd95_mean": 1.0}}}))
    assert f"| {summary['steps']} of 500 (STOPPED BY TIME CAP) |" in results_markdown([run_entry(folder)])
    full = run_train(tiny_config(tmp_path, stack=False, steps=2, name="full"), dataset=dataset)
    assert json.loads((full / "summary.json").read_text())["stopped_by_time_cap"] is False


def test_tensorboard_logs_the_rows_of_log_csv_and_an_overwrite_replaces_them(tmp_path, dataset):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_config(tmp_path, stack=False, name="tb", steps=4, tensorboard=True, log_every=1)
    folder = run_train(cfg, dataset=dataset)
    rows = [r for r in csv.DictReader(open(folder / "log.csv")) if r["loss"]]
    (run,) = [p for p in (folder / "tensorboard").iterdir() if p.is_dir()]
    scalars = EventAccumulator(str(run)).Reload().Scalars("loss")
    assert [s.step for s in scalars] == [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    np.testing.assert_allclose([s.value for s in scalars], [float(r["loss"]) for r in rows], rtol=1e-6)
    run_train(cfg, dataset=dataset, overwrite=True)  # the tensorboard folder is a run output, replaced
    (again,) = [p for p in (folder / "tensorboard").iterdir() if p.is_dir()]
    assert len(EventAccumulator(str(again)).Reload().Scalars("loss")) == 4
