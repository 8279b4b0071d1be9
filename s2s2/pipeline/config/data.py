"""Dataset configuration: which data to read, how to cut, scale, resize and split it.

`DataConfig` is a union discriminated by `adapter`: one model per adapter holding the fields that
adapter reads, built from small shared parts (every adapter: `DataBase`; files under a root:
`FileSource`; 3-D volumes: `VolumeSource`; a seeded split: `SeededSplit`). A field of another adapter
is an error that names the adapter. Every default of the data side lives here; the adapters in
`s2s2.pipeline.data` only read them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Optional, Union

from pydantic import (Discriminator, Field, Tag, TypeAdapter, ValidationError, ValidatorFunctionWrapHandler,
                      WrapValidator, field_validator, model_validator)

from s2s2.pipeline.config.base import StrictModel, relocated

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
SPM_MODALITY: dict[str, str] = {
    "T1": "T1-weighted brain MRI",
    "T2": "T2-weighted brain MRI",
    "PD": "proton-density-weighted brain MRI",
}


DEFAULT_BINARY_THRESHOLD = 127  # 0/255 masks: foreground where value > this, unless data.binary_threshold says


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


class DataBase(StrictModel):
    """What every adapter has: the adapter's name, the size and resizing of slices, classes and prompt
    wording, the split evaluated as an out-of-domain set, and the cache folder."""

    adapter: str
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
    class_names: Optional[tuple[str, ...]] = Field(
        None, description="class names, class 0 first (the background); default per adapter "
        "(nnunet: from dataset.json labels)")
    modality: Optional[str] = Field(None, description="modality named in prompts; default per adapter")
    prompt_template: str = Field("A {modality} slice showing {classes}",
                                 description="generator prompt; {modality} and {classes} are filled in")
    prompt_class_names: Optional[tuple[str, ...]] = Field(
        None, description="names of the classes in prompts only, class 0 first; default: class_names")
    keep_aspect: bool = Field(True, description="pad images to a square (with background) before "
                              "resizing, so anatomy is not stretched")
    channels: Optional[Literal[1, 3]] = Field(None, description="1 (grey) or 3 (RGB); default: 3 if any "
                                              "image of the dataset has colour, else 1")
    cache_dir: Path = Field(Path(".cache/s2s2"), description="prepared datasets and fetched files live here")

    default_classes: ClassVar[Optional[tuple[str, ...]]] = None
    default_modality: ClassVar[str] = "medical image"

    @field_validator("size")
    @classmethod
    def _size_range(cls, value: int) -> int:
        if not 16 <= value <= 1024:
            raise ValueError(f"size must be between 16 and 1024 pixels, got {value}")
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

    @model_validator(mode="after")
    def _prompt_names_match(self) -> "DataBase":
        if self.prompt_class_names is not None and self.class_names is not None and \
                len(self.prompt_class_names) != len(self.class_names):
            raise ValueError(f"prompt_class_names has {len(self.prompt_class_names)} names, class_names "
                             f"{len(self.class_names)}: give one prompt name per class")
        return self

    def default_class_names(self) -> Optional[tuple[str, ...]]:
        """The configured class names, else the adapter's (None: nnunet reads them from dataset.json)."""
        return self.class_names or self.default_classes

    def resolved_modality(self, from_data: Optional[str] = None) -> str:
        """The configured modality, else what the data says, else the adapter's default."""
        return self.modality or from_data or self.default_modality

    def cache_key_fields(self) -> dict[str, Any]:
        """Every field any adapter has (JSON values): this config's own over the defaults of the others.

        The prepared-data cache is keyed by this flat layout, which is the one the single flat data config
        had, so caches and the stores made from them stay valid across the split into per-adapter models."""
        fields = {**FLAT_DEFAULTS, **self.model_dump(mode="json")}
        if fields.get("binary_threshold") is None:  # reads masks as the default threshold does (or refuses them)
            fields["binary_threshold"] = DEFAULT_BINARY_THRESHOLD
        return fields


