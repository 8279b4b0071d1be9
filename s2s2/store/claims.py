"""Coordination records of the writers that share one stack store: shard claims, generator
bindings and running writers.

Every record is a small JSON object under `{store}/claims/`. Records that decide ownership are
numbered sequences written with an atomic create-if-absent: a hard link of a finished temporary
file on local disk (`link` fails if the name exists), a conditional put (`If-None-Match: *`) on S3.
Of two writers creating the same number exactly one succeeds, so no lock server is needed:
- `shard-{s}/{seq}.json`: who generates shard s. The highest number is the current claim. A claim
  carries an expiry that its writer renews while it works; a writer takes a free, released or
  expired shard by creating the next number (a killed writer's shard is retaken after expiry).
- `binding/{seq}.json`: which generator fills the stack. The highest number is current; a run
  with `--overwrite` rebinds by creating the next number, so two rebinding runs cannot both win.
- `writers/{writer}.json`: one per running `generate` (host, pid, expiry renewed while it runs),
  so `--overwrite` can see that another run is still writing.
Expiry compares wall clocks: hosts sharing a store need clocks in sync to well within the claim time.
Other fsspec backends get the same records, but their create-if-absent is only as atomic as their
`pipe_file(mode="create")` (local disk and S3 are).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

CLAIMS_FOLDER = "claims"
_SEQ_DIGITS = 6


def new_writer_id() -> str:
    """A name for one `generate` run, unique across hosts and restarts: host:pid:random."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def this_process() -> str:
    """host:pid of the calling process (the worker that generates a shard)."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Records:
    """Small JSON records under one folder, on local disk or any fsspec URL, with an atomic
    create-if-absent."""

    def __init__(self, root: str | Path, storage_options: dict[str, Any] | None = None):
        self.root = str(root).rstrip("/")
        self.remote = "://" in self.root
        if self.remote:
            import fsspec

            self.fs, self.base = fsspec.core.url_to_fs(self.root, **(storage_options or {}))

    def _local(self, key: str) -> Path:
        return Path(self.root) / key

    def create(self, key: str, payload: dict[str, Any]) -> bool:
        """Write `payload` at `key` unless a record is there already; False if one was."""
        data = json.dumps(payload).encode()
        if self.remote:
            try:
                self.fs.pipe_file(f"{self.base}/{key}", data, mode="create")
            except FileExistsError:
                return False
            return True
        final = self._local(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        temporary = final.with_name(f".{final.name}.{uuid.uuid4().hex}.partial")
        temporary.write_bytes(data)
        try:
            os.link(temporary, final)  # atomic, and fails if `final` exists: the record appears whole or not at all
        except FileExistsError:
            return False
        finally:
            temporary.unlink()
        return True

    def put(self, key: str, payload: dict[str, Any]) -> None:
        """Write or replace the record at `key` (atomically: readers see the old or the new one)."""
        data = json.dumps(payload).encode()
        if self.remote:
            self.fs.pipe_file(f"{self.base}/{key}", data)
            return
        final = self._local(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        temporary = final.with_name(f".{final.name}.{uuid.uuid4().hex}.partial")
        temporary.write_bytes(data)
        os.replace(temporary, final)

    def read(self, key: str) -> dict[str, Any] | None:
        """The record at `key`, or None if there is none."""
        try:
            data = self.fs.cat_file(f"{self.base}/{key}") if self.remote else self._local(key).read_bytes()
        except FileNotFoundError:
            return None
        return json.loads(data)

    def names(self, folder: str) -> list[str]:
        """Names of the records directly in `folder` (not temporaries), freshly listed."""
        if self.remote:
            path = f"{self.base}/{folder}"
            self.fs.invalidate_cache(path)  # other writers add records: never trust a cached listing
            try:
                entries = self.fs.ls(path, detail=False)
            except FileNotFoundError:
                return []
            names = [e.rstrip("/").rsplit("/", 1)[-1] for e in entries]
        else:
            try:
                names = os.listdir(self._local(folder))
            except (FileNotFoundError, NotADirectoryError):
                return []
        return [n for n in names if n.endswith(".json") and not n.startswith(".")]


def _seq_name(seq: int) -> str:
    return f"{seq:0{_SEQ_DIGITS}d}.json"


def _latest(records: Records, folder: str) -> tuple[int, dict[str, Any]] | None:
    """(number, payload) of the highest-numbered record in `folder`, or None."""
    numbers = sorted(int(n.split(".")[0]) for n in records.names(folder) if n.split(".")[0].isdigit())
    for seq in reversed(numbers):  # a record is never deleted, so the highest one is readable
        payload = records.read(f"{folder}/{_seq_name(seq)}")
        if payload is not None:
            return seq, payload
    return None


@dataclass(frozen=True)
class Claim:
    """One writer's claim on one shard: number `seq` in the shard's sequence."""

    shard: int
    seq: int
    writer: str  # the `generate` run
    worker: str  # host:pid of the process generating the shard
    claimed: float  # wall-clock seconds since the epoch
    expires: float  # pushed forward by every renewal
    released: bool = False

    def live(self, now: float | None = None) -> bool:
        """Held: neither released nor expired."""
        return not self.released and self.expires > (time.time() if now is None else now)


@dataclass(frozen=True)
class Binding:
    """Which generator fills the stack: number `seq` in the binding sequence. A rebinding writer
    creates the record with `ready=False`, clears the done flags of the ks `clear_ks` (whose
    source changed), then marks it ready."""

    seq: int
    identity: dict[str, Any]
    ready: bool
    created: float
    clear_ks: tuple[int, ...] = ()


@dataclass(frozen=True)
class Writer:
    """A running `generate` (its coordinator), renewed while it runs."""

    writer: str
    host: str
    pid: int
    started: float
    expires: float

    def live(self, now: float | None = None) -> bool:
        return self.expires > (time.time() if now is None else now)


@contextmanager
def _renewing(every: float, renew: Callable[[], bool], name: str) -> Iterator[None]:
    """Call `renew` every `every` seconds from a daemon thread while the block runs (until it returns False)."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every):
            if not renew():
                return

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


