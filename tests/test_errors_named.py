"""Every failure a user met gives one message naming the file or value and a fix that works, exit
status 2, never a traceback; nothing is ever unpickled (an evil pickle would leave a marker file)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from s2s2.pipeline.config.base import load_config
from s2s2.pipeline.config.project import ProjectConfig
from s2s2.pipeline.errors import ConfigError, S2S2Error, StoreError
from s2s2.stages.evaluate import run_evaluate
from s2s2.stages.generate import run_generate, stack_generator
from s2s2.stages.train.loop import run_train
from s2s2.store.inspect import verify
from s2s2.store.stack_store import StackStore
from fixtures_toy import toy_dataset, toy_project_config
from test_generate_support import toy_project
from test_store_support import fake_stack, synthetic_dataset
from test_train_support import blob_dataset, filled_store, tiny_config

ROOT = Path(__file__).resolve().parents[1]


def s2s2(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "s2s2.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def refused(result: subprocess.CompletedProcess, *texts: str) -> None:
    """Exit 2 with one message holding every text, and no traceback."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    for text in texts:
        assert text in result.stderr, (text, result.stderr[-3000:])


class Evil:
    """Unpickling this creates `marker`: proof that a loader ran code from a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def small_store(path: Path) -> StackStore:
    store = StackStore.create(path, synthetic_dataset(n=24), k=2, shard_size=2)  # 8 samples, 4 shards
    for shard in range(store.num_shards):
        store.write_shard(shard, fake_stack(store.shard_samples(shard), 2, (1, 16, 16)))
    return store


def damage(path: Path) -> None:
    path.write_bytes(b"not a zstd frame" * 4)


DIMENSIONS = {"originals": 4, "masks": 3, "stack": 5, "done": 2}


def shard_file(store: Path, array: str, shard: int) -> str:
    """The file of one shard of `array`, by the store's layout (one shard along the sample axis)."""
    return str(store / array / "c" / str(shard) / Path(*["0"] * (DIMENSIONS[array] - 1)))


# --- configuration --------------------------------------------------------------------------------


def test_a_binary_config_file_is_named(tmp_path):
    binary = tmp_path / "model.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    refused(s2s2("stack", "inspect", str(tmp_path / "x.zarr"), "--config", str(binary)),
            f"config file {binary} is not a text file")


def test_config_errors_name_where_the_bad_value_came_from(tmp_path):
    config = tmp_path / "exp.yaml"
    config.write_text("train:\n  steps: -3\n")
    with pytest.raises(ConfigError) as err:
        load_config(ProjectConfig, config, overrides={"store.k": 0}, dotted=["train.lr=fast"])
    message = str(err.value)
    assert f"train.steps = -3 (in {config})" in message
    assert "store.k = 0 (from a command-line option)" in message
    assert "train.lr = 'fast' (from --set train.lr=fast)" in message
    assert f"in {config}:" not in message  # the file is not blamed for the command line's values


# --- the stack store ------------------------------------------------------------------------------


def test_stack_init_on_an_existing_plain_file_is_refused_and_the_file_kept(tmp_path, toy_generator):
    config = toy_project(tmp_path, toy_generator)
    plain = tmp_path / "notes.txt"
    plain.write_text("my notes")
    refused(s2s2("stack", "init", str(plain), "--config", str(config), cwd=tmp_path),
            f"{plain} is a file, not a stack store")
    assert plain.read_text() == "my notes"


def test_truncated_zarr_json_is_named_by_inspect_and_generate(tmp_path, toy_generator):
    cfg = toy_project_config(str(tmp_path), store={"shard_size": 2}, generate={"generator_dir": str(toy_generator)})
    StackStore.create(cfg.store.path, toy_dataset(), k=cfg.store.k, shard_size=2)
    metadata = Path(cfg.store.path) / "zarr.json"
    metadata.write_bytes(metadata.read_bytes()[:100])
    refused(s2s2("stack", "inspect", cfg.store.path), f"{metadata}: the stack store's metadata cannot be read",
            "s2s2 stack init --overwrite")
    with pytest.raises(StoreError, match=f"{metadata}: the stack store's metadata cannot be read"):
        run_generate(cfg, toy_dataset())
    array_metadata = Path(cfg.store.path) / "stack" / "zarr.json"
    metadata.unlink()
    StackStore.create(cfg.store.path, toy_dataset(), k=cfg.store.k, shard_size=2, overwrite=True)  # the fix
    array_metadata.write_text("{")
    with pytest.raises(StoreError, match=f"{array_metadata}: the stack store's metadata cannot be read"):
        StackStore.open(cfg.store.path)


