"""Crash safety and concurrency with real writer processes: SIGKILL mid-shard then resume,
two writers on disjoint shards, and atomic shard files under a concurrent reader."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np

from s2s2.store.inspect import verify
from s2s2.store.stack_store import StackStore
from test_store_support import REWRITER, WRITER, fake_stack, rewriter_versions, start_python, synthetic_dataset

SHAPE = (1, 16, 16)


def fill_in_process(store: StackStore) -> None:
    for shard in store.pending_shards():
        store.write_shard(shard, fake_stack(store.shard_samples(shard), store.k, SHAPE))


def wait_for_line(proc, wanted: str, timeout: float = 60.0) -> list[str]:
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline().strip()
        if not line and proc.poll() is not None:
            raise AssertionError(f"writer exited early ({proc.returncode}): {proc.stderr.read()}")
        seen.append(line)
        if line == wanted:
            return seen
    raise AssertionError(f"no {wanted!r} within {timeout}s; got {seen}")


def test_sigkill_mid_shard_then_resume_equals_uninterrupted(tmp_path):
    ds = synthetic_dataset(n=30)  # 10 train samples, 5 shards of 2
    reference = StackStore.create(tmp_path / "ref.zarr", ds, k=3, shard_size=2)
    fill_in_process(reference)
    path = tmp_path / "crash.zarr"
    StackStore.create(path, ds, k=3, shard_size=2)

    writer = start_python(WRITER, str(path), "pending", "0.5")
    seen = wait_for_line(writer, "data 2")  # shard 2's images are written, its done flags not yet
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(timeout=30)
    assert writer.returncode == -signal.SIGKILL
    assert "done 1" in seen and "done 2" not in seen

    crashed = StackStore.open(path)
    assert crashed.pending_shards() == [2, 3, 4]  # the killed shard is redone, finished ones are kept
    assert crashed.read_shard_stack(2).any()  # its pixels did land, but without the ledger they don't count
    assert not [p for p in verify(crashed) if p.fatal]  # every shard file present decodes

    resumed = start_python(WRITER, str(path), "pending", "0")
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    assert out.split().count("done") == 3
    done = StackStore.open(path)
    assert done.pending_shards() == []
    np.testing.assert_array_equal(done.done_ledger(), reference.done_ledger())
    for shard in range(done.num_shards):
        np.testing.assert_array_equal(done.read_shard_stack(shard), reference.read_shard_stack(shard))


def test_two_writer_processes_on_disjoint_shards_lose_nothing(tmp_path):
    ds = synthetic_dataset(n=72)  # 24 train samples, 12 shards of 2
    path = tmp_path / "two.zarr"
    store = StackStore.create(path, ds, k=2, shard_size=2)
    evens = ",".join(str(s) for s in range(0, store.num_shards, 2))
    odds = ",".join(str(s) for s in range(1, store.num_shards, 2))
    writers = [start_python(WRITER, str(path), shards, "0.05") for shards in (evens, odds)]
    for writer in writers:
        _, err = writer.communicate(timeout=120)
        assert writer.returncode == 0, err
    filled = StackStore.open(path)
    assert filled.pending_shards() == [] and filled.complete_fraction() == 1.0
    for shard in range(filled.num_shards):
        np.testing.assert_array_equal(filled.read_shard_stack(shard),
                                      fake_stack(filled.shard_samples(shard), 2, SHAPE))


def test_reader_never_sees_a_torn_shard_even_when_the_writer_is_killed(tmp_path):
    """zarr's LocalStore writes a temporary file and renames it: a whole-shard read returns one of
    the two versions, never a mix or a partial file, while a writer rewrites the shard in a loop."""
    ds = synthetic_dataset(n=6, size=128)  # shard 0: 2 samples x 4 images x 128 x 128 noise, 128 KiB
    path = tmp_path / "torn.zarr"
    store = StackStore.create(path, ds, k=4, shard_size=2, compression="none")
    versions = rewriter_versions((2, 4, 1, 128, 128))
    rewriter = start_python(REWRITER, str(path))
    try:
        wait_for_line(rewriter, "ready")
        shard_file = Path(path) / "stack" / "c" / "0" / "0" / "0" / "0" / "0"
        reads = 0
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:
            if not shard_file.exists():
                continue
            images = store.read_shard_stack(0)
            assert any(np.array_equal(images, v) for v in versions), "a read saw a torn shard"
            reads += 1
        assert reads > 20
    finally:
        os.kill(rewriter.pid, signal.SIGKILL)
        rewriter.wait(timeout=30)
    images = StackStore.open(path).read_shard_stack(0)
    assert any(np.array_equal(images, v) for v in versions)