class SeededSplit(DataBase):
    """Adapters without an official split: cases (or slabs of one volume) are split by a seeded draw."""

    val_fraction: float = Field(0.1, description="share of cases (or slabs of one volume) for validation")
    test_fraction: float = Field(0.2, description="share of cases (or slabs of one volume) for testing")
    slab_slices: int = Field(12, description="one volume is split into contiguous slabs of this many "
                             "slices (adjacent slices are near duplicates, so they are never interleaved)")
    slab_gap: int = Field(3, description="slices dropped at each border between slabs of different splits")
    seed: int = Field(0, description="seed of the split")

    @field_validator("slab_slices")
    @classmethod
    def _slab_positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"slab_slices must be >= 1, got {value}")
        return value

    @field_validator("slab_gap")
    @classmethod
    def _gap_non_negative(cls, value: int) -> int:
        if value < 0:
            raise ValueError(f"must be >= 0, got {value}")
        return value

    @model_validator(mode="after")
    def _fractions(self) -> "SeededSplit":
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(f"val_fraction + test_fraction must leave cases for training, got "
                             f"{self.val_fraction} + {self.test_fraction}")
        return self


class FileSource(DataBase):
    """Adapters that read files under `root` with integer (or thresholded binary) label values."""

    root: Optional[Path] = Field(None, description="dataset folder")
    binary_threshold: Optional[int] = Field(None, description="masks with two classes whose values exceed 1 "
                                            "(e.g. 0/255 JPEG masks) become 1 where value > this; None: "
                                            f"{DEFAULT_BINARY_THRESHOLD}, and a mask with no value above it is "
                                            "refused (it holds label ids of undeclared classes, not 0/255)")

    @field_validator("binary_threshold")
    @classmethod
    def _threshold_non_negative(cls, value: Optional[int]) -> Optional[int]:
        if value is not None and value < 0:
            raise ValueError(f"must be >= 0, got {value}")
        return value

    @model_validator(mode="after")
    def _root_given(self) -> "FileSource":
        if self.root is None:
            raise ValueError(f"adapter {self.adapter!r} reads a folder: set data.root (e.g. --root PATH)")
        return self


class Windowed(DataBase):
    """Adapters whose stored intensities may be mapped through a window (CT Hounsfield units)."""

    intensity_window: Optional[tuple[float, float]] = Field(
        None, description="map stored intensities [low, high] to [0, 1] and clip, e.g. CT HU [-125, 275]; "
        "None = the adapter's own scaling")

    @model_validator(mode="after")
    def _window_ordered(self) -> "Windowed":
        if self.intensity_window is not None and not self.intensity_window[0] < self.intensity_window[1]:
            raise ValueError(f"intensity_window must be [low, high] with low < high, got {list(self.intensity_window)}")
        return self


class VolumeSource(DataBase):
    """Adapters that cut 2-D slices out of 3-D volumes (and can move the volumes, `perturb`)."""

    axis: Literal[0, 1, 2] = Field(2, description="slice axis of 3-D volumes after RAS reorientation: "
                                   "0 sagittal, 1 coronal, 2 axial")
    min_foreground_fraction: float = Field(
        0.05, description="slices cut from 3-D volumes are kept only if more than this fraction of "
        "their pixels is foreground (mask > 0); 2-D images are always kept")
    perturb: PerturbConfig = Field(default_factory=PerturbConfig)

    @field_validator("min_foreground_fraction")
    @classmethod
    def _fraction_range(cls, value: float) -> float:
        if not 0.0 <= value < 1.0:
            raise ValueError(f"min_foreground_fraction must be in [0, 1), got {value}")
        return value

    perturbed_by_default: ClassVar[bool] = False

    def perturbed(self) -> bool:
        """Whether each volume gets its rigid perturbation: as configured, else the adapter's default."""
        return self.perturb.enabled if self.perturb.enabled is not None else self.perturbed_by_default


