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
from s2s2.stages.train.loop import lr_at, run_train
from s2s2.stages.train.datasets import draw_k
from s2s2.store.stack_store import StackStore
from test_train_support import blob_dataset, filled_store, tiny_config


@pytest.fixture(scope="module")
def dataset() -> PreparedDataset:
    return blob_dataset(n=24, size=32)


def test_s2s2_reads_exactly_one_stack_image_per_sample_visit(tmp_path, dataset, monkeypatch):
    store = filled_store(tmp_path / "stack.zarr", dataset, k=3)
    stack_reads: list[tuple[int, int]] = []  # (sample, k) of every stack image decoded, by any read path
    real = {name: getattr(StackStore, name) for name in ("read_pair", "read_stack", "read_shard_stack")}

    def read_pair(self, index, k):
        stack_reads.append((int(index), int(k)))
        return real["read_pair"](self, index, k)

    def read_stack(self, index, k):
        stack_reads.append((int(index), int(k)))
        return real["read_stack"](self, index, k)

    def read_shard_stack(self, shard):
        stack_reads.extend((i, k) for i in self.shard_samples(shard) for k in range(self.k))
        return real["read_shard_stack"](self, shard)

    monkeypatch.setattr(StackStore, "read_pair", read_pair)
    monkeypatch.setattr(StackStore, "read_stack", read_stack)
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
            assert k == draw_k(cfg.train.seed, epoch, index, np.arange(3))[0]


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
        run_train(tiny_config(tmp_path, stack=False, steps=4, lr=0.1), resume=True, dataset=dataset)


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
    assert lr_at(0, cfg) == 1.0 and lr_at(9, cfg) == pytest.approx(0.1 ** 0.9)
    cfg = cfg.model_copy(update={"schedule": "cosine", "warmup_steps": 2})
    assert lr_at(0, cfg) == 0.5 and lr_at(2, cfg) == 1.0 and lr_at(6, cfg) == pytest.approx(0.5)


def test_location_scale_touches_the_original_only():
    from s2s2.stages.train.augment import PairAugment
    from s2s2.pipeline.config.train import AugmentConfig
    from s2s2.stages.train.augment import OriginalAugment

    ds = blob_dataset(n=6, size=32)
    original, stack_image, mask = ds.images[0], 1.0 - ds.images[0], ds.masks[0]
    transform = OriginalAugment(PairAugment(AugmentConfig(enabled=False)), location_scale=True)
    new_original, new_stack, new_mask = transform(original, stack_image, mask, np.random.default_rng(3))
    assert not np.allclose(new_original, original)
    np.testing.assert_array_equal(new_stack, stack_image)
    np.testing.assert_array_equal(new_mask, mask)


def test_baseline_with_location_scale_trains(tmp_path, dataset):
    folder = run_train(tiny_config(tmp_path, stack=False, location_scale=True, steps=3), dataset=dataset)
    assert json.loads((folder / "summary.json").read_text())["steps"] == 3
