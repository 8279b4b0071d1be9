"""Shared pieces of the generation tests (no tests here): a single-process reference stack, a toy
project on disk that the real CLI can run, and CLI subprocesses whose stderr is read line by line."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import yaml

from s2s2.pipeline.config.project import ProjectConfig
from s2s2.pipeline.data.prepared import PreparedDataset
from s2s2.stages.generate import ShardTask, generate_shard, stack_generator
from s2s2.store.stack_store import StackStore
from fixtures_toy import TOY_CLASSES, toy_dataset, toy_project_config

ROOT = Path(__file__).resolve().parents[1]


def reference_stack(cfg: ProjectConfig, dataset: PreparedDataset, path: Path) -> np.ndarray:
    """The whole stack generated in this process, shard by shard, without dask or interruption."""
    store = StackStore.create(path, dataset, k=cfg.store.k, shard_size=cfg.store.shard_size)
    resolution = dataset.image_shape[-1]
    task = ShardTask(store_path=str(path), storage_options={}, generator_dir=cfg.generate.generator_dir,
                     settings=cfg.generate, resolution=resolution, attention="auto",
                     generator=stack_generator(cfg, store.k, store.manifest.prompt_template, resolution),
                     writer="reference")
    for shard in range(store.num_shards):
        assert generate_shard(task, shard) is not None
    return np.asarray(StackStore.open(path)._group["stack"][:])


def toy_project(folder: Path, generator: Path | None, n: int = 16, run_dir: str = "run", **generate: object) -> Path:
    """`folder/config.yaml` for toy npz slices in `folder/slices`: run_dir, data root and cache are
    relative to `folder` (as in configs/default.yaml); the generator folder is `generator`, or with
    None the default {run_dir}/generator (relative too). Returns the config path; `load_project`
    reads it back as seen from `folder`."""
    toy = toy_dataset(n=n, size=16)
    slices = folder / "slices"
    slices.mkdir(parents=True, exist_ok=True)
    for i in range(len(toy)):
        np.savez(slices / f"case{i:02d}_slice0.npz", image=toy.images[i, 0], label=toy.masks[i])
    cfg = toy_project_config(run_dir, store={"shard_size": 1, "path": None},
                             generate={"generator_dir": str(generator) if generator else None, **generate})
    tree = cfg.model_dump(mode="json")
    tree["store"].pop("path")  # follows run_dir
    tree["data"] = {"adapter": "npz", "root": "slices", "size": 16, "class_names": list(TOY_CLASSES),
                    "modality": "toy image", "cache_dir": "cache"}
    config = folder / "config.yaml"
    config.write_text(yaml.safe_dump(tree, sort_keys=False))
    return config


def load_project(config: Path) -> ProjectConfig:
    """The project config with its relative paths resolved against the config's folder."""
    tree = yaml.safe_load(config.read_text())
    base = config.parent
    tree["run_dir"] = str(base / tree["run_dir"])
    if tree["generate"]["generator_dir"] is None:
        tree["generate"]["generator_dir"] = str(base / tree["run_dir"] / "generator")
    tree["data"]["root"] = str(base / tree["data"]["root"])
    tree["data"]["cache_dir"] = str(base / tree["data"]["cache_dir"])
    return ProjectConfig.model_validate(tree)


class Cli:
    """`s2s2 ARGS` in a subprocess (one torch thread, offline), stderr collected line by line."""

    def __init__(self, *args: str, cwd: Path, new_session: bool = False):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "s2s2.cli", *args], cwd=cwd, env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=new_session)
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, text: str, timeout: float = 240) -> bool:
        """True once a stderr line contains `text`; False if the process ended or time ran out."""
        with self._changed:
            return self._changed.wait_for(lambda: any(text in line for line in self.lines)
                                          or not self._reader.is_alive(), timeout=timeout) \
                and any(text in line for line in self.lines)

    def finish(self, timeout: float = 300) -> tuple[int, str]:
        """Exit status and the whole stderr."""
        self.proc.wait(timeout=timeout)
        self._reader.join(timeout=30)
        return self.proc.returncode, "".join(self.lines)
