"""Stack store on real on-disk Zarr: round trip, manifest, mismatch refusal, generator binding."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from s2s2.pipeline.errors import StoreError
from s2s2.store.layout import to_unit_float
from s2s2.store.manifest import SCHEMA_VERSION, MANIFEST_KEY
from s2s2.store.manifest import StackSource
from s2s2.store.stack_store import GeneratorIdentity, StackGenerator, StackStore
from test_store_support import fake_stack, synthetic_dataset


def identity(**changes) -> GeneratorIdentity:
    base = dict(base_model="runs/default/tiny-base", controlnet_hash="ab" * 32, scheduler="DDIM", steps=20,
                guidance_scale=1.0, eta=0.0, prompt_template="{modality} with {classes}", seed=0, resolution=16)
    return GeneratorIdentity(**{**base, **changes})


def one_source(k: int = 2, **changes) -> StackGenerator:
    """A generator whose one ControlNet source fills all K images."""
    return StackGenerator(sources=(StackSource(k_start=0, k_stop=k, identity=identity(**changes)),))


def test_round_trip_layout_and_contents(tmp_path):
    ds = synthetic_dataset(n=15)
    train = ds.indices("train")
    store = StackStore.create(tmp_path / "s.zarr", ds, k=3, shard_size=2)
    assert (store.n_samples, store.k, store.num_shards) == (len(train), 3, 3)
    assert store.pending_shards() == [0, 1, 2] and store.complete_fraction() == 0.0
    assert store.ids == [ds.ids[i] for i in train]
    assert store.prompts == [ds.prompt(i) for i in train]
    np.testing.assert_array_equal(store.read_masks(range(store.n_samples)), ds.masks[train])
    originals = to_unit_float(store.read_originals(range(store.n_samples)))
    assert np.abs(originals - ds.images[train]).max() <= 0.5 / 255 + 1e-6
    m = store.manifest
    assert (m.dataset_fingerprint, m.image_shape, m.dtype, m.status) == (ds.fingerprint(), (1, 16, 16), "uint8", "initialised")

    images = {s: fake_stack(store.shard_samples(s), 3, (1, 16, 16)) for s in range(3)}
    store.write_shard(2, images[2])  # the short last shard (1 sample)
    store.write_shard(0, images[0])
    assert store.pending_shards() == [1]
    reopened = StackStore.open(tmp_path / "s.zarr")
    np.testing.assert_array_equal(reopened.read_shard_stack(0), images[0])
    np.testing.assert_array_equal(reopened.read_stack(4, 1), images[2][0, 1])
    assert reopened.done_ledger().sum() == 3 * 3  # samples 0, 1 and 4
    # zarr layout: one inner chunk per image, one shard of S samples x K images, one ledger chunk per shard
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    assert group["stack"].chunks == (1, 1, 1, 16, 16) and group["stack"].shards == (2, 3, 1, 16, 16)
    assert group["done"].chunks == (2, 3)
    assert group.attrs[MANIFEST_KEY]["schema_version"] == SCHEMA_VERSION
    with pytest.raises(StoreError, match="read-only"):
        reopened.write_shard(1, images[1])
    with pytest.raises(StoreError, match="shape"):
        store.write_shard(1, images[0][:, :2])


def test_float16_store_keeps_intensities(tmp_path):
    ds = synthetic_dataset(n=6)
    store = StackStore.create(tmp_path / "f.zarr", ds, k=2, shard_size=4, dtype="float16", compression="blosc-zstd")
    originals = store.read_originals([0, 1])
    assert originals.dtype == np.float16
    assert np.abs(originals.astype(np.float32) - ds.images[:2]).max() < 1e-3
    images = np.random.default_rng(0).random((2, 2, 1, 16, 16), dtype=np.float32)
    store.write_shard(0, images)
    assert np.abs(store.read_shard_stack(0).astype(np.float32) - images).max() < 1e-3


def test_create_reopens_matching_store_and_refuses_mismatch(tmp_path):
    ds = synthetic_dataset(n=12)
    path = tmp_path / "s.zarr"
    store = StackStore.create(path, ds, k=2, shard_size=2)
    store.write_shard(1, fake_stack(store.shard_samples(1), 2, (1, 16, 16)))
    again = StackStore.create(path, ds, k=2, shard_size=2)  # same parameters: keeps the finished shard
    assert 1 not in again.pending_shards()
    with pytest.raises(StoreError, match=r"k: store has 2, asked for 3.*--overwrite"):
        StackStore.create(path, ds, k=3, shard_size=2)
    other = synthetic_dataset(n=12, seed=1)
    with pytest.raises(StoreError, match="dataset_fingerprint"):
        StackStore.create(path, other, k=2, shard_size=2)
    fresh = StackStore.create(path, other, k=3, shard_size=2, overwrite=True)
    assert fresh.manifest.dataset_fingerprint == other.fingerprint() and fresh.complete_fraction() == 0.0


def test_open_refuses_missing_or_foreign_or_future_stores(tmp_path):
    with pytest.raises(StoreError, match="no stack store"):
        StackStore.open(tmp_path / "nothing.zarr")
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    with pytest.raises(StoreError, match="no s2s2 manifest"):
        StackStore.open(tmp_path / "plain.zarr")
    StackStore.create(tmp_path / "s.zarr", synthetic_dataset(n=6), k=1, shard_size=2)
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="r+")
    group.attrs[MANIFEST_KEY] = {**group.attrs[MANIFEST_KEY], "schema_version": SCHEMA_VERSION + 1}
    with pytest.raises(StoreError, match="schema_version"):
        StackStore.open(tmp_path / "s.zarr")


def write_as(store: StackStore, shard: int, ident: StackGenerator, writer: str = "run-a",
             replaces: int | None = None) -> bool:
    """One shard written through the claim protocol by the generator `ident`."""
    claim = store.claims.claim(shard, writer, seconds=60)
    assert claim is not None
    images = fake_stack(store.shard_samples(shard), store.k, (1, 16, 16))
    with store.claims.holding(claim, 60):
        return store.write_claimed_shard(claim, ident, replaces, images, stale_seconds=60)


def test_binding_happens_at_the_first_write_and_refuses_another_generator_unless_overwrite(tmp_path):
    ds = synthetic_dataset(n=12)
    store = StackStore.create(tmp_path / "s.zarr", ds, k=2, shard_size=2)
    assert store.check_generator(one_source(), "run-a") is None  # checking binds nothing
    assert store.current_binding() is None and store.manifest.generator is None
    assert write_as(store, 0, one_source())
    assert store.current_binding().seq == 0 and store.pending_shards() == [1]
    assert StackStore.open(tmp_path / "s.zarr").manifest.generator == one_source()
    assert store.check_generator(one_source(), "run-b") is None  # same identity: resume keeps the work
    with pytest.raises(StoreError, match=r"k 0-1 controlnet: steps: 20 -> 50.*--overwrite"):
        store.check_generator(one_source(steps=50), "run-b")
    with pytest.raises(StoreError, match=r"steps: 20 -> 50"):  # a writer that was not allowed to replace it
        write_as(store, 1, one_source(steps=50), writer="run-b")
    replaces = store.check_generator(one_source(steps=50), "run-b", overwrite=True)
    assert replaces == 0 and store.pending_for(one_source(steps=50)) == [0, 1]
    assert StackStore.open(tmp_path / "s.zarr").manifest.generator == one_source()  # not rebound before a write
    assert write_as(store, 1, one_source(steps=50), writer="run-b", replaces=replaces)
    reopened = StackStore.open(tmp_path / "s.zarr", "r+")
    assert reopened.manifest.generator.sources[0].identity.steps == 50 and reopened.current_binding().seq == 1
    assert reopened.pending_shards() == [0]  # the rebinding cleared shard 0, written by the old generator
    assert reopened.manifest.status == "generating"
    with pytest.raises(StoreError, match="another `generate --overwrite` took it over"):
        write_as(reopened, 0, one_source(), writer="run-a")  # the old run cannot write any more
    assert write_as(reopened, 0, one_source(steps=50), writer="run-b", replaces=replaces)
    assert reopened.refresh_status() == "complete"
    assert StackStore.open(tmp_path / "s.zarr").manifest.status == "complete"


def test_a_store_bound_before_claim_records_keeps_its_generator(tmp_path):
    ds = synthetic_dataset(n=12)
    store = StackStore.create(tmp_path / "s.zarr", ds, k=2, shard_size=2)
    store._update_manifest(generator=one_source(), status="generating")  # as older versions recorded it
    legacy = StackStore.open(tmp_path / "s.zarr", "r+")
    assert legacy.current_binding().seq == -1 and legacy.bound_to(one_source())
    with pytest.raises(StoreError, match="seed: 0 -> 3"):
        legacy.check_generator(one_source(seed=3), "run-a")
    assert write_as(legacy, 0, one_source())
    assert legacy.pending_shards() == [1]


def test_a_schema_1_store_reads_as_one_controlnet_source(tmp_path):
    store = StackStore.create(tmp_path / "s.zarr", synthetic_dataset(n=12), k=2, shard_size=2)
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="r+")
    group.attrs[MANIFEST_KEY] = {**group.attrs[MANIFEST_KEY], "schema_version": 1,
                                 "generator": identity().model_dump(exclude={"kind"})}  # as schema 1 wrote it
    generator = StackStore.open(tmp_path / "s.zarr").manifest.generator
    assert generator == one_source(k=store.k) and generator.source_of_k() == ["controlnet", "controlnet"]
