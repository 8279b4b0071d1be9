"""A local S3 endpoint that answers like a remote bucket: moto's S3 server behind a TCP proxy that
holds everything a client sends for `latency` before passing it on, so every request (whatever
client, library or loader sends it) reaches the server that much later. Responses pass straight
through. Runs in its own process so neither the server nor the proxy competes for the GIL of the
process being measured.

    python -m bench.s3_latency --latency-ms 10     # prints "direct PORT proxied PORT", serves until killed
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

BUCKET = "s2s2-bench"


async def _forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float) -> None:
    """Copy one direction of a connection, each piece of data sent `delay_s` after it arrived
    (pieces keep their order and their spacing: a long request is delayed once, not per piece)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def receive() -> None:
        while data := await reader.read(1 << 16):
            queue.put_nowait((loop.time() + delay_s, data))
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


async def _proxy(target_port: int, delay_s: float) -> asyncio.Server:
    async def connect(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(_forward(client_reader, server_writer, delay_s),
                             _forward(server_reader, client_writer, 0.0))

    return await asyncio.start_server(connect, "127.0.0.1", 0)


def serve(latency_ms: float) -> None:
    """Start moto's server and the delaying proxy; print both ports; serve until killed."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    _, direct = server.get_host_and_port()

    async def run() -> None:
        proxy = await _proxy(direct, latency_ms / 1000.0)
        print(f"direct {direct} proxied {proxy.sockets[0].getsockname()[1]}", flush=True)
        await proxy.serve_forever()

    asyncio.run(run())


def storage_options(port: int) -> dict[str, Any]:
    """s3fs options for the endpoint on `port` (moto accepts any credentials)."""
    return {"endpoint_url": f"http://127.0.0.1:{port}", "key": "bench", "secret": "bench",
            "client_kwargs": {"region_name": "us-east-1"}}


@contextlib.contextmanager
def s3_endpoint(latency_ms: float) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(options for the direct endpoint, options for the delayed one), with bucket BUCKET created."""
    proc = subprocess.Popen([sys.executable, "-m", "bench.s3_latency", "--latency-ms", str(latency_ms)],
                            stdout=subprocess.PIPE, text=True)
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
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency-ms", type=float, default=10.0)
    serve(parser.parse_args().latency_ms)
