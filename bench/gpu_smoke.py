"""The production path at the paper's sizes on one GPU, end to end, through the `s2s2` CLI.

1. An SD 2.1-base-sized base with random weights (UNet, VAE f=8, ViT-H-sized text encoder; built
   from the configs in bench/gpu_generate.py, never downloaded), saved as a diffusers folder.
2. `s2s2 finetune` at 512 px, SD locked, bf16 mixed precision, gradient checkpointing, batch 16.
3. `s2s2 generate` of the embedded data's stack at 512 px (K=4, UniPC 20 steps, guidance 9, bf16).
4. `s2s2 train` of each `full` segmenter for S2S2 steps at the paper's batch sizes and sizes:
   TransUNet R50-ViT-B/16 at 224 px (B=24), FCBFormer PVTv2-B3 at 352 px (B=16), U-Net
   EfficientNet-B2 at 192 px (B=32, SLAug). Each trains against a store of the data at its size
   whose stack holds stand-in images (the originals plus noise): a step costs the same whatever
   the pixels, and generating three more stacks would not fit the time.
Recorded per phase: wall seconds, s/step (from the run's own log, first steps left out),
images/s, and the peak device memory in use during the phase (polled). A phase that fails is
recorded with its error and the next one still runs; phases not started within the budget are
skipped. Results: bench/gpu_smoke.json (rendered into BENCHMARKS.md by `python -m bench.report`).

    python bench/gpu_smoke.py              # one CUDA GPU: ~6-9 minutes on an H100/H200
    python bench/gpu_smoke.py --dry-run    # tiny sizes and 2 steps on the CPU (~2 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
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

# (model, size, the paper's batch) for each `full` segmenter; the dry run uses `small` at 64 px.
SEGMENTERS = [("transunet", 224, 24), ("fcbformer", 352, 16), ("unet", 192, 32)]
TRAIN_STEPS, FINETUNE_STEPS, WARMUP_STEPS = 30, 30, 5


class MemoryPoll:
    """Peak device memory in use (all processes) while a phase runs, minus what was in use before."""

    def __init__(self, cuda: bool):
        self.cuda, self.peak, self._stop = cuda, 0, threading.Event()

    def _used(self) -> int:
        import torch

        free, total = torch.cuda.mem_get_info()
        return total - free

    def __enter__(self) -> MemoryPoll:
        if self.cuda:
            self.base = self._used()
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, self._used() - self.base)

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            self._stop.set()
            self._thread.join()

    @property
    def gib(self) -> float | None:
        return round(self.peak / 2**30, 2) if self.cuda else None


def s2s2(args: list[str], log: Path, timeout: float) -> tuple[int, str]:
    """Run one CLI command (exit code, its stderr's tail); output goes to `log`."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with log.open("w") as out:
        try:
            proc = subprocess.run([sys.executable, "-m", "s2s2.cli", *args], stdout=out, stderr=subprocess.STDOUT,
                                  cwd=REPO, env=env, timeout=max(timeout, 1))
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = -9
    return code, log.read_text()[-1500:]


def write_base(folder: Path, dry_run: bool) -> None:
    """The random base as a diffusers Stable Diffusion folder (what `generator.base_model` loads)."""
    import torch

    from bench.gpu_generate import build_parts

    parts = build_parts(dry_run, torch.device("cpu" if dry_run else "cuda"))
    for name, part in parts.items():
        part.save_pretrained(folder / name)
    del parts
    if not dry_run:
        torch.cuda.empty_cache()  # the phases run in their own processes and need the memory


def fill_stand_in_stack(path: Path) -> None:
    """Fill every shard of a fresh store with its originals plus noise (training cost does not
    depend on the pixels)."""
    from s2s2.store.stack_store import StackStore

    store = StackStore.open(path, "r+")
    rng = np.random.default_rng(0)
    for shard in store.pending_shards():
        rows = store.shard_samples(shard)
        originals = store.read_originals(np.arange(rows.start, rows.stop)).astype(np.float32) / 255.0
        stack = originals[:, None] + rng.normal(0, 0.05, (len(rows), store.k, *originals.shape[1:]))
        store.write_shard(shard, np.clip(stack, 0, 1).astype(np.float32))


def steady_seconds_per_step(log_csv: Path) -> float | None:
    """s/step between step WARMUP_STEPS and the last step, from a training run's log.csv."""
    rows = [r for r in csv.DictReader(log_csv.open()) if r.get("seconds")]
    if len(rows) < 2:
        return None
    first = next((r for r in rows if int(r["step"]) >= WARMUP_STEPS), rows[0])
    last = rows[-1]
    steps = int(last["step"]) - int(first["step"])
    return (float(last["seconds"]) - float(first["seconds"])) / steps if steps > 0 else None


def config(out: Path, dry_run: bool) -> dict[str, Any]:
    """The experiment YAML shared by every phase (`--set` overrides per phase)."""
    tiny = dry_run
    return {
        "run_dir": str(out),
        "data": {"size": 64 if tiny else 512, "cache_dir": str(out / "cache")},
        "generator": {"base_model": str(out / "base")},
        "finetune": {"steps": 2 if tiny else FINETUNE_STEPS, "batch_size": 2 if tiny else 16,
                     "mixed_precision": "no" if tiny else "bf16", "gradient_checkpointing": True,
                     "validate_every": 10**6, "checkpoint_every": 10**6, "validation_samples": 1},
        "store": {"k": 2 if tiny else 4, "shard_size": 8},
        "generate": {"scheduler": "unipc", "steps": 2 if tiny else 20, "guidance_scale": 9.0, "workers": 1,
                     "images_per_call": 4 if tiny else 16, "device": "cpu" if tiny else "cuda",
                     "precision": "fp32" if tiny else "bf16"},
        "train": {"steps": 2 if tiny else TRAIN_STEPS, "log_every": 1, "val_every": 10**6, "checkpoint_every": 10**6,
                  "device": "cpu" if tiny else "cuda"},
    }


def run_phases(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every phase in order, each within what is left of the budget."""
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    settings = config(out, args.dry_run)
    cfg_path = out / "smoke.yaml"
    cfg_path.write_text(yaml.safe_dump(settings))
    started = time.monotonic()
    cuda = not args.dry_run
    rows: list[dict[str, Any]] = []

    def left() -> float:
        return args.max_seconds - (time.monotonic() - started)

    def phase(key: str, name: str, command: list[str], result: Any) -> None:
        if left() <= 0:
            rows.append({"phase": name, "status": f"skipped: past the {args.max_seconds:.0f} s budget"})
            return
        t0 = time.monotonic()
        with MemoryPoll(cuda) as memory:
            code, tail = s2s2(command, out / f"{key}.log", left())
        status = "ok" if code == 0 else f"failed (exit {code}): " + " | ".join(tail.strip().splitlines()[-3:])[-400:]
        row = {"phase": name, "status": status, "wall_s": round(time.monotonic() - t0, 1), "peak_gib": memory.gib}
        if status == "ok":
            row.update(result())
        rows.append(row)
        print(json.dumps(row), flush=True)

    base = out / "base"
    if not base.is_dir():
        t0 = time.monotonic()
        write_base(base, args.dry_run)
        rows.append({"phase": "random base written", "status": "ok", "wall_s": round(time.monotonic() - t0, 1)})

    ft, gen = settings["finetune"], settings["generate"]

    def finetune_result() -> dict[str, Any]:
        summary = json.loads((out / "generator" / "s2s2_finetune.json").read_text())
        s_per_step = summary["seconds"] / summary["steps"]
        return {"steps": summary["steps"], "batch": ft["batch_size"], "px": summary["resolution"],
                "s_per_step": round(s_per_step, 3), "images_per_s": round(ft["batch_size"] / s_per_step, 2)}

    phase("finetune", f"finetune {ft['batch_size']}x{settings['data']['size']} px (SD locked, "
                      f"mixed precision {ft['mixed_precision']}, gradient checkpointing)",
          ["finetune", "-c", str(cfg_path), "--overwrite"], finetune_result)

    def generate_result() -> dict[str, Any]:
        text = (out / "generate.log").read_text()
        found = re.findall(r"generated (\d+) images in ([\d.]+) s \(([\d.]+) img/s\)", text)
        return {"images": int(found[-1][0]), "images_per_s": float(found[-1][2])} if found else {}

    phase("generate", f"generate K={settings['store']['k']} (UniPC {gen['steps']} steps, guidance 9, "
                      f"{gen['precision']})", ["generate", "-c", str(cfg_path), "--overwrite"],
          generate_result)

    for model, size, batch in SEGMENTERS:
        if args.dry_run:
            size, batch = 64, 2
        store = out / f"stack-{model}-{size}.zarr"
        sets = ["--set", f"data.size={size}", "--set", f"store.path={store}", "--set", f"model.name={model}",
                "--set", f"model.preset={'small' if args.dry_run else 'full'}", "--set", f"train.batch_size={batch}",
                "--set", f"train.name={model}", "--set", "train.stack=true"]
        name = f"train {model} {'small' if args.dry_run else 'full'} {size} px B={batch} (S2S2)"
        if left() > 0:
            shutil.rmtree(out / "train" / model, ignore_errors=True)  # a rerun trains afresh
            code, _ = s2s2(["stack", "init", "-c", str(cfg_path), *sets, "--overwrite"], out / f"init-{model}.log", left())
            if code == 0:
                fill_stand_in_stack(store)

        def train_result(model: str = model, batch: int = batch) -> dict[str, Any]:
            log_csv = out / "train" / model / "log.csv"
            s_per_step = steady_seconds_per_step(log_csv)
            return {"steps": settings["train"]["steps"], "batch": batch,
                    "s_per_step": round(s_per_step, 4) if s_per_step else None,
                    "images_per_s": round(2 * batch / s_per_step, 1) if s_per_step else None}

        phase(f"train-{model}", name, ["train", "-c", str(cfg_path), *sets], train_result)
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes, 2 steps, on the CPU")
    parser.add_argument("--out-dir", type=Path, default=REPO / "runs" / "gpu-smoke", help="work folder")
    parser.add_argument("--max-seconds", type=float, default=540.0, help="start no new phase after this long")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default bench/gpu_smoke.json on a GPU)")
    args = parser.parse_args(argv)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine, or pass --dry-run for the CPU check")
    started = time.monotonic()
    rows = run_phases(args)
    result = {
        "device": torch.cuda.get_device_name() if not args.dry_run else "CPU (dry run)",
        "date": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "command": "python bench/gpu_smoke.py" + (" --dry-run" if args.dry_run else ""),
        "torch": torch.__version__, "seconds_total": round(time.monotonic() - started, 1), "rows": rows,
    }
    text = json.dumps(result, indent=1)
    print(text)
    out = args.out or (None if args.dry_run else REPO / "bench" / "gpu_smoke.json")
    if out is not None:
        out.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
