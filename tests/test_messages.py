"""Messages that used to mislead: each names the real cause and a fix that exists."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from fixtures_toy import toy_dataset, toy_project_config
from test_store_roundtrip import one_source, write_as
from test_store_support import synthetic_dataset
from test_train_support import blob_dataset, tiny_config

from s2s2.cli import run
from s2s2.pipeline.checkpoint import load_state
from s2s2.pipeline.errors import S2S2Error, StoreError
from s2s2.pipeline.generator.paths import finetune_work_dir
from s2s2.stages.finetune import run_finetune
from s2s2.stages.train.loop import run_train
from s2s2.store.stack_store import StackStore

REPO_CACHE = Path(__file__).resolve().parents[1] / ".cache" / "s2s2"


class Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickled_state_is_refused_without_pytorchs_advice_to_unpickle(tmp_path) -> None:
    """torch's own message says to retry with weights_only=False: the one thing never to do here."""
    state, marker = tmp_path / "state.pt", tmp_path / "unpickled"
    torch.save({"step": Evil(marker)}, state)
    with pytest.raises(S2S2Error) as refused:
        load_state(state, ["step"], "cannot resume", "fix: train again without --resume")
    message = str(refused.value)
    assert "pickled Python objects" in message and "weights_only" not in message and "can still be loaded" not in message
    assert not marker.exists()


def test_the_concurrent_writer_refusal_names_the_run_not_its_dask_worker(tmp_path) -> None:
    store = StackStore.create(tmp_path / "s.zarr", synthetic_dataset(n=8), k=2, shard_size=2)
    assert write_as(store, 0, one_source())
    claim = store.claims.claim(1, "otherhost:4242:ab12cd34", seconds=60)  # held by another run's dask worker
    assert claim is not None and claim.worker.endswith(f":{os.getpid()}")
    with pytest.raises(StoreError) as refused:
        store.check_generator(one_source(steps=50), "this-run", overwrite=True)
    message = str(refused.value)
    assert "run otherhost pid 4242" in message and f"pid {os.getpid()}" not in message


@pytest.mark.parametrize("command", [["train", "--baseline", "--steps", "1"], ["stack", "init"], ["data", "prepare"],
                                     ["generate", "--set", "generator.kind=synth"]])
@pytest.mark.parametrize("where", ["proc", "file"])
def test_an_unusable_run_dir_or_cache_dir_is_one_line_exit_2(command, where, tmp_path, monkeypatch, capsys) -> None:
    """run_dir (cache_dir for `data prepare`) under /proc or below a plain file: what and where, exit 2."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("S2S2_DEBUG", raising=False)
    plain = tmp_path / "a-file"
    plain.write_text("not a folder")
    target = "/proc/s2s2-run" if where == "proc" else str(plain)
    key = "data.cache_dir" if command[0] == "data" else "run_dir"
    cache = [] if key == "data.cache_dir" else ["--set", f"data.cache_dir={REPO_CACHE}"]
    status = run([*command, "--set", f"{key}={target}", *cache])
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and target in err and "fix:" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def _one_line_without_torch_advice(err: S2S2Error) -> str:
    message = str(err)
    assert "weights_only" not in message and "Traceback" not in message
    return message


def test_train_resume_on_a_truncated_last_checkpoint_offers_a_fix_train_has(tmp_path) -> None:
    """It used to say "pass the model.safetensors ...", which `train --resume` has no option for."""
    dataset = blob_dataset(n=24, size=32)
    cfg = tiny_config(tmp_path, stack=False, steps=4, checkpoint_every=2)
    folder = run_train(cfg, stop_after=2, dataset=dataset)
    last = folder / "last.safetensors"
    last.write_bytes(last.read_bytes()[:200])
    with pytest.raises(S2S2Error) as refused:
        run_train(cfg, resume=True, dataset=dataset)
    message = _one_line_without_torch_advice(refused.value)
    assert str(last) in message and "without --resume" in message and "pass the model.safetensors" not in message


@pytest.mark.parametrize("damage", ["truncated controlnet", "pickled optimizer"])
def test_finetune_resume_on_a_damaged_checkpoint_is_one_message(tmp_path, damage) -> None:
    cfg = toy_project_config(str(tmp_path), finetune={"steps": 1})
    run_finetune(cfg, toy_dataset())
    checkpoint = finetune_work_dir(cfg) / "checkpoint"
    marker = tmp_path / "unpickled"
    if damage == "truncated controlnet":
        weights = checkpoint / "controlnet.safetensors"
        weights.write_bytes(weights.read_bytes()[:300])
    else:
        torch.save({"state": Evil(marker), "param_groups": []}, checkpoint / "optimizer.pt")
    with pytest.raises(S2S2Error) as refused:
        run_finetune(cfg, toy_dataset(), resume=True)
    message = _one_line_without_torch_advice(refused.value)
    assert "without --resume" in message and not marker.exists()