def test_verify_names_a_damaged_ledger_and_masks_shard_with_a_fix_that_works(tmp_path):
    path = tmp_path / "s.zarr"
    small_store(path)
    ledger, masks = shard_file(path, "done", 1), shard_file(path, "masks", 2)
    damage(Path(ledger))
    result = s2s2("stack", "inspect", str(path), "--verify")
    refused(result, "verification failed in shard(s) 1", f"delete {shard_file(path, 'stack', 1)}, {ledger}")
    assert f"shard 1: done cannot be decoded ({ledger})" in result.stdout
    for named in result.stderr.split("fix: delete ")[1].split(" (the shard")[0].split(", "):
        Path(named).unlink()  # follow the fix
    assert StackStore.open(path).pending_shards() == [1] and not [p for p in verify(StackStore.open(path)) if p.fatal]

    damage(Path(masks))
    result = s2s2("stack", "inspect", str(path), "--verify")
    refused(result, "verification failed in shard(s) 2", "`s2s2 stack init --overwrite`")
    assert f"shard 2: masks cannot be decoded ({masks})" in result.stdout
    assert "re-run `s2s2 generate`" not in result.stderr  # generate cannot restore masks


def test_damaged_originals_are_restored_by_the_fix_offered(tmp_path):
    path = tmp_path / "s.zarr"
    small_store(path)
    damage(Path(shard_file(path, "originals", 3)))
    result = s2s2("stack", "inspect", str(path), "--verify")
    refused(result, "verification failed in shard(s) 3", "re-create the store with `s2s2 stack init --overwrite`")
    dataset = synthetic_dataset(n=24)
    rebuilt = StackStore.create(path, dataset, k=2, shard_size=2, overwrite=True)  # what `stack init --overwrite` runs
    expected = dataset.images[dataset.indices("train")]
    np.testing.assert_allclose(rebuilt.read_originals(range(rebuilt.n_samples)) / 255.0, expected, atol=0.5 / 255)
    assert rebuilt.pending_shards() == [0, 1, 2, 3]  # `s2s2 generate` fills the stack again


def test_a_damaged_shard_met_during_training_names_the_store_and_the_shard(tmp_path):
    dataset = blob_dataset(n=24, size=32)
    filled_store(tmp_path / "stack.zarr", dataset, k=3)
    stack_file = shard_file(tmp_path / "stack.zarr", "stack", 2)
    damage(Path(stack_file))
    with pytest.raises(StoreError) as err:
        run_train(tiny_config(tmp_path, steps=4, val_every=100, checkpoint_every=100), dataset=dataset)
    message = str(err.value)
    assert f"{tmp_path / 'stack.zarr'}: shard 2 of 'stack' (stack/c/2/0/0/0/0) is damaged" in message
    assert f"fix: delete {stack_file}, {shard_file(tmp_path / 'stack.zarr', 'done', 2)}" in message
    assert "then run `s2s2 generate`" in message


# --- checkpoints ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A baseline run of 4 steps stopped after 2, with a checkpoint and a resume state."""
    folder = tmp_path_factory.mktemp("trained")
    dataset = blob_dataset(n=24, size=32)
    run_train(tiny_config(folder, stack=False, steps=4, checkpoint_every=2), stop_after=2, dataset=dataset)
    return folder, dataset


