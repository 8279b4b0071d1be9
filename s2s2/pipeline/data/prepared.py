"""The prepared dataset: every adapter's output, held as arrays, with its split and fingerprint.

Everything downstream (the stack store, both stages, evaluation) consumes a `PreparedDataset`,
never an adapter directly.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from s2s2.pipeline.errors import DataError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Sample:
    """One 2-D training or test case."""

    id: str
    image: np.ndarray  # float32 [C, H, W], intensities scaled to [0, 1]
    mask: np.ndarray  # int64 [H, W], class ids 0..len(class_names)-1
    spacing: tuple[float, float]  # pixel size (rows, cols) in the dataset's spacing unit, for HD95
    class_names: tuple[str, ...]  # class 0 is the background
    modality: str  # e.g. "T1-weighted brain MRI"
    prompt: str  # generator prompt naming the modality and the classes present


@dataclass
class PreparedDataset:
    """A whole dataset in memory: images [N,C,H,W] float32 in [0,1], masks [N,H,W] uint8."""

    name: str
    images: np.ndarray
    masks: np.ndarray
    ids: list[str]
    spacings: np.ndarray  # float32 [N, 2]
    class_names: tuple[str, ...]
    modality: str
    prompt_template: str  # formatted with {modality} and {classes}
    splits: dict[str, list[int]] = field(default_factory=dict)  # split name -> sample indices
    prompt_names: tuple[str, ...] | None = None  # class names in prompts, if they differ from class_names
    cases: list[str] | None = None  # volume (patient) of each sample; None: every sample is its own case
    positions: np.ndarray | None = None  # int [N], slice index in its volume (or on the grid); None: all 0
    thickness: np.ndarray | None = None  # float32 [N], mm to the next slice of its volume; 0: a 2-D image
    spacing_unit: str = "px"  # unit of `spacings`: "mm" when the data says, else original image pixels
    grid: str = ""  # non-empty: datasets with the same grid have slices at the same positions and pixels
    perturbations: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # volume -> rigid motion

    def __post_init__(self) -> None:
        n = len(self.ids)
        self.cases = list(self.ids) if self.cases is None else list(self.cases)
        self.positions = np.zeros(n, np.int32) if self.positions is None else np.asarray(self.positions, np.int32)
        self.thickness = np.zeros(n, np.float32) if self.thickness is None else np.asarray(self.thickness, np.float32)
        if len(self.cases) != n or self.positions.shape != (n,) or self.thickness.shape != (n,):
            raise DataError(f"dataset {self.name}: {n} ids but {len(self.cases)} cases, positions "
                            f"{self.positions.shape} and thickness {self.thickness.shape}")
        if self.images.ndim != 4 or self.masks.ndim != 3:
            raise DataError(f"dataset {self.name}: images must be [N,C,H,W] and masks [N,H,W], "
                            f"got {self.images.shape} and {self.masks.shape}")
        if self.images.shape[0] != n or self.masks.shape[0] != n or self.images.shape[2:] != self.masks.shape[1:]:
            raise DataError(f"dataset {self.name}: {n} ids, images {self.images.shape}, "
                            f"masks {self.masks.shape} disagree")
        if n == 0:
            raise DataError(f"dataset {self.name} is empty", fix="check the data path and the slice filters")
        if self.prompt_names is not None and len(self.prompt_names) != len(self.class_names):
            raise DataError(f"dataset {self.name}: {len(self.prompt_names)} prompt class names for "
                            f"{len(self.class_names)} classes {list(self.class_names)}",
                            fix="give data.prompt_class_names one name per class, class 0 first")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_classes(self) -> int:
        """Number of classes, the background included."""
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        return tuple(int(s) for s in self.images.shape[1:])  # type: ignore[return-value]

    def prompt(self, index: int) -> str:
        """The generator prompt of one sample: the template filled with the classes present."""
        present = sorted(int(c) for c in np.unique(self.masks[index]))
        names = self.prompt_names or self.class_names
        classes = ", ".join(names[c] for c in present)
        return self.prompt_template.format(modality=self.modality, classes=classes)

    def sample(self, index: int) -> Sample:
        """Sample `index` with its mask as int64, its spacing and its prompt."""
        return Sample(
            id=self.ids[index],
            image=self.images[index],
            mask=self.masks[index].astype(np.int64),
            spacing=(float(self.spacings[index][0]), float(self.spacings[index][1])),
            class_names=self.class_names,
            modality=self.modality,
            prompt=self.prompt(index),
        )

    def is_volume_slice(self, index: int) -> bool:
        """Whether sample `index` is a slice of a 3-D volume (it has a thickness), not a 2-D image."""
        return bool(self.thickness[index] > 0)

    def indices(self, split: str) -> list[int]:
        """Sample indices of one split ("train", "val", "test", or "all")."""
        if split == "all":
            return list(range(len(self)))
        if split not in self.splits:
            raise DataError(f"dataset {self.name} has no split {split!r}; it has {sorted(self.splits)}")
        return list(self.splits[split])

    def fingerprint(self) -> str:
        """sha256 over images, masks, geometry, ids, classes and splits: same data, same hash."""
        digest = hashlib.sha256()
        for array in (self.images, self.masks, self.spacings):
            array = np.ascontiguousarray(array)
            digest.update(str((array.dtype.str, array.shape)).encode())
            digest.update(array.tobytes())
        meta = {"ids": self.ids, "classes": list(self.class_names), "splits": self.splits}
        digest.update(json.dumps(meta, sort_keys=True).encode())
        return digest.hexdigest()

    def save(self, folder: str | Path) -> None:
        """Write `arrays.npz` and `meta.json` into `folder` (use inside `atomic_path`)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / "arrays.npz", images=self.images, masks=self.masks, spacings=self.spacings,
                 positions=self.positions, thickness=self.thickness)
        meta = {
            "name": self.name, "ids": self.ids, "class_names": list(self.class_names),
            "modality": self.modality, "prompt_template": self.prompt_template, "splits": self.splits,
            "cases": self.cases, "spacing_unit": self.spacing_unit, "grid": self.grid,
            "perturbations": self.perturbations, "fingerprint": self.fingerprint(),
            "prompt_names": list(self.prompt_names) if self.prompt_names is not None else None,
        }
        (folder / "meta.json").write_text(json.dumps(meta, indent=1))

    @classmethod
    def load(cls, folder: str | Path) -> "PreparedDataset":
        """Read what `save` wrote; an unreadable folder is a DataError saying how to rebuild it."""
        folder = Path(folder)
        try:
            meta = json.loads((folder / "meta.json").read_text())
            with np.load(folder / "arrays.npz") as arrays:
                images, masks, spacings = arrays["images"], arrays["masks"], arrays["spacings"]
                positions, thickness = arrays["positions"], arrays["thickness"]
            return cls(name=meta["name"], images=images, masks=masks, ids=meta["ids"], spacings=spacings,
                       class_names=tuple(meta["class_names"]), modality=meta["modality"],
                       prompt_template=meta["prompt_template"], splits=meta["splits"], cases=meta["cases"],
                       positions=positions, thickness=thickness, spacing_unit=meta["spacing_unit"],
                       grid=meta["grid"], perturbations=meta["perturbations"],
                       prompt_names=tuple(meta["prompt_names"]) if meta.get("prompt_names") else None)
        except (OSError, ValueError, KeyError) as err:
            raise DataError(f"cannot read prepared dataset: {err}", folder,
                            "delete the folder and run `s2s2 data prepare` again") from err