class BrainTemplate(VolumeSource, SeededSplit):
    """Single brain volumes in MNI space, sliced on one shared grid."""

    grid: Optional[Literal["native", "icbm152"]] = Field(
        None, description="the voxel grid every volume is resampled onto in world coordinates before slicing. "
        "icbm152: the embedded training template's 1 mm grid, cut with its brain box, so slice i of a test set "
        "lies where training slice i does; native: the volume's own grid and brain box. Default icbm152")
    default_classes: ClassVar[Optional[tuple[str, ...]]] = BRAIN_CLASSES

    def resolved_grid(self) -> str:
        """The grid volumes are resampled onto: the configured one, else icbm152."""
        return self.grid or "icbm152"


class Icbm152Data(BrainTemplate):
    """nilearn's MNI ICBM152 T1 template (the default, offline)."""

    adapter: Literal["icbm152"] = "icbm152"
    default_modality: ClassVar[str] = "T1-weighted brain MRI"


class Spm152Data(BrainTemplate):
    """SPM's avg152 T1/PD/T2 templates (an out-of-domain test set, fetched from PyPI)."""

    adapter: Literal["spm152"] = "spm152"
    contrast: Literal["T1", "PD", "T2"] = Field("T1", description="which avg152 image")
    # an out-of-domain test set of the training template's anatomy: moved, so position alone cannot score
    perturbed_by_default: ClassVar[bool] = True

    def resolved_modality(self, from_data: Optional[str] = None) -> str:
        """The configured modality, else the contrast's."""
        return self.modality or SPM_MODALITY[self.contrast]


class FolderData(FileSource, SeededSplit):
    """images/ + masks/ pictures with matching file stems (Kvasir-SEG, CVC-ClinicDB, ...)."""

    adapter: Literal["folder"] = "folder"
    image_dir: str = Field("images", description="sub-folder of the images (CVC-ClinicDB: 'Original')")
    mask_dir: str = Field("masks", description="sub-folder of the masks (CVC-ClinicDB: 'Ground Truth')")
    split_rule: Literal["seeded", "fcbformer"] = Field(
        "seeded", description="seeded = whole cases shuffled by data.seed into the val/test fractions; "
        "fcbformer = FCBFormer's 80/10/10 split (sklearn train_test_split, random_state 42, over the images "
        "sorted by file name)")
    group_regex: str = Field(r"^(?P<case>.+?)_slice_?\d+$", description="a file stem matching this regex "
                             "belongs to the case in its first group; slices of one case always stay in one split")
    default_classes: ClassVar[Optional[tuple[str, ...]]] = ("background", "foreground")

    @field_validator("group_regex")
    @classmethod
    def _regex_compiles(cls, value: str) -> str:
        return _compiled(value)


class NpzData(FileSource, Windowed, SeededSplit):
    """One .npz per 2-D slice with `image` and `label` arrays."""

    adapter: Literal["npz"] = "npz"
    group_regex: str = Field(r"^(?P<case>.+?)_slice_?\d+$", description="a file stem matching this regex "
                             "belongs to the case in its first group; slices of one case always stay in one split")
    default_classes: ClassVar[Optional[tuple[str, ...]]] = ("background", "foreground")

    @field_validator("group_regex")
    @classmethod
    def _regex_compiles(cls, value: str) -> str:
        return _compiled(value)


class NnunetData(FileSource, Windowed, VolumeSource, SeededSplit):
    """An nnU-Net raw dataset: dataset.json + imagesTr/ + labelsTr/ (NIfTI volumes or 2-D pictures)."""

    adapter: Literal["nnunet"] = "nnunet"


class SynapseData(FileSource, Windowed):
    """TransUNet's Synapse release (train_npz/, test_vol_h5/, lists) with its official split."""

    adapter: Literal["synapse"] = "synapse"
    default_classes: ClassVar[Optional[tuple[str, ...]]] = SYNAPSE_CLASSES
    default_modality: ClassVar[str] = "abdomen CT"


class AcdcData(FileSource, Windowed):
    """SSL4MIS-style ACDC h5 slices and volumes with the authors' patient split."""

    adapter: Literal["acdc"] = "acdc"
    default_classes: ClassVar[Optional[tuple[str, ...]]] = ACDC_CLASSES
    default_modality: ClassVar[str] = "cardiac MRI"


