"""SIGTERM or SIGINT to a running `s2s2 generate` (a real process on a real dask LocalCluster): the
claims and the writer record are released at once, the shard in progress is discarded (never marked
done), no "leaked semaphore" warning, exit 128+signal with a line saying how to resume. (That a
resumed stack equals an uninterrupted one, even after SIGKILL mid-shard, is tested in test_store_crash.)"""

from __future__ import annotations

import os
import signal
import time

import pytest
from test_generate_support import Cli, load_project, toy_project

from s2s2.store.stack_store import StackStore


def _start_and_stop(tmp_path, toy_generator, signum: int, group: bool) -> tuple[object, int, str]:
    config = toy_project(tmp_path, toy_generator, n=6, steps=300, claim_seconds=60)  # ~3 s of CPU per shard
    cfg = load_project(config)
    run = Cli("generate", "--config", str(config), cwd=tmp_path, new_session=group)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and run.proc.poll() is None:
        try:
            if StackStore.open(cfg.store.path).complete_fraction() > 0:
                break
        except Exception:  # the store is still being created
            pass
        time.sleep(0.05)
    assert run.proc.poll() is None, "generate ended before the signal: make it slower"
    if group:  # Ctrl-C in a terminal: the whole process group, dask's worker processes too
        os.killpg(run.proc.pid, signum)
    else:  # `kill PID`, as a scheduler or a container runtime stops a job
        run.proc.send_signal(signum)
    code, stderr = run.finish(timeout=180)
    return cfg, code, stderr


@pytest.mark.parametrize("signum,group", [(signal.SIGTERM, False), (signal.SIGINT, True)], ids=["SIGTERM", "Ctrl-C"])
def test_a_stopped_generate_releases_everything_and_says_how_to_resume(tmp_path, toy_generator, signum, group):
    cfg, code, stderr = _start_and_stop(tmp_path, toy_generator, signum, group)
    assert code == 128 + signum, stderr[-3000:]
    name = signal.Signals(signum).name
    assert f"generate stopped by {name}" in stderr and "resume: run the same `s2s2 generate` command again" in stderr
    assert "Traceback" not in stderr and "leaked semaphore" not in stderr, stderr[-3000:]
    store = StackStore.open(cfg.store.path)
    assert store.claims.running_writers() == []  # `inspect` does not show the stopped run as running
    assert store.claims.live_claims(list(range(store.num_shards))) == {}  # no shard waits for an expiry
    assert 0 < store.complete_fraction() < 1
