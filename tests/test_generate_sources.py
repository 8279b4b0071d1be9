"""Stack sources through `generate`: the synth source and mixed stores, on real stores filled by real
dask worker processes; per-source binding and resume; bad source settings exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from s2s2.pipeline.config.project import ProjectConfig
from s2s2.pipeline.data.prepared import PreparedDataset
from s2s2.pipeline.errors import ConfigError, StoreError
from s2s2.stages.finetune import run_finetune
from s2s2.stages.generate import ShardTask, generate_shard, run_generate, stack_generator
from s2s2.store.inspect import column_titles, format_summary, summarise
from s2s2.store.stack_store import StackStore
from fixtures_toy import toy_dataset, toy_project_config

ROOT = Path(__file__).resolve().parents[1]
MIXED = {"kind": "mixed", "sources": [{"kind": "controlnet"}, {"kind": "synth"}]}


def _stack(path: str) -> np.ndarray:
    return np.asarray(StackStore.open(path)._group["stack"][:])


def _fill_in_this_process(cfg: ProjectConfig, dataset: PreparedDataset) -> np.ndarray:
    """The whole stack of `cfg`, shard by shard in this process (no dask): a second, independent run."""
    sc = cfg.store
    store = StackStore.create(sc.path, dataset, k=sc.k, shard_size=sc.shard_size)
    resolution = dataset.image_shape[-1]
    generator = stack_generator(cfg, store.k, store.manifest.prompt_template, resolution)
    store.bind_generator(generator)
    task = ShardTask(store_path=str(sc.path), storage_options={}, generator_dir=cfg.generate.generator_dir or "",
                     settings=cfg.generate, resolution=resolution, attention="auto", generator=generator,
                     writer="reference")
    for shard in range(store.num_shards):
        generate_shard(task, shard)
    return _stack(sc.path)


@pytest.fixture(scope="module")
def generator(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny fine-tuned ControlNet pipeline shared by this module's tests."""
    return run_finetune(toy_project_config(str(tmp_path_factory.mktemp("gen"))), toy_dataset())


def test_synth_fills_the_default_data_in_worker_processes_reproducibly(tmp_path, icbm152_dataset):
    cfg = toy_project_config(str(tmp_path / "a"), generator={"kind": "synth"}, store={"k": 2, "shard_size": 16})
    results = run_generate(cfg, icbm152_dataset)
    store = StackStore.open(cfg.store.path)
    assert store.done_ledger().all() and store.manifest.status == "complete"
    assert not any(r.worker.endswith(f":{os.getpid()}") for r in results)  # a dask worker process made them
    assert all(r.sources == ("synth",) for r in results)
    (source,) = store.manifest.generator.sources
    assert (source.kind, source.k_start, source.k_stop) == ("synth", 0, 2)
    assert source.identity.params == cfg.generator.synth.model_dump(mode="json")

    again = toy_project_config(str(tmp_path / "b"), generator={"kind": "synth"}, store={"k": 2, "shard_size": 8})
    assert _stack(cfg.store.path).tobytes() == _fill_in_this_process(again, icbm152_dataset).tobytes()

    complete = _stack(cfg.store.path)
    group = zarr.open_group(cfg.store.path, mode="r+")
    group["stack"][16:32] = 0  # shard 1 lost, as if its writer died before its done flags
    group["done"][16:32] = False
    resumed = run_generate(cfg, icbm152_dataset)
    assert [r.shard for r in resumed] == [1] and _stack(cfg.store.path).tobytes() == complete.tobytes()

    summary = summarise(store)
    fidelity, look = summary["mask_fidelity"], summary["appearance"]
    assert fidelity["ceiling"]["dice_own_adaptive"] > fidelity["ceiling"]["dice_chance_adaptive"] + 0.3
    assert fidelity["normalised"]["adaptive"] > 0.8  # follows the masks about as well as the originals do
    assert look["order_changed_fraction"] > 0.5  # and spans other contrasts than T1's
    text = format_summary(summary)
    assert "k 0-1 synth: labels-to-image, seed 0" in text and "normalised  " in text and "ceiling     " in text


