"""The production path at its real size on the CPU, once: proof that it runs end to end, with its cost.

1. A folder dataset of a few 512 px pictures with binary masks (drawn here, seeded).
2. An SD 2.1-base-sized base with random weights (UNet 866M, VAE f=8, ViT-H-sized text encoder;
   the configs in bench/gpu_generate.py, never downloaded), saved as a diffusers folder.
3. `s2s2 finetune`: 2 steps at 512 px, batch 1, SD locked (a ControlNet from the UNet, AdamW);
   it saves the fine-tuned pipeline as a diffusers folder.
4. `s2s2 generate`: reloads that folder and makes the one K=2 shard of the training masks
   (UniPC, 2 sampler steps, guidance 9) into a store, one dask worker.
5. `s2s2 train`: a `full`-preset U-Net (EfficientNet-B2) trained S2S2-style for 2 steps from that store.
Each step runs as its own process (the same commands a user types); recorded per phase: wall seconds,
seconds per step, and the peak resident memory of the process tree (polled every 0.2 s: the CLI and
any dask workers it starts). A phase whose tree passes --max-rss-gib is stopped and reported as such
(the machine is shared). Results: bench/cpu_full_path.json and BENCHMARKS.md.

    python bench/cpu_full_path.py                   # ~13 GiB peak RSS; an hour or more on 2 shared cores
    python bench/cpu_full_path.py --train-masks 2   # 2 training masks to generate instead of 7
    python bench/cpu_full_path.py --dry-run         # tiny sizes, the same phases (~2 minutes)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

PICTURES, SIZE, K = 10, 512, 2


class TreeMemory:
    """Peak summed RSS of a process and all its descendants, polled; stops the tree past a cap."""

    def __init__(self, proc: subprocess.Popen, cap_bytes: float):
        self.proc, self.cap, self.peak, self.capped = proc, cap_bytes, 0, False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _tree(self) -> list[Any]:
        import psutil

        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def _run(self) -> None:
        import psutil

        while not self._stop.wait(0.2):
            total = 0
            tree = self._tree()
            for process in tree:
                try:
                    total += process.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            self.peak = max(self.peak, total)
            if total > self.cap and not self.capped:
                self.capped = True
                for process in reversed(tree):  # only this phase's own processes
                    try:
                        process.kill()
                    except psutil.NoSuchProcess:
                        pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run_polled(command: list[str], log: Path, cap_gib: float) -> dict[str, Any]:
    """Run one command with its output in `log`: exit code, wall seconds, peak tree RSS (GiB)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}
    t0 = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        memory = TreeMemory(proc, cap_gib * 2**30)
        code = proc.wait()
        memory.stop()
    status = "ok" if code == 0 else f"failed (exit {code}): " + " | ".join(log.read_text().strip().splitlines()[-3:])[-400:]
    if memory.capped:
        status = f"stopped: process tree passed {cap_gib:g} GiB"
    return {"status": status, "wall_s": round(time.monotonic() - t0, 1), "peak_rss_gib": round(memory.peak / 2**30, 2)}


def write_pictures(root: Path, n: int, size: int) -> None:
    """`n` RGB pictures with one bright ellipse each and its binary mask (the folder adapter's layout)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size] / size
    for i in range(n):
        cy, cx, ry, rx = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.1, 0.25), rng.uniform(0.1, 0.25)
        mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        image = rng.normal(60, 15, (size, size, 3)) + mask[..., None] * rng.uniform(80, 150, 3)
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / "images" / f"p{i:02d}.png")
        Image.fromarray((mask * 255).astype(np.uint8)).save(root / "masks" / f"p{i:02d}.png")


def config(out: Path, dry_run: bool) -> dict[str, Any]:
    """The experiment YAML every phase reads."""
    size = 64 if dry_run else SIZE
    return {
        "run_dir": str(out),
        "data": {"adapter": "folder", "root": str(out / "pictures"), "size": size, "cache_dir": str(out / "cache")},
        "generator": {"base_model": str(out / "base")},
        "finetune": {"steps": 2, "batch_size": 1, "validate_every": 10**6, "checkpoint_every": 10**6,
                     "validation_samples": 1},
        "store": {"k": K, "shard_size": 8},
        "generate": {"scheduler": "unipc", "steps": 2, "guidance_scale": 9.0, "workers": 1, "images_per_call": K,
                     "device": "cpu", "precision": "fp32"},
        "model": {"name": "unet", "preset": "small" if dry_run else "full"},
        "train": {"stack": True, "steps": 2, "batch_size": 2, "log_every": 1, "val_every": 10**6,
                  "checkpoint_every": 10**6, "device": "cpu"},
    }


def train_step_seconds(log_csv: Path) -> list[float]:
    """Seconds of each logged training step, from the run's log.csv (cumulative `seconds` column)."""
    rows = [r for r in csv.DictReader(log_csv.open()) if r.get("seconds")]
    times = [float(r["seconds"]) for r in rows]
    return [round(b - a, 2) for a, b in zip([0.0, *times], times)]


