"""What a run records about its inputs, so that its folder answers "which stack, which generator,
which data, which code" from its own files: `summary.json` (training) and `metrics.json`
(evaluation) hold the `run_provenance` of the run.

Fingerprints are sha256 over canonical JSON. A store's manifest fingerprint leaves out its
timestamps, status and the software version that wrote it, so it names what the stack holds
(dataset, layout, K, generator), not when it was made.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from s2s2.pipeline.data.prepared import PreparedDataset
    from s2s2.store.stack_store import StackStore

_VOLATILE_MANIFEST_FIELDS = {"created", "updated", "status", "software_version"}


def json_fingerprint(value: Any) -> str:
    """sha256 of `value` as canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _git(*args: str) -> str | None:
    """Output of a git command in the source folder of this package, or None (no git, not a checkout)."""
    try:
        done = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def code_version() -> dict[str, Any]:
    """The s2s2 package version, and the git commit of its source (with whether tracked files
    differ from it) when it runs from a checkout; None where unknown."""
    try:
        package = version("s2s2")
    except PackageNotFoundError:
        package = None
    commit = _git("rev-parse", "HEAD")
    changes = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"package": package, "git_commit": commit, "git_dirty": None if changes is None else bool(changes)}


def store_provenance(store: StackStore, served: Sequence[int], ks_served: Sequence[int], n_train: int) -> dict[str, Any]:
    """The stack store a training run read: its path, fingerprints of its manifest and of the
    generator binding in force, the ControlNet weights' hashes, K, the ks served, and how many of
    the `n_train` training samples were served (`served`)."""
    manifest = store.manifest
    binding = store.current_binding() if isinstance(store.path, (str, Path)) else None
    generator = store.bound_generator() if binding is not None else manifest.generator
    return {
        "path": str(store.path),
        "manifest_fingerprint": json_fingerprint(manifest.model_dump(mode="json", exclude=_VOLATILE_MANIFEST_FIELDS)),
        "dataset_fingerprint": manifest.dataset_fingerprint,
        "generator_binding": None if binding is None else {"seq": binding.seq, "ready": binding.ready,
                                                            "fingerprint": json_fingerprint(binding.identity)},
        "controlnet_hashes": [] if generator is None else [s.identity.controlnet_hash for s in generator.sources
                                                           if s.identity.kind == "controlnet"],
        "k": manifest.k,
        "ks_served": sorted(int(k) for k in ks_served),
        "samples_served": len(served),
        "samples_train": n_train,
    }


def run_provenance(dataset: PreparedDataset, stack: dict[str, Any] | None) -> dict[str, Any]:
    """What a run was made from: the code version, the prepared data's fingerprint and the stack
    store it read (`store_provenance`; None for a run without stack images)."""
    return {"code": code_version(), "data": {"name": dataset.name, "fingerprint": dataset.fingerprint()},
            "stack": stack}


def evaluation_provenance(run_folder: Path, train_data: PreparedDataset,
                          test_sets: dict[str, PreparedDataset]) -> dict[str, Any]:
    """`run_provenance` of an evaluation: the stack the weights were trained on (from the run's
    summary.json; None without one), the training data, the code now, and each test set's fingerprint."""
    try:
        trained = json.loads((Path(run_folder) / "summary.json").read_text()).get("provenance") or {}
    except (OSError, ValueError):
        trained = {}
    return {**run_provenance(train_data, trained.get("stack")), "trained_with_code": trained.get("code"),
            "test_data": {name: dataset.fingerprint() for name, dataset in test_sets.items()}}
