"""DDP through accelerate: 2 CPU processes with gloo, started by torchrun or by `accelerate launch`, train
one S2S2 run and end with identical weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from safetensors.torch import load_file

from test_train_support import blob_dataset, filled_store

TESTS = str(Path(__file__).parent)
SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, sys.argv[1])
    from test_train_support import blob_dataset, tiny_config
    from s2s2.stages.train import run_train
    cfg = tiny_config(Path(sys.argv[2]), steps=4, batch_size=4, val_every=2, checkpoint_every=2)
    run_train(cfg, dataset=blob_dataset(n=24, size=32))
""")


ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
LAUNCHERS = {
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
    # --multi_gpu selects accelerate's torchrun-based launcher; the trainer picks gloo without GPUs
    "accelerate": [ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"],
}


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_two_process_gloo_run(tmp_path, launcher):
    dataset = blob_dataset(n=24, size=32)
    filled_store(tmp_path / "stack.zarr", dataset, k=3)
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*LAUNCHERS[launcher], str(script), TESTS, str(tmp_path)], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    folder = tmp_path / "run" / "train" / "s2s2"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["ranks_in_sync"] is True and summary["steps"] == 4
    weights = load_file(str(folder / "last.safetensors"))
    assert weights and all(t.isfinite().all() for t in weights.values() if t.is_floating_point())