PHASES = ("base", "finetune", "generate", "train")


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every phase in order from `args.from_phase` (earlier ones' outputs reused from the work
    folder); a failed phase stops the ones that need its output."""
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    settings = config(out, args.dry_run)
    if args.train_masks:  # fewer training masks to generate: the other pictures go to validation
        settings["data"].update(val_fraction=1 - args.train_masks / PICTURES - 0.1, test_fraction=0.1)
    cfg_path = out / "full_path.yaml"
    cfg_path.write_text(yaml.safe_dump(settings))
    write_pictures(out / "pictures", PICTURES, settings["data"]["size"])
    python, cli = sys.executable, [sys.executable, "-m", "s2s2.cli"]
    rows: list[dict[str, Any]] = []
    skip = set(PHASES[:PHASES.index(args.from_phase)])

    def phase(name: str, command: list[str], log: str) -> bool:
        key = log.removesuffix(".log")
        if key in skip:
            return True
        row = {"phase": name, **run_polled(command, out / log, args.max_rss_gib)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        return row["status"] == "ok"

    base = ("from pathlib import Path; import torch; torch.set_num_threads(int(%r)); "
            "from bench.gpu_generate import build_parts; "
            "[p.save_pretrained(Path(%r) / n) for n, p in build_parts(%r, torch.device('cpu')).items()]"
            % (os.environ.get("OMP_NUM_THREADS", "1"), str(out / "base"), args.dry_run))
    if not phase("random SD 2.1-base-sized base built and saved" if not args.dry_run else "tiny base saved",
                 [python, "-c", base], "base.log"):
        return rows
    if not phase("finetune: 2 steps, 512 px, batch 1, SD locked, fp32", [*cli, "finetune", "-c", str(cfg_path),
                                                                          "--overwrite"], "finetune.log"):
        return rows
    if "finetune" not in skip:
        summary = json.loads((out / "generator" / "s2s2_finetune.json").read_text())
        rows[-1].update(steps=summary["steps"], s_per_step=round(summary["seconds"] / summary["steps"], 1))
    if "generate" not in skip:
        shutil.rmtree(out / "stack.zarr", ignore_errors=True)  # a store of an earlier split or run
    if not phase(f"generate: reload the saved pipeline, one K={K} shard, UniPC 2 steps, guidance 9",
                 [*cli, "generate", "-c", str(cfg_path), "--overwrite"], "generate.log"):
        return rows
    import re

    found = re.findall(r"generated (\d+) images in ([\d.]+) s", (out / "generate.log").read_text())
    if found and "generate" not in skip:
        rows[-1].update(images=int(found[-1][0]), s_per_image=round(float(found[-1][1]) / int(found[-1][0]), 1))
    if phase("train: full-preset U-Net (EfficientNet-B2), S2S2, 2 steps, batch 2 at 512 px",
             [*cli, "train", "-c", str(cfg_path), "--overwrite"], "train.log"):
        log_csv = next((out / "train").rglob("log.csv"), None)
        if log_csv is not None:
            rows[-1].update(step_seconds=train_step_seconds(log_csv))
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes, the same phases")
    parser.add_argument("--out-dir", type=Path, default=REPO / "runs" / "cpu-full-path", help="work folder")
    parser.add_argument("--max-rss-gib", type=float, default=18.0, help="stop a phase whose processes pass this")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default bench/cpu_full_path.json)")
    parser.add_argument("--from-phase", choices=PHASES, default="base", help="reuse the work folder's earlier phases")
    parser.add_argument("--train-masks", type=int, default=None,
                        help="split the pictures so that about this many are training masks (fewer to generate)")
    args = parser.parse_args(argv)
    import torch

    started = time.monotonic()
    rows = run(args)
    result = {
        "date": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "command": "python bench/cpu_full_path.py" + (" --dry-run" if args.dry_run else "") + (
            f" --from-phase {args.from_phase}" if args.from_phase != "base" else "") + (
            f" --train-masks {args.train_masks}" if args.train_masks else ""),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                   f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
        "torch": torch.__version__, "seconds_total": round(time.monotonic() - started, 1), "rows": rows,
    }
    text = json.dumps(result, indent=1)
    print(text)
    out = args.out or (None if args.dry_run else REPO / "bench" / "cpu_full_path.json")
    if out is not None:
        out.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