class SlaugData(FileSource, Windowed):
    """SLAug's processed NIfTI of one domain (abdominal CT/MRI, cardiac bSSFP/LGE) with SLAug's split."""

    adapter: Literal["slaug"] = "slaug"
    domain: Optional[Literal["SABSCT", "CHAOST2", "bSSFP", "LGE"]] = Field(
        None, description="which domain folder to read (abdominal CT/MRI, cardiac bSSFP/LGE)")

    @model_validator(mode="after")
    def _domain_given(self) -> "SlaugData":
        if self.domain is None:
            raise ValueError(f"adapter 'slaug' reads one domain: set data.domain to one of {list(SLAUG_DOMAINS)}")
        return self

    def default_class_names(self) -> Optional[tuple[str, ...]]:
        """The configured class names, else the domain's."""
        return self.class_names or SLAUG_DOMAINS[str(self.domain)][0]

    def resolved_modality(self, from_data: Optional[str] = None) -> str:
        """The configured modality, else the domain's."""
        return self.modality or SLAUG_DOMAINS[str(self.domain)][1]


def _compiled(value: str) -> str:
    try:
        re.compile(value)
    except re.error as err:
        raise ValueError(f"group_regex {value!r} is not a valid regular expression: {err}") from None
    return value


DATA_MODELS: dict[str, type[DataBase]] = {model.model_fields["adapter"].default: model for model in (
    Icbm152Data, Spm152Data, FolderData, NnunetData, NpzData, SynapseData, AcdcData, SlaugData)}
DEFAULT_ADAPTER = "icbm152"
FLAT_DEFAULTS: dict[str, Any] = {name: TypeAdapter(field.annotation).dump_python(
    field.get_default(call_default_factory=True), mode="json")
    for model in DATA_MODELS.values() for name, field in model.model_fields.items() if name != "adapter"}


def _adapter_of(value: Any) -> Any:
    """The tag of a data config: its `adapter` (the default adapter when a mapping names none)."""
    return value.get("adapter", DEFAULT_ADAPTER) if isinstance(value, dict) else getattr(value, "adapter", None)


def _field_error(field: str, value: Any, message: str) -> ValidationError:
    return ValidationError.from_exception_data("DataConfig", [
        {"type": "value_error", "loc": (field,), "input": value, "ctx": {"error": ValueError(message)}}])


def _validate_data(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """Check the adapter and that every field given is one of its own (naming the adapters that have a
    foreign one), then validate with the adapter's model; errors are located as `data.<field>`, without
    the union's tag."""
    adapter = _adapter_of(value)
    if adapter not in DATA_MODELS:
        raise _field_error("adapter", adapter, f"data.adapter must be one of {', '.join(DATA_MODELS)}")
    if isinstance(value, dict):
        for key in value:
            owners = [name for name, model in DATA_MODELS.items() if key in model.model_fields]
            if key not in DATA_MODELS[adapter].model_fields and owners:
                raise _field_error(key, value[key], f"data.{key} is not a setting of adapter {adapter!r} (adapters "
                                   f"that read it: {', '.join(owners)}); remove it or set data.adapter to one of those")
    try:
        return handler(value)
    except ValidationError as err:
        raise relocated(err, lambda loc: loc[1:]) from None


DataConfig = Annotated[
    Union[tuple(Annotated[model, Tag(name)] for name, model in DATA_MODELS.items())],  # type: ignore[misc]
    Discriminator(_adapter_of), WrapValidator(_validate_data)]
"""Which dataset to read, how to cut and resize it, how to split it, where the prepared copy is cached."""
_DATA_ADAPTER: TypeAdapter[DataConfig] = TypeAdapter(DataConfig)


def data_config(**fields: Any) -> DataConfig:
    """A data config from its fields (`adapter` picks the model; default icbm152)."""
    return _DATA_ADAPTER.validate_python(fields)
