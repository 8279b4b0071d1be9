"""Bytes read and pairs/s of the stack-store reader against the authors' layout.

The authors keep one `.npz` per case holding the original, the mask and all K = 16 generated images
in their dtypes (float32 for CT/MRI at 192 px, 1 channel; uint8 RGB at 512 px for endoscopy), and
load it to use one image. Our training reader takes the original from the prepared data (in memory,
as training does) and reads one stack chunk from a sharded Zarr store. Both are read by the same DataLoader (same workers, batch size and sample order), with
a cold page cache (`/proc/sys/vm/drop_caches`, falling back to `posix_fadvise(DONTNEED)` on every
file) and warm. Bytes are what the process really read (`rchar` of `/proc/self/io`).

    python -m bench.store_read            # full sizes, a few minutes
    python -m bench.store_read --quick    # seconds
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

AUTHORS_ROWS = ("ct_mri_192", "endoscopy_512")


@dataclass(frozen=True)
class Layout:
    """One benchmark row: image geometry, K, the authors' dtype, and how many cases."""

    name: str
    size: int
    channels: int
    k: int
    npz_dtype: str
    n_cases: int
    shard_size: int


def layouts(quick: bool) -> list[Layout]:
    """The authors' two resolutions and the small 128 px K=4 row (fewer cases when quick)."""
    scale = 8 if quick else 1
    return [
        Layout("ct_mri_192", 192, 1, 16, "float32", max(96 // scale, 12), 8),
        Layout("endoscopy_512", 512, 3, 16, "uint8", max(40 // scale, 12), 4),
        Layout("small_128_k4", 128, 3, 4, "uint8", max(200 // scale, 24), 8),
    ]


def synthetic_images(n: int, channels: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Float images in [0,1] with structure (smooth blocks) and mild noise, so codecs see
    realistic rather than best- or worst-case content."""
    coarse = rng.random((n, channels, 16, 16), dtype=np.float32)
    blocks = np.repeat(np.repeat(coarse, size // 16, axis=2), size // 16, axis=3)
    return np.clip(blocks + rng.normal(0, 0.015, size=blocks.shape).astype(np.float32), 0, 1)


def build(root: Path, layout: Layout, seed: int = 0) -> tuple[Any, str, list[Path]]:
    """Write the same cases both ways: our store (uint8, zstd) and one npz per case; returns the
    prepared dataset (the training reader takes the originals from it), the store and the npz files."""
    from s2s2.pipeline.data.prepared import PreparedDataset
    from s2s2.store.stack_store import StackStore

    rng = np.random.default_rng(seed)
    n, c, s, k = layout.n_cases, layout.channels, layout.size, layout.k
    masks = (rng.random((n, 16, 16)) * 4).astype(np.uint8).repeat(s // 16, axis=1).repeat(s // 16, axis=2)
    dataset = PreparedDataset(name=layout.name, images=synthetic_images(n, c, s, rng), masks=masks,
                              ids=[f"case{i:04d}" for i in range(n)], spacings=np.ones((n, 2), np.float32),
                              class_names=("background", "a", "b", "c"), modality="synthetic",
                              prompt_template="{modality} {classes}", splits={"train": list(range(n))})
    store_path = str(root / f"{layout.name}.zarr")
    store = StackStore.create(store_path, dataset, k=k, shard_size=layout.shard_size, overwrite=True)
    files = []
    for shard in range(store.num_shards):
        rows = store.shard_samples(shard)
        stack = synthetic_images(len(rows) * k, c, s, rng).reshape(len(rows), k, c, s, s)
        store.write_shard(shard, stack)
        for r, i in enumerate(rows):
            path = root / f"{layout.name}_npz" / f"case{i:04d}.npz"
            path.parent.mkdir(parents=True, exist_ok=True)
            as_dtype = (lambda a: a.astype(np.float32)) if layout.npz_dtype == "float32" else (
                lambda a: np.rint(a * 255).astype(np.uint8))
            np.savez(path, image=as_dtype(dataset.images[i]), mask=masks[i], stack=as_dtype(stack[r]))
            files.append(path)
    return dataset, store_path, files


class NpzPairDataset:
    """The authors' layout: load a case's npz (all K images) to use one stack image."""

    def __init__(self, files: list[Path], k: int, seed: int):
        self.files, self.k, self.seed = files, k, seed

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, Any]:
        import torch

        k = int(np.random.default_rng([self.seed, 0, i]).integers(self.k))
        with np.load(self.files[i]) as case:
            image, stack, mask = case["image"], case["stack"], case["mask"]
        scale = np.float32(1 / 255) if image.dtype == np.uint8 else np.float32(1)
        return {"original": torch.from_numpy(image.astype(np.float32) * scale),
                "stack_image": torch.from_numpy(stack[k].astype(np.float32) * scale),
                "mask": torch.from_numpy(mask.astype(np.int64)), "k": k, "index": i}


def _rchar() -> int:
    with open("/proc/self/io") as io:
        return next(int(line.split()[1]) for line in io if line.startswith("rchar:"))


def drop_page_cache(files: list[Path]) -> str:
    """Evict the files from the page cache; returns the method that was used."""
    method = "fadvise"
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as control:
            control.write("3\n")
        method = "drop_caches+fadvise"
    except OSError:
        pass
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return method


def bytes_per_pair(dataset: Any, n: int) -> float:
    """Bytes read by this process per item, over the first `n` items (no workers)."""
    dataset[0]  # open handles and read metadata outside the measurement
    start = _rchar()
    for i in range(n):
        dataset[i]
    return (_rchar() - start) / n


def pairs_per_second(dataset: Any, files: list[Path], cold: bool, workers: int, batch: int) -> tuple[float, str]:
    """One epoch through a DataLoader in a fixed shuffled order; returns (pairs/s, cache method).

    The rate is taken from the first batch to the last, so the workers' start-up (fork, opening
    files) is left out: it is paid once per run, not per pair."""
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    method = drop_page_cache(files) if cold else "warm"
    sampler = RandomSampler(range(len(dataset)), generator=torch.Generator().manual_seed(0))
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers,
                        multiprocessing_context="fork" if workers else None)
    arrivals = [(time.perf_counter(), len(batch["k"])) for batch in loader]
    pairs = sum(n for _, n in arrivals[1:])
    return pairs / (arrivals[-1][0] - arrivals[0][0]), method


def measure_layout(layout: Layout, root: Path, timings: bool, repeats: int, workers: int = 2,
                   batch: int = 4) -> dict[str, Any]:
    """Build both layouts of one row and measure bytes, and pairs/s cold and warm: `repeats`
    alternating epochs of each reader, median reported (the machine is shared and noisy)."""
    from s2s2.stages.train.datasets import StackPairDataset

    dataset, store_path, npz_files = build(root, layout)
    ours = StackPairDataset(dataset, store_path, seed=0)
    theirs = NpzPairDataset(npz_files, layout.k, seed=0)
    store_files = [p for p in Path(store_path).rglob("*") if p.is_file()]
    n = min(len(npz_files), 16)
    drop_page_cache(store_files + npz_files)
    row: dict[str, Any] = {
        "layout": layout.name, "px": layout.size, "C": layout.channels, "K": layout.k,
        "npz dtype": layout.npz_dtype, "cases": layout.n_cases,
        "bytes/pair ours": bytes_per_pair(ours, n), "bytes/pair npz": bytes_per_pair(theirs, n),
    }
    row["bytes ratio"] = row["bytes/pair npz"] / row["bytes/pair ours"]
    if timings:
        runs: dict[str, list[float]] = {}
        for _ in range(repeats):
            for cache in ("cold", "warm"):
                for name, dataset, files in (("ours", ours, store_files), ("npz", theirs, npz_files)):
                    rate, method = pairs_per_second(dataset, files, cache == "cold", workers, batch)
                    runs.setdefault(f"pairs/s {name} {cache}", []).append(rate)
                    if cache == "cold":
                        row["cold cache via"] = method
        for key, rates in runs.items():
            row[key] = float(np.median(rates))
        for cache in ("cold", "warm"):
            row[f"speedup {cache}"] = row[f"pairs/s ours {cache}"] / row[f"pairs/s npz {cache}"]
        row["raw pairs/s"] = runs
    return row


def measure(quick: bool = False, timings: bool = True) -> list[dict[str, Any]]:
    """Every row, each built in a fresh temporary folder that is removed afterwards."""
    rows = []
    for layout in layouts(quick):
        with tempfile.TemporaryDirectory(prefix="s2s2-bench-store-") as tmp:
            rows.append(measure_layout(layout, Path(tmp), timings, repeats=1 if quick else 3))
    return rows


def _authors_min(rows: list[dict[str, Any]], key: str) -> float:
    return float(min(row[key] for row in rows if row["layout"] in AUTHORS_ROWS))


def measure_read_reduction(quick: bool = False) -> dict[str, Any]:
    """p2: bytes read per pair, authors' npz / our store (worst of the authors' two resolutions)."""
    rows = measure(quick, timings=False)
    return {"value": _authors_min(rows, "bytes ratio"), "rows": rows,
            "note": "bytes = rchar of /proc/self/io per item; our store is uint8 + zstd; npz uncompressed "
                    "(np.savez) in the authors' dtypes; value = the smaller ratio of the 192 px and 512 px rows"}


def measure_loader_speedup(quick: bool = False) -> dict[str, Any]:
    """p3: pairs/s of our reader / the npz reader, cold page cache, DataLoader with 2 workers."""
    rows = measure(quick, timings=True)
    raw = {row["layout"]: row.pop("raw pairs/s") for row in rows}
    return {"value": _authors_min(rows, "speedup cold"), "rows": rows, "raw_pairs_per_s": raw,
            "note": "median of alternating shuffled epochs (3 each; 1 when quick), DataLoader(batch 4, 2 fork "
                    "workers), no augmentation, rate from the first batch to the last (worker start-up left out); "
                    "value = the smaller cold speedup of the 192 px and 512 px rows"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few cases: runs in seconds")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    rows = measure(args.quick, timings=True)
    keys = [key for key in rows[0] if key != "raw pairs/s"]
    print(" | ".join(keys))
    for row in rows:
        print(" | ".join(f"{row[k]:.4g}" if isinstance(row[k], float) else str(row[k]) for k in keys))


if __name__ == "__main__":
    main()
