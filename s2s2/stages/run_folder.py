"""Where a training run lives and what may happen to it: {run_dir}/train/{train.name}, read by
`s2s2 train` and `s2s2 evaluate`. A new run refuses a folder that holds another run's outputs unless
asked to replace it (--overwrite); a resumed run refuses a config that would change its weights, its
learning-rate schedule (train.steps) or its model selection (evaluate.eval_classes)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from s2s2.pipeline.config.base import dump_config
from s2s2.pipeline.config.project import ProjectConfig
from s2s2.pipeline.config.train import is_plain_name
from s2s2.pipeline.errors import ConfigError, S2S2Error

# Files of a run folder: a new run refuses to replace them unless asked (--overwrite).
RUN_OUTPUTS = ("config.yaml", "model.safetensors", "last.safetensors", "state.pt", "log.csv", "progress.png",
               "summary.json", "metrics.json", "predictions.png", "tensorboard")
# Fields that may change between a run and its --resume (they do not change the weights, nor which
# checkpoint is selected). Not train.steps: the learning-rate schedule is a function of it, so the rate
# would jump; not evaluate.eval_classes: it decides which validation score selects model.safetensors.
RESUMABLE_CHANGES = {"train.max_seconds", "train.num_workers", "train.device", "train.val_every",
                     "train.log_every", "train.checkpoint_every"}
WHY_NOT = {"train.steps": "the learning-rate schedule is a function of train.steps, so the rate would jump",
           "evaluate.eval_classes": "it decides which validation score selects model.safetensors"}


def run_folder(cfg: ProjectConfig) -> Path:
    """Where a run's outputs go: {run_dir}/train/{train.name}, refused unless it resolves to a folder
    directly inside {run_dir}/train (a plain name; no link that leads elsewhere)."""
    root = Path(cfg.run_dir) / "train"
    folder = root / cfg.train.name
    if not is_plain_name(cfg.train.name) or folder.resolve().parent != root.resolve():
        raise ConfigError(f"train.name={cfg.train.name!r} puts the run at {folder.resolve()}, outside {root}; fix: "
                          "use a plain name (no path separators, not empty, not '.' or '..') that is not a link "
                          "to another folder")
    return folder


def is_atomic_temp(path: Path) -> bool:
    """A temporary of an interrupted atomic write (`s2s2.pipeline.atomic`): replaced by the next write."""
    return path.name.startswith(".") and path.name.endswith(".tmp")


def config_differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts."""
    keys = sorted(set(old) | set(new))
    out: list[str] = []
    for key in keys:
        a, b, dotted = old.get(key), new.get(key), f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, dotted + ".")
        elif a != b:
            out.append(dotted)
    return out


def start_run_folder(cfg: ProjectConfig, resume: bool, overwrite: bool) -> Path:
    """Prepare the run folder and write the resolved config.yaml into it; returns the folder.

    Fresh run: refuse a folder with another run's outputs unless `overwrite` (then clear them).
    Resume: refuse a config that would change the weights, the schedule or the model selection."""
    folder = run_folder(cfg)
    saved = folder / "config.yaml"
    if resume and overwrite:
        raise ConfigError("--resume continues a run and --overwrite replaces it: pass one of them")
    if resume:
        if not saved.is_file():
            raise S2S2Error(f"cannot resume: {saved} does not exist; fix: train without --resume first")
        changed = [k for k in config_differences(yaml.safe_load(saved.read_text()), cfg.model_dump(mode="json"))
                   if k not in RESUMABLE_CHANGES and (k == "evaluate.eval_classes" or not k.startswith("evaluate."))]
        if changed:
            why = "".join(f" ({k}: {WHY_NOT[k]})" for k in changed if k in WHY_NOT)
            raise ConfigError(f"cannot resume {folder} with a different config: {', '.join(changed)} changed "
                              f"(see {saved}){why}; a resumed run must be the run it continues; fix: use the same "
                              "settings (a longer run: train again under another train.name, or --overwrite)")
    else:
        foreign = sorted(p.name for p in folder.iterdir() if p.name not in RUN_OUTPUTS
                         and not is_atomic_temp(p)) if folder.is_dir() else []
        if foreign:
            raise ConfigError(f"{folder} holds files that are not a run's ({', '.join(foreign[:5])}"
                              f"{', ...' if len(foreign) > 5 else ''}); fix: choose another --name (train.name), "
                              "or move those files away")
        existing = [name for name in RUN_OUTPUTS if (folder / name).exists()]
        if existing and not overwrite:
            raise ConfigError(f"{folder} already holds a run ({', '.join(existing)}); fix: pass --overwrite to "
                              "replace it, --resume to continue it, or choose another --name")
        for name in existing:
            remove_output(folder / name)
    folder.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, saved)
    return folder


def remove_output(path: Path) -> None:
    """Remove one output of a run: a file, or a folder of them (the TensorBoard logs)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def discard_failed_start(folder: Path) -> None:
    """Remove what a fresh run wrote before its first checkpoint (it cannot be resumed, and would make
    the rerun refuse the folder); a run with a checkpoint is kept for --resume."""
    if (folder / "last.safetensors").is_file() or not folder.is_dir():
        return
    for name in RUN_OUTPUTS:
        if (folder / name).exists():
            remove_output(folder / name)
    if not any(folder.iterdir()):
        folder.rmdir()