class ClaimBook:
    """The claim, binding and writer records of one store (`{store}/claims/`)."""

    def __init__(self, store_path: str | Path, storage_options: dict[str, Any] | None = None):
        self.records = Records(f"{str(store_path).rstrip('/')}/{CLAIMS_FOLDER}", storage_options)

    # --- shard claims ----------------------------------------------------------------------------

    @staticmethod
    def _shard_folder(shard: int) -> str:
        return f"shard-{shard:0{_SEQ_DIGITS}d}"

    def current(self, shard: int) -> Claim | None:
        """The shard's current (highest-numbered) claim, live or not; None if never claimed."""
        latest = _latest(self.records, self._shard_folder(shard))
        return None if latest is None else Claim(**latest[1])

    def claim(self, shard: int, writer: str, seconds: float) -> Claim | None:
        """Claim `shard` for `seconds` (renew to keep it). None if another run holds it, or won the
        race for it. A writer may retake its own claim (dask reruns a task whose worker died)."""
        current = self.current(shard)
        if current is not None and current.live() and current.writer != writer:
            return None
        now = time.time()
        new = Claim(shard=shard, seq=0 if current is None else current.seq + 1, writer=writer,
                    worker=this_process(), claimed=now, expires=now + seconds)
        created = self.records.create(f"{self._shard_folder(shard)}/{_seq_name(new.seq)}", asdict(new))
        return new if created else None

    def holds(self, claim: Claim) -> bool:
        """True while `claim` is the shard's current claim and not released (even if expired:
        nobody has taken it over)."""
        current = self.current(claim.shard)
        return current is not None and current.seq == claim.seq and not current.released

    def _rewrite(self, claim: Claim) -> None:
        self.records.put(f"{self._shard_folder(claim.shard)}/{_seq_name(claim.seq)}", asdict(claim))

    def renew(self, claim: Claim, seconds: float) -> bool:
        """Push the expiry of a claim still held; False if another writer has taken the shard."""
        if not self.holds(claim):
            return False
        self._rewrite(replace(claim, expires=time.time() + seconds))
        return True

    def release(self, claim: Claim) -> None:
        """Give the shard back (if the claim is still ours)."""
        if self.holds(claim):
            self._rewrite(replace(claim, released=True))

    def release_writer(self, writer: str, shards: list[int]) -> list[int]:
        """Release every claim that `writer` still holds among `shards` (a stopped run gives its shards
        back at once rather than leaving them until their claims expire); the shards released."""
        released = []
        for shard in shards:
            current = self.current(shard)
            if current is not None and current.writer == writer and not current.released:
                self._rewrite(replace(current, released=True))
                released.append(shard)
        return released

    def live_claims(self, shards: list[int], except_writer: str | None = None) -> dict[int, Claim]:
        """{shard: claim} of the `shards` that another run holds now."""
        now, held = time.time(), {}
        for shard in shards:
            current = self.current(shard)
            if current is not None and current.live(now) and current.writer != except_writer:
                held[shard] = current
        return held

    @contextmanager
    def holding(self, claim: Claim, seconds: float) -> Iterator[None]:
        """Renew `claim` every third of `seconds` from a thread while the block runs, then release it."""
        try:
            with _renewing(seconds / 3, lambda: self.renew(claim, seconds), f"renew-claim-{claim.shard}"):
                yield
        finally:
            self.release(claim)

    # --- generator binding -----------------------------------------------------------------------

    def binding(self) -> Binding | None:
        """The current (highest-numbered) binding, or None if no generator was ever bound."""
        latest = _latest(self.records, "binding")
        return None if latest is None else Binding(**latest[1])

    def create_binding(self, seq: int, identity: dict[str, Any], ready: bool,
                       clear_ks: list[int] | tuple[int, ...] = ()) -> Binding | None:
        """Create binding number `seq`; None if another writer created that number first."""
        new = Binding(seq=seq, identity=identity, ready=ready, created=time.time(), clear_ks=tuple(clear_ks))
        return new if self.records.create(f"binding/{_seq_name(seq)}", asdict(new)) else None

    def mark_ready(self, binding: Binding) -> None:
        """Declare a rebinding finished (the done ledger is cleared)."""
        self.records.put(f"binding/{_seq_name(binding.seq)}", asdict(replace(binding, ready=True)))

    # --- running writers -------------------------------------------------------------------------

    def running_writers(self, except_writer: str | None = None) -> list[Writer]:
        """The `generate` runs writing this store now (their records not expired)."""
        now, out = time.time(), []
        for name in self.records.names("writers"):
            payload = self.records.read(f"writers/{name}")
            if payload is not None:
                writer = Writer(**payload)
                if writer.live(now) and writer.writer != except_writer:
                    out.append(writer)
        return out

    @contextmanager
    def running(self, writer: str, seconds: float) -> Iterator[None]:
        """Announce `writer` as running (renewed every third of `seconds`) while the block runs."""
        host, pid = this_process().rsplit(":", 1)
        record = Writer(writer=writer, host=host, pid=int(pid), started=time.time(), expires=time.time() + seconds)
        key = f"writers/{writer.replace(':', '_')}.json"
        self.records.put(key, asdict(record))

        def renew() -> bool:
            self.records.put(key, asdict(replace(record, expires=time.time() + seconds)))
            return True

        try:
            with _renewing(seconds / 3, renew, "renew-writer"):
                yield
        finally:
            self.records.put(key, asdict(replace(record, expires=0.0)))