def test_mixed_store_tags_each_k_and_redraws_only_a_changed_source(tmp_path, generator):
    dataset = toy_dataset()
    config = {"generator_dir": str(generator)}
    mixed = toy_project_config(str(tmp_path / "mixed"), store={"k": 4}, generator=MIXED, generate=config)
    run_generate(mixed, dataset)
    store = StackStore.open(mixed.store.path)
    assert store.manifest.generator.source_of_k() == ["controlnet", "controlnet", "synth", "synth"]
    assert column_titles(store)[2:] == ["k=0\ncontrolnet", "k=1\ncontrolnet", "k=2\nsynth", "k=3\nsynth"]
    summary = summarise(store)
    assert [(p["kind"], p["k_start"], p["k_stop"]) for p in summary["by_source"]] == [("controlnet", 0, 2),
                                                                                       ("synth", 2, 4)]
    assert all(p["mask_fidelity"]["n_images"] == 2 * store.n_samples for p in summary["by_source"])
    assert "source      k 2-3 synth:" in format_summary(summary)

    # each source draws the same pixels as in a store of its own, made by another run
    alone = toy_project_config(str(tmp_path / "controlnet"), store={"k": 2}, generate=config)
    synth = toy_project_config(str(tmp_path / "synth"), store={"k": 4}, generator={"kind": "synth"})
    before = _stack(mixed.store.path)
    assert before[:, :2].tobytes() == _fill_in_this_process(alone, dataset).tobytes()
    assert before[:, 2:].tobytes() == _fill_in_this_process(synth, dataset)[:, 2:].tobytes()

    changed = toy_project_config(str(tmp_path / "mixed"), store={"k": 4}, generate=config,
                                 generator={**MIXED, "synth": {"separation": 0.9}})
    with pytest.raises(StoreError, match=r"k 2-3 synth: params"):
        run_generate(changed, dataset)
    results = run_generate(changed, dataset, overwrite=True)
    assert len(results) == store.num_shards and all(r.sources == ("synth",) for r in results)
    after = _stack(mixed.store.path)
    assert after[:, :2].tobytes() == before[:, :2].tobytes()  # the ControlNet's images are kept
    assert not np.array_equal(after[:, 2:], before[:, 2:])
    assert StackStore.open(mixed.store.path).manifest.generator.sources[1].identity.params["separation"] == 0.9


def test_k_that_cannot_be_split_is_refused_before_any_work(tmp_path):
    cfg = toy_project_config(str(tmp_path), store={"k": 3}, generator=MIXED)
    with pytest.raises(ConfigError, match=r"store.k=3 cannot be split 1:1 .*multiple of 2"):
        run_generate(cfg, toy_dataset())
    assert not (tmp_path / "stack.zarr").exists()
    weighted = toy_project_config(str(tmp_path), store={"k": 3},
                                  generator={"kind": "mixed", "sources": [{"kind": "synth", "share": 2},
                                                                          {"kind": "controlnet"}]})
    assert weighted.generator.k_ranges(3) == [("synth", 0, 2), ("controlnet", 2, 3)]


@pytest.mark.parametrize("args, message", [
    (["--set", "generator.kind=gan"], "generator.kind = 'gan'"),
    (["--k", "3", "--set", "generator.kind=mixed", "--set", "generator.sources=[{kind: controlnet}, {kind: synth}]"],
     "store.k=3 cannot be split 1:1"),
    (["--set", "generator.kind=mixed", "--set", "generator.sources=[{kind: synth, share: -1}]"], "share"),
    (["--set", "generator.sources=[{kind: synth}]"], "with generator.kind: mixed only"),
    (["--set", "generator.synth.corruption.noise_p=-0.5"], "noise_p"),
])
def test_bad_source_settings_exit_2_with_a_message(args: list[str], message: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "s2s2.cli", "generate", *args], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert message in out.stderr and "Traceback" not in out.stderr


def test_finetune_has_nothing_to_do_for_a_synth_generator(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "s2s2.cli", "finetune", "--set", f"run_dir={tmp_path}",
                          "--set", "generator.kind=synth"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "nothing to fine-tune" in out.stdout
    assert not (tmp_path / "tiny-base").exists() and not (tmp_path / "generator").exists()
