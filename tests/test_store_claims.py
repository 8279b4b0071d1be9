"""Shard claims and generator bindings on local disk and on S3 (moto's server, real s3fs client):
exactly one winner per claim among racing processes, expiry and takeover, renewal, release."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from s2s2.store.claims import ClaimBook, Records
from test_store_support import REPO_DIR, moto_s3, python_env

RACER = """
import json, sys
from s2s2.store.claims import Records
root, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
records = Records(root, json.loads(sys.argv[4]) or None)
print("ready", flush=True)
sys.stdin.readline()  # start together
order = range(count) if name == "a" else reversed(range(count))  # they meet in the middle
won = [i for i in order if records.create(f"race/{i:06d}.json", {"writer": name})]
print(json.dumps(won), flush=True)
"""


@pytest.fixture(scope="module")
def s3_server():
    with moto_s3("claims-test") as options:
        yield options


@pytest.fixture(params=["local", "s3"])
def where(request, tmp_path, s3_server):
    """(store root, storage options) on local disk or on S3."""
    if request.param == "local":
        return str(tmp_path / "stack.zarr"), {}
    return f"s3://claims-test/{tmp_path.name}/stack.zarr", s3_server


def test_create_if_absent_has_exactly_one_winner(where):
    root, options = where
    records = Records(root, options)
    assert records.create("x/000000.json", {"who": 1})
    assert not records.create("x/000000.json", {"who": 2})
    assert records.read("x/000000.json") == {"who": 1} and records.names("x") == ["000000.json"]
    records.put("x/000000.json", {"who": 3})
    assert records.read("x/000000.json") == {"who": 3} and records.read("x/missing.json") is None


def test_two_racing_processes_never_create_the_same_record(where):
    root, options = where
    racers = [subprocess.Popen([sys.executable, "-c", RACER, root, name, "40", json.dumps(options)], text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=python_env(), cwd=REPO_DIR) for name in ("a", "b")]
    for racer in racers:
        assert racer.stdout.readline().strip() == "ready", racer.stderr.read()
    for racer in racers:
        racer.stdin.write("go\n")
        racer.stdin.flush()
    won = [json.loads(racer.communicate(timeout=120)[0]) for racer in racers]
    assert sorted(won[0] + won[1]) == list(range(40))  # every record created by exactly one process
    records = Records(root, options)
    assert all(records.read(f"race/{i:06d}.json")["writer"] == ("a" if i in won[0] else "b") for i in range(40))


def test_expired_claim_is_retaken_and_the_old_holder_knows(where):
    root, options = where
    book = ClaimBook(root, options or None)
    first = book.claim(3, "run-a", seconds=0.5)
    assert first is not None and book.holds(first)
    assert book.claim(3, "run-b", seconds=60) is None  # live: another run cannot take it
    assert book.live_claims([2, 3], except_writer="run-b") == {3: book.current(3)}
    time.sleep(0.6)
    assert book.live_claims([3], except_writer="run-b") == {}
    second = book.claim(3, "run-b", seconds=60)
    assert second is not None and second.seq == 1
    assert not book.holds(first) and not book.renew(first, 60)  # the killed or slow writer lost it
    assert book.holds(second) and book.renew(second, 60)
    book.release(first)  # releasing a lost claim does not touch the new holder's
    assert book.holds(second)
    book.release(second)
    assert not book.current(3).live() and book.claim(3, "run-c", seconds=60).seq == 2


def test_holding_renews_the_claim_until_the_block_ends(where):
    root, options = where
    book = ClaimBook(root, options or None)
    claim = book.claim(0, "run-a", seconds=0.6)
    with book.holding(claim, 0.6):
        time.sleep(1.5)  # longer than the claim: only renewal keeps it
        assert book.current(0).live() and book.claim(0, "run-b", seconds=60) is None
    assert book.current(0).released


def test_running_writers_are_listed_while_they_run(where):
    root, options = where
    book = ClaimBook(root, options or None)
    with book.running("host:1:abc", seconds=60):
        assert [w.writer for w in book.running_writers()] == ["host:1:abc"]
        assert book.running_writers(except_writer="host:1:abc") == []
    assert book.running_writers() == []


def test_stack_init_overwrite_and_inspect_see_a_running_generate(tmp_path):
    from s2s2.pipeline.errors import StoreError
    from s2s2.store.inspect import format_summary, summarise
    from s2s2.store.stack_store import StackStore
    from test_store_support import synthetic_dataset

    path = tmp_path / "s.zarr"
    store = StackStore.create(path, synthetic_dataset(n=12), k=2, shard_size=2)
    with store.claims.running("elsewhere:42:run", seconds=60):
        claim = store.claims.claim(1, "elsewhere:42:run", seconds=60)
        text = format_summary(summarise(StackStore.open(path), with_fidelity=False))
        assert "writing     1 generate run(s)" in text and "1 shard(s) claimed" in text
        with pytest.raises(StoreError, match="`s2s2 generate` is writing this store"):
            StackStore.create(path, synthetic_dataset(n=12), k=2, shard_size=2, overwrite=True)
        store.claims.release(claim)
    StackStore.create(path, synthetic_dataset(n=12), k=2, shard_size=2, overwrite=True)  # once it has stopped
