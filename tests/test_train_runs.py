"""The run folder as a contract: plain run names that stay inside run_dir, no run left behind by a
failed start, and SIGTERM/SIGINT that stop `s2s2 train` at a checkpoint it can resume from."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from s2s2.pipeline.config.base import load_config
from s2s2.pipeline.config.project import ProjectConfig
from s2s2.pipeline.errors import ConfigError, StoreError
from s2s2.stages.evaluate import run_evaluate
from s2s2.stages.train.loop import run_train
from test_errors_named import damage, shard_file
from test_train_support import blob_dataset, filled_store, tiny_config

BAD_NAMES = ["../../escape", "/tmp/s2s2-absolute-run", "", ".", "..", "a/b", "a\\b"]


@pytest.fixture(scope="module")
def dataset():
    return blob_dataset(n=24, size=32)


def files_under(path: Path) -> set[Path]:
    return {p for p in path.rglob("*")} if path.exists() else set()


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_run_name_that_is_not_a_plain_name_is_refused_and_writes_nothing(tmp_path, dataset, name):
    with pytest.raises(ConfigError, match="train.name.*not a plain name"):
        load_config(ProjectConfig, overrides={"train.name": name, "run_dir": str(tmp_path / "run")})
    cfg = tiny_config(tmp_path / "work", stack=False)
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"name": name})})  # past the validator
    before = files_under(tmp_path) | files_under(Path("/tmp/s2s2-absolute-run"))
    with pytest.raises(ConfigError, match="outside .*train; fix: use a plain name"):
        run_train(cfg, dataset=dataset)
    with pytest.raises(ConfigError, match="outside .*train; fix: use a plain name"):
        run_evaluate(cfg, train_data=dataset, datasets={"in_domain": (dataset, dataset.indices("test"))})
    assert files_under(tmp_path) | files_under(Path("/tmp/s2s2-absolute-run")) == before


def test_a_name_that_leads_to_a_folder_of_other_files_is_refused(tmp_path, dataset):
    elsewhere = tmp_path / "my_documents"
    elsewhere.mkdir()
    (elsewhere / "thesis.tex").write_text("keep me")
    train_root = tmp_path / "run" / "train"
    train_root.mkdir(parents=True)
    (train_root / "linked").symlink_to(elsewhere)
    with pytest.raises(ConfigError, match="outside"):
        run_train(tiny_config(tmp_path, stack=False, name="linked"), dataset=dataset)
    (train_root / "notes").mkdir()
    (train_root / "notes" / "todo.txt").write_text("keep me too")
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match=r"holds files that are not a run's \(todo.txt\)"):
            run_train(tiny_config(tmp_path, stack=False, name="notes"), dataset=dataset, overwrite=overwrite)
    assert sorted(p.name for p in (train_root / "notes").iterdir()) == ["todo.txt"]
    assert sorted(p.name for p in elsewhere.iterdir()) == ["thesis.tex"]


def test_a_train_stopped_by_a_damaged_shard_leaves_no_run_behind(tmp_path, dataset):
    filled_store(tmp_path / "stack.zarr", dataset, k=3)
    damage(Path(shard_file(tmp_path / "stack.zarr", "stack", 2)))
    with pytest.raises(StoreError, match="is damaged"):
        run_train(tiny_config(tmp_path, steps=4, val_every=100, checkpoint_every=100), dataset=dataset)
    assert not (tmp_path / "run" / "train" / "s2s2").exists()
    # the rerun (here the baseline under the same name) is not refused as "already holds a run"
    folder = run_train(tiny_config(tmp_path, stack=False, steps=2), dataset=dataset)
    assert json.loads((folder / "summary.json").read_text())["steps"] == 2


def test_a_failed_resume_keeps_the_run_it_continues(tmp_path, dataset):
    run_train(tiny_config(tmp_path, stack=False, steps=4, checkpoint_every=2), stop_after=2, dataset=dataset)
    folder = tmp_path / "run" / "train" / "s2s2"
    kept = sorted(p.name for p in folder.iterdir())
    broken = tiny_config(tmp_path, stack=False, steps=4, checkpoint_every=2)
    broken.evaluate.eval_classes = ["no such class"]
    with pytest.raises(ConfigError):
        run_train(broken, resume=True, dataset=dataset)
    assert sorted(p.name for p in folder.iterdir()) == kept


S2S2 = [sys.executable, "-c", "from s2s2.cli import main; main()"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_stops_train_at_a_checkpoint_and_says_how_to_resume(tmp_path, sig):
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({
        "run_dir": str(tmp_path / "run"), "data": {"cache_dir": str(tmp_path / "cache")},
        "train": {"steps": 100000, "batch_size": 4, "log_every": 1, "val_every": 100000,
                  "checkpoint_every": 100000},
        "evaluate": {"out_of_domain": {}}}))
    command = [*S2S2, "train", "-c", str(config), "--name", "long", "--baseline"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = tmp_path / "run" / "train" / "long" / "log.csv"
    with subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as process:
        deadline = time.monotonic() + 240
        while not (log.is_file() and len(log.read_text().splitlines()) >= 3):  # header + 2 steps
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()[-3000:]
            time.sleep(0.2)
        process.send_signal(sig)
        _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + sig.value, stderr[-3000:]
    assert "Traceback" not in stderr
    folder = log.parent
    state = torch.load(folder / "state.pt", weights_only=True)
    summary = json.loads((folder / "summary.json").read_text())
    assert state["step"] == summary["steps"] >= 2 and summary["stopped_by_signal"] == sig.name
    assert (f"train long: stopped by {sig.name} after step {state['step']} of 100000; the checkpoint in {folder} "
            f"(last.safetensors + state.pt) holds step {state['step']}; to continue, run the same command with "
            "--resume") in stderr
    resumed = subprocess.run([*command, "--resume", "--stop-after", "1"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((folder / "summary.json").read_text())["steps"] == state["step"] + 1