def test_a_garbage_or_pickled_checkpoint_is_refused_without_unpickling(trained, tmp_path):
    folder, dataset = trained
    cfg = tiny_config(folder, stack=False)
    marker = tmp_path / "unpickled"
    pickled = tmp_path / "model.pt"
    torch.save({"weights": Evil(marker)}, pickled)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(os.urandom(4096))
    truncated = tmp_path / "truncated.safetensors"
    whole = (folder / "run" / "train" / "s2s2" / "model.safetensors").read_bytes()
    truncated.write_bytes(whole[: len(whole) // 2])
    for checkpoint in (pickled, garbage, truncated):
        with pytest.raises(S2S2Error, match=f"checkpoint {checkpoint} is not a readable safetensors file"):
            run_evaluate(cfg, checkpoint=checkpoint, datasets={"in_domain": (dataset, dataset.indices("test"))})
    assert not marker.exists()


def test_a_garbage_or_pickled_resume_state_is_refused_without_unpickling(trained, tmp_path):
    folder, dataset = trained
    run = folder / "run" / "train" / "s2s2"
    state = run / "state.pt"
    good = state.read_bytes()
    marker = tmp_path / "unpickled"
    cfg = tiny_config(folder, stack=False, steps=4, checkpoint_every=2)
    try:
        # garbage that torch's reader fails on in each of its ways: UnpicklingError, IndexError,
        # UnicodeDecodeError, KeyError, RuntimeError (seeds found by trying), and fresh random bytes
        garbage = [np.random.default_rng(seed).bytes(2048) for seed in (0, 17, 54, 62, 941)] + [os.urandom(2048)]
        for content, expected in ([(g, "cannot be loaded safely") for g in garbage]
                                  + [(None, "cannot be loaded safely"),
                                     ({"step": 2}, "is not an s2s2 training state")]):
            if content is None:
                torch.save({"step": Evil(marker)}, state)
            elif isinstance(content, dict):
                torch.save(content, state)
            else:
                state.write_bytes(content)
            with pytest.raises(S2S2Error, match=f"cannot resume: {state} {expected}.*without --resume"):
                run_train(cfg, resume=True, dataset=dataset)
        assert not marker.exists()
    finally:
        state.write_bytes(good)


# --- generator folders ----------------------------------------------------------------------------


def test_truncated_or_pickled_generator_weights_are_named_before_any_work(tmp_path, toy_generator):
    marker = tmp_path / "unpickled"
    broken = tmp_path / "truncated"
    shutil.copytree(toy_generator, broken)
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    cfg = toy_project_config(str(tmp_path / "a"), generate={"generator_dir": str(broken)})
    with pytest.raises(S2S2Error, match=f"generator weights {weights} cannot be read.*truncated or corrupt"):
        run_generate(cfg, toy_dataset())

    pickled = tmp_path / "pickled"
    shutil.copytree(toy_generator, pickled)
    (pickled / "controlnet" / "diffusion_pytorch_model.safetensors").unlink()
    torch.save({"weights": Evil(marker)}, pickled / "controlnet" / "diffusion_pytorch_model.bin")
    cfg = toy_project_config(str(tmp_path / "b"), generate={"generator_dir": str(pickled)})
    with pytest.raises(S2S2Error, match=r"controlnet/ holds only pickled weights \(diffusion_pytorch_model.bin\)"):
        run_generate(cfg, toy_dataset())
    assert not marker.exists()
    assert not Path(cfg.store.path).exists()  # refused before the store was touched


def test_a_failed_generate_does_not_bind_the_store(tmp_path, toy_generator):
    broken = tmp_path / "broken"
    shutil.copytree(toy_generator, broken)
    (broken / "model_index.json").write_text('{"_class_name": "StableDiffusionControlNetPipeline", ')  # truncated
    dataset = toy_dataset(n=8)
    cfg = toy_project_config(str(tmp_path), generate={"generator_dir": str(broken)})
    with pytest.raises(S2S2Error, match="cannot load the generator"):  # fails on the worker, before any write
        run_generate(cfg, dataset)
    store = StackStore.open(cfg.store.path, "r+")
    assert store.current_binding() is None and store.manifest.generator is None
    assert store.pending_shards() == list(range(store.num_shards))
    good = toy_project_config(str(tmp_path), generate={"generator_dir": str(toy_generator)})
    generator = stack_generator(good, store.k, store.manifest.prompt_template, 16)
    assert store.check_generator(generator, "next-run") is None  # not refused as "filled by another generator"
