"""Every run says what it was made from (stack store, generator binding, data, code), and training
reads only the images of the store's current generator."""

from __future__ import annotations

import json
import logging
import subprocess
from importlib.metadata import version
from pathlib import Path

import pytest

from s2s2.pipeline.errors import StoreError
from s2s2.stages.evaluate import run_evaluate
from s2s2.stages.report import collect_runs, write_report
from s2s2.stages.train.datasets import StackPairDataset
from s2s2.stages.train.loop import run_train
from s2s2.stages.train.stack_val import load_stack_val
from s2s2.store.manifest import VAL_SPLIT
from s2s2.store.provenance import code_version, json_fingerprint
from s2s2.store.stack_store import StackStore
from test_store_roundtrip import one_source
from test_store_support import fake_stack
from test_train_support import blob_dataset, filled_store, tiny_config

K = 3
NOT_MATCHED = "no longer matched to its baseline"


def bound_store(path: Path, dataset, generator):
    """A complete store of `dataset` whose images `generator` made (bound as a `generate` run binds)."""
    store = filled_store(path, dataset, k=K)
    store.bind_generator(generator)
    return StackStore.open(path)


def test_training_serves_no_image_of_a_ks_an_unfinished_rebinding_is_replacing(tmp_path, caplog):
    ds = blob_dataset(n=24, size=16)
    old, new = one_source(k=K), one_source(k=K, steps=50)
    store = bound_store(tmp_path / "s.zarr", ds, old)
    assert StackPairDataset(ds, store.path, seed=0).provenance["ks_served"] == [0, 1, 2]
    # another generator's `generate --overwrite` has claimed the store and is clearing every k it
    # changes, but has not finished: the old images still carry their done flags
    store.claims.create_binding(store.current_binding().seq + 1, new.model_dump(mode="json"), ready=False,
                                clear_ks=[1])
    assert store.done_ledger().all() and not store.current_done()[:, 1].any()
    with pytest.raises(StoreError, match="66.7% generated"):
        StackPairDataset(ds, store.path, seed=0)
    with caplog.at_level(logging.WARNING):
        partial = StackPairDataset(ds, store.path, seed=0, allow_incomplete=True)
    assert {partial[i]["k"] for i in range(len(partial))} <= {0, 2}
    assert all(set(partial._choices[int(i)]) == {0, 2} for i in partial.samples)
    assert partial.provenance["ks_served"] == [0, 2] and NOT_MATCHED in caplog.text


def test_stack_val_reads_only_the_current_generators_images(tmp_path):
    ds = blob_dataset(n=24, size=16)
    store = StackStore.create(tmp_path / "stack-val.zarr", ds, k=K, split=VAL_SPLIT, shard_size=4)
    for shard in store.pending_shards():
        store.write_shard(shard, fake_stack(store.shard_samples(shard), K, (1, 16, 16)))
    store.bind_generator(one_source(k=K))
    cfg = tiny_config(tmp_path)
    cfg = cfg.model_copy(update={"store": cfg.store.model_copy(update={"val_path": str(store.path)})})
    assert len(load_stack_val(cfg, ds).images) == store.n_samples * K
    store.claims.create_binding(1, one_source(k=K, seed=5).model_dump(mode="json"), ready=False, clear_ks=[0])
    with pytest.raises(StoreError, match="stack-val store is 66.7% generated"):
        load_stack_val(cfg, ds)


def test_allow_incomplete_warns_only_when_it_shrinks_what_is_served(tmp_path, caplog):
    ds = blob_dataset(n=24, size=16)
    filled_store(tmp_path / "full.zarr", ds, k=K)
    filled_store(tmp_path / "part.zarr", ds, k=K, complete=False)
    with caplog.at_level(logging.WARNING):
        StackPairDataset(ds, tmp_path / "full.zarr", seed=0, allow_incomplete=True)
    assert NOT_MATCHED not in caplog.text
    with caplog.at_level(logging.WARNING):
        part = StackPairDataset(ds, tmp_path / "part.zarr", seed=0, allow_incomplete=True)
    assert NOT_MATCHED in caplog.text and f"serves {len(part)} of {len(ds.indices('train'))}" in caplog.text
    assert part.provenance["samples_served"] == len(part) < part.provenance["samples_train"]


def test_store_provenance_names_the_store_its_binding_and_the_controlnet(tmp_path):
    ds = blob_dataset(n=24, size=16)
    generator = one_source(k=K, controlnet_hash="cd" * 32)
    store = bound_store(tmp_path / "s.zarr", ds, generator)
    first = StackPairDataset(ds, store.path, seed=0).provenance
    assert first["path"] == str(store.path) and first["k"] == K and first["ks_served"] == [0, 1, 2]
    assert first["controlnet_hashes"] == ["cd" * 32] and first["dataset_fingerprint"] == ds.fingerprint()
    assert first["generator_binding"] == {"seq": 0, "ready": True,
                                          "fingerprint": json_fingerprint(generator.model_dump(mode="json"))}
    assert first["samples_served"] == first["samples_train"] == len(ds.indices("train"))
    # the manifest's fingerprint names what the stack holds: its timestamps do not change it, a new
    # generator does
    StackStore.open(store.path, "r+").refresh_status()
    assert StackPairDataset(ds, store.path, seed=0).provenance == first
    other = bound_store(tmp_path / "other.zarr", ds, one_source(k=K, steps=7)).path
    assert StackPairDataset(ds, other, seed=0).provenance["manifest_fingerprint"] != first["manifest_fingerprint"]


def test_code_version_is_the_package_and_the_checkout(tmp_path):
    code = code_version()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True)
    assert code["package"] == version("s2s2")
    assert code["git_commit"] == (head.stdout.strip() if head.returncode == 0 else None)
    assert code["git_dirty"] in ((True, False) if head.returncode == 0 else (None,))


def test_a_run_folder_says_which_stack_generator_data_and_code_it_came_from(tmp_path):
    ds = blob_dataset(n=24, size=32)
    generator = one_source(k=K, controlnet_hash="ef" * 32)
    bound_store(tmp_path / "stack.zarr", ds, generator)
    cfg = tiny_config(tmp_path, stack=True, steps=2, val_every=2, checkpoint_every=2)
    folder = run_train(cfg, dataset=ds)
    summary = json.loads((folder / "summary.json").read_text())["provenance"]
    assert summary["code"] == code_version() and summary["data"] == {"name": ds.name, "fingerprint": ds.fingerprint()}
    stack = summary["stack"]
    assert stack["path"] == cfg.store.path and stack["controlnet_hashes"] == ["ef" * 32] and stack["k"] == K
    assert stack["ks_served"] == [0, 1, 2] and stack["generator_binding"]["seq"] == 0

    baseline = run_train(tiny_config(tmp_path, stack=False, name="baseline", steps=2, val_every=2), dataset=ds)
    assert json.loads((baseline / "summary.json").read_text())["provenance"]["stack"] is None

    run_evaluate(cfg, datasets={"in_domain": (ds, ds.indices("test"))}, train_data=ds)
    evaluated = json.loads((folder / "metrics.json").read_text())["provenance"]
    assert evaluated["stack"] == stack and evaluated["trained_with_code"] == summary["code"]
    assert evaluated["data"] == summary["data"] and evaluated["test_data"] == {"in_domain": ds.fingerprint()}
    results, _ = write_report(cfg.run_dir, collect_runs(cfg.run_dir, [cfg.train.name]))
    assert json.loads((Path(cfg.run_dir) / "results.json").read_text())["runs"][0]["provenance"] == evaluated
