"""The dataset adapters by name: for each `data.adapter`, the function that reads the data into a
`RawDataset`, what identifies its source files (part of the prepared-data cache key), and the licence
notice that must accompany data built from third-party files."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s2s2.pipeline.config.data import FileSource, Spm152Data
from s2s2.pipeline.data.acdc import load_acdc
from s2s2.pipeline.data.folder import load_folder
from s2s2.pipeline.data.icbm152 import ICBM152_NOTICE, icbm152_source, load_icbm152
from s2s2.pipeline.data.nnunet import load_nnunet
from s2s2.pipeline.data.npz import load_npz
from s2s2.pipeline.data.raw import RawDataset
from s2s2.pipeline.data.slaug import load_slaug
from s2s2.pipeline.data.spm152 import SPM_NOTICE, SPM_WHEEL_SHA256, load_spm152
from s2s2.pipeline.data.synapse import load_synapse


@dataclass(frozen=True)
class Adapter:
    """How one adapter reads its data (`load`), identifies its input without reading it (`source`), and
    the notice its data carries (None: none needed)."""

    load: Callable[[Any], RawDataset]
    source: Callable[[Any], dict[str, object]]
    notice: str | None = None


def file_listing(root: Path) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime_ns) of every file under `root`: changes when any file does."""
    if not root.is_dir():
        return []
    return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in root.rglob("*") if p.is_file())


def root_source(cfg: FileSource) -> dict[str, object]:
    """A folder dataset's input: its resolved root and the listing of every file below it."""
    root = Path(str(cfg.root)).resolve()
    return {"root": str(root), "files": file_listing(root)}


def spm152_source(cfg: Spm152Data) -> dict[str, object]:
    """The SPM wheel's checksum, and the training template's identity when sliced on its grid."""
    reference = icbm152_source() if cfg.resolved_grid() == "icbm152" else {}
    return {"sha256": SPM_WHEEL_SHA256, "reference": reference}


ADAPTERS: dict[str, Adapter] = {
    "icbm152": Adapter(load_icbm152, lambda cfg: icbm152_source(), ICBM152_NOTICE),
    "spm152": Adapter(load_spm152, spm152_source, SPM_NOTICE),
    "folder": Adapter(load_folder, root_source),
    "nnunet": Adapter(load_nnunet, root_source),
    "npz": Adapter(load_npz, root_source),
    "synapse": Adapter(load_synapse, root_source),
    "acdc": Adapter(load_acdc, root_source),
    "slaug": Adapter(load_slaug, root_source),
}
