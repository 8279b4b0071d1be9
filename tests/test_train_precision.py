"""Stage two's exactness settings: epoch-exact steps (drop_last), resume that cannot change the run,
mixed precision (bf16 on CPU here; fp16 refused without a GPU) and the ControlNet fine-tune's gradient
clipping."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from s2s2.pipeline.config.base import load_config
from s2s2.pipeline.config.project import ProjectConfig
from s2s2.pipeline.errors import ConfigError
from s2s2.pipeline.losses import position_distance
from s2s2.stages.paper import SETTINGS, config_path, epoch_steps
from s2s2.stages.train.datasets import EpochBatchSampler
from s2s2.stages.train.loop import run_train
from s2s2.store.fast_read import ShardReader
from test_train_support import blob_dataset, filled_store, tiny_config

TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def dataset():
    return blob_dataset(n=24, size=32)


@pytest.mark.parametrize("n, batch, world", [(10, 4, 1), (10, 4, 2), (9, 4, 2), (16, 6, 2), (8, 4, 1)])
def test_the_sampler_keeps_or_drops_the_last_partial_batch_as_the_paper_counts(n, batch, world):
    for drop_last in (True, False):
        per_rank = [list(EpochBatchSampler(n, batch, seed=0, epoch=3, rank=r, world_size=world, drop_last=drop_last))
                    for r in range(world)]
        assert {len(batches) for batches in per_rank} == {epoch_steps(n, batch, 1, drop_last)}
        seen = Counter(i for batches in per_rank for batch_ in batches for i in batch_)
        if drop_last:
            assert len(seen) == batch * (n // batch) and set(seen.values()) == {1}
        else:  # every sample once; a partial batch smaller than the world is padded from the epoch's start
            assert set(seen) == set(range(n)) and sum(seen.values()) - n < world
            assert all(batch_ for batches in per_rank for batch_ in batches)


@pytest.mark.parametrize("item", SETTINGS, ids=lambda item: item.name)
def test_every_paper_config_keeps_the_last_batch_as_its_setting_counts(item):
    assert load_config(ProjectConfig, config_path(item.name)).train.drop_last is item.drop_last


def test_a_run_that_keeps_the_last_batch_visits_every_sample_each_epoch(tmp_path, dataset, monkeypatch):
    filled_store(tmp_path / "stack.zarr", dataset, k=3)
    reads: list[int] = []
    real_read = ShardReader.read
    monkeypatch.setattr(ShardReader, "read", lambda self, requests: reads.extend(
        int(lead[0]) for name, lead in requests if name == "stack") or real_read(self, requests))
    # 16 training samples at batch 6: 2 full batches and one of 4 per epoch
    folder = run_train(tiny_config(tmp_path, steps=6, batch_size=6, drop_last=False, val_every=6), dataset=dataset)
    assert json.loads((folder / "summary.json").read_text())["steps"] == 6 == epoch_steps(16, 6, 2, False)
    assert len(reads) == 32 and all(set(Counter(reads[e * 16:(e + 1) * 16]).values()) == {1} for e in range(2))


def test_resume_refuses_a_change_of_steps_or_of_the_selecting_classes(tmp_path, dataset):
    cfg = tiny_config(tmp_path, stack=False, steps=4)
    run_train(cfg, stop_after=2, dataset=dataset)
    with pytest.raises(ConfigError, match=r"train.steps changed.*schedule is a function of train.steps"):
        run_train(tiny_config(tmp_path, stack=False, steps=8), resume=True, dataset=dataset)
    other = cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(update={"eval_classes": ["csf"]})})
    with pytest.raises(ConfigError, match=r"evaluate.eval_classes changed.*selects model.safetensors"):
        run_train(other, resume=True, dataset=dataset)
    figures = cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(update={"figure_cases": 1})})
    assert json.loads((run_train(figures, resume=True, dataset=dataset) / "summary.json").read_text())["steps"] == 4


def test_half_precision_features_give_a_finite_consistency_distance():
    small = torch.full((2, 8, 4, 4), 1e-4)  # |u|^2 underflows in fp16, so the old clamp met 0
    big = torch.full((2, 8, 4, 4), 300.0)  # |u|^2 overflows in fp16
    for u, v in ((small, small * 2), (big, -big), (small, big)):
        expected = position_distance(u.double(), v.double())
        for dtype in (torch.float16, torch.bfloat16):
            got = position_distance(u.to(dtype), v.to(dtype))
            assert torch.isfinite(got).all()
            torch.testing.assert_close(got.double(), expected.double(), atol=1e-2, rtol=0)


def test_fp16_without_a_gpu_is_refused(tmp_path, dataset):
    with pytest.raises(ConfigError, match="fp16 needs a GPU.*bf16"):
        run_train(tiny_config(tmp_path, stack=False, mixed_precision="fp16", device="cpu"), dataset=dataset)
    assert not (tmp_path / "run" / "train" / "s2s2").exists()


BF16_RUN = """
import json, sys
sys.path.insert(0, {tests!r})
from test_train_support import blob_dataset, filled_store, tiny_config
from s2s2.stages.train.loop import run_train
from pathlib import Path
tmp = Path({tmp!r})
dataset = blob_dataset(n=24, size=32)
filled_store(tmp / "stack.zarr", dataset, k=3)
cfg = tiny_config(tmp, steps=3, mixed_precision={precision!r}, device="cpu", name={precision!r},
                  loss={{"a_enc": 1.0, "a_dec": 1.0, "w_seg_gen": 1.0}})
print(json.dumps(str(run_train(cfg, dataset=dataset))))
"""


def test_bf16_autocast_trains_s2s2_on_cpu_with_finite_losses(tmp_path):
    """accelerate's state is per process: each precision runs in its own."""
    folders = {}
    for precision in ("no", "bf16"):
        script = BF16_RUN.format(tests=str(TESTS), tmp=str(tmp_path / precision), precision=precision)
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, done.stderr[-3000:]
        folders[precision] = Path(json.loads(done.stdout.strip().splitlines()[-1]))
    import csv

    losses = {p: [float(r["loss"]) for r in csv.DictReader(open(f / "log.csv")) if r["loss"]] for p, f in folders.items()}
    assert all(np.isfinite(losses["bf16"])) and len(losses["bf16"]) == 3
    assert losses["bf16"] != losses["no"]  # the forward ran in bf16
    np.testing.assert_allclose(losses["bf16"], losses["no"], rtol=0.1)
    weights = load_file(str(folders["bf16"] / "last.safetensors"))
    floats = [t for t in weights.values() if t.is_floating_point()]
    assert floats and all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in floats)
