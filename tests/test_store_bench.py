"""The p3 harness's own parts: eviction from the page cache really evicts, and the S3 proxy really
delays every request (checked with a real moto server and s3fs)."""

from __future__ import annotations

import time

import numpy as np

from bench.s3_latency import BUCKET, s3_endpoint
from bench.store_read import evict, resident_pages


def test_evict_leaves_no_page_of_a_freshly_written_file_in_the_cache(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(np.random.default_rng(0).bytes(1 << 20))  # dirty pages: fadvise alone would keep them
    path.read_bytes()
    assert resident_pages([path]) > 0
    assert evict([path]) == 0 == resident_pages([path])


def test_the_proxy_adds_its_latency_to_every_request():
    import s3fs

    with s3_endpoint(latency_ms=60) as (direct, proxied):
        fast = s3fs.S3FileSystem(**direct, skip_instance_cache=True)
        slow = s3fs.S3FileSystem(**proxied, skip_instance_cache=True)
        fast.pipe(f"{BUCKET}/x", bytes(10_000))
        assert slow.cat_file(f"{BUCKET}/x", start=0, end=100) == bytes(100)

        def seconds(fs, n=5):
            start = time.perf_counter()
            for _ in range(n):
                fs.cat_file(f"{BUCKET}/x", start=0, end=100)
            return (time.perf_counter() - start) / n

        assert seconds(slow) - seconds(fast) > 0.05
        start = time.perf_counter()  # concurrent requests are delayed once, not one after another
        slow.cat_ranges([f"{BUCKET}/x"] * 8, list(range(0, 800, 100)), list(range(100, 900, 100)))
        assert time.perf_counter() - start < 8 * 0.06
