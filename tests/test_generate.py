"""Bulk generation over dask: real worker processes fill a real Zarr store; kill and resume; bad inputs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from s2s2.pipeline.errors import ConfigError, StoreError
from s2s2.stages.generate import run_generate
from s2s2.store.stack_store import StackStore
from fixtures_toy import toy_dataset, toy_project_config
from test_generate_support import reference_stack

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def generator(toy_generator: Path) -> Path:
    return toy_generator


def _config(tmp_path: Path, generator: Path, **generate):
    return toy_project_config(str(tmp_path), generate={"generator_dir": str(generator), **generate})


def test_two_worker_processes_fill_every_shard_exactly_once(tmp_path, generator):
    dataset = toy_dataset()
    cfg = _config(tmp_path, generator, workers=2)
    results = run_generate(cfg, dataset)
    store = StackStore.open(cfg.store.path)
    shards = [r.shard for r in results]
    assert sorted(shards) == list(range(store.num_shards)) and len(set(shards)) == len(shards)
    assert store.done_ledger().all() and store.manifest.status == "complete"
    workers = {r.worker for r in results}
    assert len(workers) == 2 and not any(w.endswith(f":{os.getpid()}") for w in workers)
    identity = store.manifest.generator.sources[0].identity
    assert len(store.manifest.generator.sources) == 1 and identity.scheduler == "unipc" and identity.steps == 2 and len(identity.controlnet_hash) == 64
    stack = np.asarray(store._group["stack"][:])
    assert np.array_equal(stack, reference_stack(cfg, dataset, tmp_path / "reference.zarr"))
    assert run_generate(cfg, dataset) == []  # complete: a rerun does nothing
    reseeded = cfg.model_copy(update={"generate": cfg.generate.model_copy(update={"seed": 1})})
    with pytest.raises(StoreError, match="seed: 0 -> 1"):  # another generator must not mix in silently
        run_generate(reseeded, dataset)


_CHILD = """
import sys
from fixtures_toy import toy_dataset, toy_project_config
from s2s2.stages.generate import run_generate
if __name__ == "__main__":
    cfg = toy_project_config(sys.argv[1], store={"shard_size": 1},
                             generate={"generator_dir": sys.argv[2], "steps": 6, "claim_seconds": 3})
    run_generate(cfg, toy_dataset(n=16))
"""


def test_sigkill_then_resume_retakes_the_killed_shard_after_expiry_and_gives_the_same_store(tmp_path, generator):
    dataset = toy_dataset(n=16)
    cfg = toy_project_config(str(tmp_path), store={"shard_size": 1},
                             generate={"generator_dir": str(generator), "steps": 6, "claim_seconds": 3})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path), str(generator)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    held: dict = {}
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and child.poll() is None:
            if (tmp_path / "stack.zarr" / "zarr.json").is_file():
                try:
                    store = StackStore.open(cfg.store.path)
                except StoreError:  # manifest not written yet
                    continue
                if 0 < store.complete_fraction() < 1:
                    held = store.claims.live_claims(store.pending_shards())  # last, right before the kill
                    if held:
                        break
            time.sleep(0.05)
    finally:
        os.killpg(child.pid, signal.SIGKILL)  # the generate process and its dask workers, mid-shard
        child.wait()
    killed_at = time.time()
    store = StackStore.open(cfg.store.path)
    pending = store.pending_shards()
    # A shard whose write completed between the look and the kill is done, with its claim not yet
    # released: only the held shards that are still unfinished are the killed writer's.
    held = {shard: claim for shard, claim in held.items() if shard in pending}
    assert held, "the child was not caught holding a claim on an unfinished shard"
    assert 0 < store.complete_fraction() < 1
    dead = {shard: store.claims.current(shard) for shard in held}  # as the killed writer left them
    assert all(claim.live(killed_at) for claim in dead.values())
    results = run_generate(cfg, dataset)
    assert sorted(r.shard for r in results) == pending  # only the unfinished shards were redone
    for shard, claim in dead.items():  # retaken by the new run, and only once the dead claim had lapsed
        retaken = store.claims.current(shard)
        assert retaken.seq == claim.seq + 1 and retaken.writer != claim.writer and retaken.released
        assert retaken.claimed >= claim.expires
    resumed = StackStore.open(cfg.store.path)
    assert resumed.done_ledger().all()
    stack = np.asarray(resumed._group["stack"][:])
    assert np.array_equal(stack, reference_stack(cfg, dataset, tmp_path / "reference.zarr"))


def test_store_of_another_dataset_is_refused(tmp_path, generator):
    cfg = _config(tmp_path, generator)
    StackStore.create(cfg.store.path, toy_dataset(seed=0), k=cfg.store.k, shard_size=cfg.store.shard_size)
    with pytest.raises(StoreError, match="dataset_fingerprint"):
        run_generate(cfg, toy_dataset(seed=5))


def test_missing_generator_and_bad_k_are_clear_errors(tmp_path):
    cfg = toy_project_config(str(tmp_path), generate={"generator_dir": str(tmp_path / "nothing")})
    with pytest.raises(ConfigError, match="has no model_index.json"):
        run_generate(cfg, toy_dataset())
    out = subprocess.run([sys.executable, "-m", "s2s2.cli", "generate", "--k", "0"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 2 and "store.k = 0" in out.stderr and "greater than or equal to 1" in out.stderr
