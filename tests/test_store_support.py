"""Shared helpers for the stack store tests (no tests here): a small synthetic dataset whose
images follow their masks, deterministic fake stack images, and a writer subprocess that imports
only numpy/zarr (no torch) so it starts in about a second."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from s2s2.pipeline.data.prepared import PreparedDataset

TESTS_DIR = Path(__file__).resolve().parent
REPO_DIR = TESTS_DIR.parent
CLASS_NAMES = ("background", "csf", "grey matter", "white matter")
CLASS_LEVELS = np.array([0.05, 0.35, 0.6, 0.9], dtype=np.float32)


def blob_masks(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Masks of nested discs at random centres: 3 > 2 > 1 > background, different per sample."""
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((n, size, size), dtype=np.uint8)
    for i in range(n):
        cy, cx = rng.uniform(0.3, 0.7, size=2) * size
        radius = np.hypot(yy - cy, xx - cx)
        r0 = rng.uniform(0.3, 0.45) * size
        masks[i][radius < r0] = 1
        masks[i][radius < 0.7 * r0] = 2
        masks[i][radius < 0.4 * r0] = 3
    return masks


def synthetic_dataset(n: int = 12, size: int = 16, channels: int = 1, seed: int = 0,
                      name: str = "synthetic") -> PreparedDataset:
    """Images are class intensity levels plus noise: they follow their masks."""
    rng = np.random.default_rng(seed)
    masks = blob_masks(n, size, rng)
    base = CLASS_LEVELS[masks][:, None]
    images = np.clip(base + rng.normal(0, 0.03, size=(n, channels, size, size)), 0, 1).astype(np.float32)
    third = n // 3
    return PreparedDataset(
        name=name, images=images, masks=masks, ids=[f"case{i:03d}" for i in range(n)],
        spacings=np.ones((n, 2), np.float32), class_names=CLASS_NAMES, modality="T1-weighted brain MRI",
        prompt_template="{modality} with {classes}",
        splits={"train": list(range(n - 2 * third)), "val": list(range(n - 2 * third, n - third)),
                "test": list(range(n - third, n))},
    )


def fake_stack(rows: range, k: int, shape: tuple[int, ...], seed: int = 7) -> np.ndarray:
    """Deterministic uint8 stack images [S,K,C,H,W]: image (i, j) depends only on (seed, i, j)."""
    out = np.empty((len(rows), k, *shape), dtype=np.uint8)
    for r, index in enumerate(rows):
        for j in range(k):
            out[r, j] = np.random.default_rng([seed, index, j]).integers(1, 256, size=shape, dtype=np.uint8)
    return out


WRITER = """
import sys, time
from s2s2.store.stack_store import StackStore
from test_store_support import fake_stack

path, which, pause = sys.argv[1], sys.argv[2], float(sys.argv[3])

class PausingStore(StackStore):
    def _mark_done(self, rows):
        print(f"data {rows.start // self.manifest.shard_size}", flush=True)
        time.sleep(pause)
        super()._mark_done(rows)

store = PausingStore.open(path, "r+")
shards = store.pending_shards() if which == "pending" else [int(s) for s in which.split(",")]
for shard in shards:
    store.write_shard(shard, fake_stack(store.shard_samples(shard), store.k, store.manifest.image_shape))
    print(f"done {shard}", flush=True)
assert "torch" not in sys.modules, "the writer path must not import torch"
"""

REWRITER = """
import sys
import numpy as np
from s2s2.store.stack_store import StackStore
store = StackStore.open(sys.argv[1], "r+")
rows = store.shard_samples(0)
shape = (len(rows), store.k, *store.manifest.image_shape)
versions = [np.random.default_rng(v).integers(0, 256, size=shape, dtype=np.uint8) for v in (1, 2)]
print("ready", flush=True)
i = 0
while True:
    store.write_shard(0, versions[i % 2])
    i += 1
"""


def python_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_DIR), str(TESTS_DIR), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def start_python(code: str, *args: str) -> subprocess.Popen:
    """A python subprocess running `code` with the repo and tests on its path, stdout piped."""
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=python_env(), cwd=REPO_DIR)


def rewriter_versions(shape: tuple[int, ...]) -> list[np.ndarray]:
    """The two shard contents REWRITER alternates between."""
    return [np.random.default_rng(v).integers(0, 256, size=shape, dtype=np.uint8) for v in (1, 2)]


@contextlib.contextmanager
def moto_s3(bucket: str) -> Iterator[dict[str, Any]]:
    """moto's S3 server on 127.0.0.1 (a real HTTP server) with `bucket` created; yields s3fs options."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        options = {"endpoint_url": f"http://{host}:{port}", "key": "testing", "secret": "testing",
                   "client_kwargs": {"region_name": "us-east-1"}}
        boto3.client("s3", endpoint_url=options["endpoint_url"], aws_access_key_id="testing",
                     aws_secret_access_key="testing", region_name="us-east-1").create_bucket(Bucket=bucket)
        yield options
    finally:
        server.stop()
