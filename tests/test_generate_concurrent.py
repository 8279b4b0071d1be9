"""Several `s2s2 generate` processes on one store (the real CLI, each with its own dask cluster):
they split the shards, and a second generator is refused or, when forced, replaces the first
without mixing."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from s2s2.pipeline.data.prepare import prepare_dataset
from s2s2.pipeline.errors import StoreError
from s2s2.stages.generate import run_generate
from s2s2.store.claims import ClaimBook
from s2s2.store.stack_store import StackStore
from test_generate_support import Cli, load_project, reference_stack, toy_project


def images_generated(stderr: str) -> int:
    """What one run reports it generated (0 if it generated nothing)."""
    found = re.findall(r"generated (\d+) images in", stderr)
    return int(found[-1]) if found else 0


def test_two_generate_runs_split_the_shards_and_equal_one_run(tmp_path, toy_generator):
    config = toy_project(tmp_path, toy_generator, steps=20, claim_seconds=2)
    cfg = load_project(config)
    dataset = prepare_dataset(cfg.data)
    store = StackStore.create(cfg.store.path, dataset, k=cfg.store.k, shard_size=cfg.store.shard_size)
    # Hold every shard under a third name until both runs are up and waiting, so they start together.
    gate = ClaimBook(cfg.store.path)
    gates = [gate.claim(shard, "test-gate", seconds=600) for shard in range(store.num_shards)]
    runs = [Cli("generate", "--config", str(config), cwd=tmp_path) for _ in range(2)]
    for run in runs:
        assert run.wait_for("waiting for"), "".join(run.lines)[-3000:]
    for claim in gates:
        gate.release(claim)
    finished = [run.finish() for run in runs]
    for code, stderr in finished:
        assert code == 0, stderr[-3000:]
    counts = [images_generated(stderr) for _, stderr in finished]
    assert sum(counts) == store.n_samples * store.k  # every image generated exactly once in total
    assert all(counts), f"one run did all the work: {counts}"
    filled = StackStore.open(cfg.store.path)
    assert filled.done_ledger().all() and filled.manifest.status == "complete"
    stack = np.asarray(filled._group["stack"][:])
    assert np.array_equal(stack, reference_stack(cfg, dataset, tmp_path / "reference.zarr"))


def test_a_second_generator_is_refused_while_the_first_runs_and_replaces_it_only_when_forced(tmp_path, toy_generator):
    config = toy_project(tmp_path, toy_generator, steps=300, claim_seconds=3)  # slow: ~3 s of CPU per shard
    cfg = load_project(config)
    first = Cli("generate", "--config", str(config), cwd=tmp_path)
    path = cfg.store.path
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and first.proc.poll() is None:
        try:
            if StackStore.open(path).complete_fraction() > 0:
                break
        except Exception:  # the store is still being created
            pass
        time.sleep(0.1)
    second = cfg.model_copy(update={"generate": cfg.generate.model_copy(update={"seed": 1, "steps": 3})})
    dataset = prepare_dataset(cfg.data)
    with pytest.raises(StoreError, match="another `s2s2 generate` is writing this store.*--force"):
        run_generate(second, dataset, overwrite=True)
    assert first.proc.poll() is None, "the first run ended before the check: make it slower"
    store = StackStore.open(path)
    binding = store.current_binding()
    assert binding.seq == 0 and binding.identity["sources"][0]["identity"]["seed"] == 0  # untouched

    forced = Cli("generate", "--config", str(config), "--overwrite", "--force", "--set", "generate.seed=1",
                 "--set", "generate.steps=3", cwd=tmp_path)
    code, stderr = forced.finish()
    assert code == 0, stderr[-3000:]
    first_code, first_stderr = first.finish()
    assert first_code == 2 and "took it over" in first_stderr, first_stderr[-3000:]
    assert "Traceback" not in first_stderr  # one message, not a worker's log
    replaced = StackStore.open(path)
    assert replaced.done_ledger().all() and replaced.manifest.generator.sources[0].identity.seed == 1
    assert replaced.current_binding().seq == 1
    reference = reference_stack(second, dataset, tmp_path / "reference.zarr")
    assert np.array_equal(np.asarray(replaced._group["stack"][:]), reference)  # nothing of the first generator left


def test_generate_on_an_external_scheduler_with_workers_started_elsewhere(tmp_path, toy_generator):
    """The README's cluster recipe with the relative paths of configs/default.yaml: the scheduler and
    both workers run in another directory, so every path a task needs must arrive absolute."""
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    elsewhere.mkdir()
    config = toy_project(project, None, steps=2)
    shutil.copytree(toy_generator, project / "run" / "generator")  # {run_dir}/generator, relative
    cfg = load_project(config)
    dask = Path(sys.executable).parent / "dask"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    address_file = elsewhere / "scheduler.json"
    started = [subprocess.Popen([str(dask), "scheduler", "--port", "0", "--scheduler-file", str(address_file)],
                                cwd=elsewhere, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 120
        while not address_file.is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        address = json.loads(address_file.read_text())["address"]
        started += [subprocess.Popen([str(dask), "worker", address, "--nthreads", "1", "--nworkers", "1",
                                      "--no-dashboard", "--name", f"elsewhere-{i}"], cwd=elsewhere, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(2)]
        run = Cli("generate", "--config", "config.yaml", "--dask-scheduler", address, cwd=project)
        code, stderr = run.finish()
    finally:
        for process in reversed(started):
            process.terminate()
        for process in started:
            process.wait(timeout=60)
    assert code == 0, stderr[-3000:]
    assert "on 2 worker(s)" in stderr  # both external workers generated shards
    assert "dask dashboard" not in stderr  # this scheduler serves no dashboard (no bokeh)
    store = StackStore.open(cfg.store.path)
    assert store.done_ledger().all() and store.manifest.status == "complete"
    stack = np.asarray(store._group["stack"][:])
    assert np.array_equal(stack, reference_stack(cfg, prepare_dataset(cfg.data), tmp_path / "reference.zarr"))
