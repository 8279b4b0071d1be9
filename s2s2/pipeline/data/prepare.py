"""`prepare_dataset`: run an adapter once, resize and split its slices, cache the result on disk.

The cache folder `cache_dir/prepared/<adapter>-<hash>/` is keyed by the config (minus
`cache_dir`) and a signature of the source files, and appears whole or not at all. Its
`split.json` (case ids per split) is read back on every load, so an edited split is honoured.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from s2s2.pipeline.config.data import DataConfig, SeededSplit, VolumeSource
from s2s2.pipeline.data.adapters import ADAPTERS
from s2s2.pipeline.data.geometry import crop_square, pad_box, resize_image, resize_mask
from s2s2.pipeline.data.prepared import SPLITS, PreparedDataset
from s2s2.pipeline.data.raw import RawDataset, RawSlice
from s2s2.pipeline.data.split import assign_splits
from s2s2.pipeline.errors import DataError

log = logging.getLogger(__name__)
PREPARED_FORMAT = 2  # bump when the preparation code changes what it writes
LUMINANCE = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def source_signature(cfg: DataConfig) -> dict[str, object]:
    """What identifies the input files of `cfg` without reading them."""
    return ADAPTERS[cfg.adapter].source(cfg)


def prepared_folder(cfg: DataConfig) -> Path:
    """The cache folder of `cfg`: `cache_dir/prepared/<adapter>-<16 hex of the config+source hash>`."""
    key = {"format": PREPARED_FORMAT,
           "config": {k: v for k, v in cfg.cache_key_fields().items() if k not in ("cache_dir", "root", "eval_split")},
           "source": source_signature(cfg)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cfg.cache_dir) / "prepared" / f"{cfg.adapter}-{digest}"


def load_raw(cfg: DataConfig) -> RawDataset:
    """Run the adapter named by `cfg.adapter`."""
    return ADAPTERS[cfg.adapter].load(cfg)


def _channels(image: np.ndarray, channels: int) -> np.ndarray:
    if image.shape[0] == channels:
        return image
    if channels == 3:
        return np.repeat(image, 3, axis=0)
    return np.tensordot(LUMINANCE, image, axes=1)[None].astype(np.float32)


def resize_slice(item: RawSlice, cfg: DataConfig, channels: int, num_classes: int
                 ) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """(image [C,S,S], mask [S,S], spacing) of one slice at `cfg.size`, padded to a square first if asked."""
    image, mask = _channels(item.image, channels), item.mask
    if cfg.keep_aspect:
        box = pad_box(mask.shape)
        image, mask = crop_square(image, box), crop_square(mask, box)
    rows, cols = mask.shape
    spacing = (item.spacing[0] * rows / cfg.size, item.spacing[1] * cols / cfg.size)
    return (resize_image(image, cfg.size, cfg.image_resize),
            resize_mask(mask, cfg.size, num_classes, cfg.mask_resize), spacing)


def build_prepared(raw: RawDataset, cfg: DataConfig) -> PreparedDataset:
    """Resize every slice to `cfg.size`, split deterministically, drop gap slices, stack into arrays."""
    where = getattr(cfg, "root", None) or raw.name
    if not raw.slices:
        if isinstance(cfg, VolumeSource):
            raise DataError(f"dataset {raw.name} is empty: no images found (or no slice has more than "
                            f"{cfg.min_foreground_fraction:.0%} foreground)", where,
                            "check data.root and the file names, or lower data.min_foreground_fraction")
        raise DataError(f"dataset {raw.name} is empty: no images found", where, "check data.root and the file names")
    ids = [item.id for item in raw.slices]
    if len(set(ids)) != len(ids):
        duplicates = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise DataError(f"sample ids occur more than once: {duplicates}", where,
                        "give every image a unique file name stem (e.g. not both a.png and a.jpg)")
    if raw.fixed_split:
        labels: list[str | None] = [raw.fixed_split] * len(raw.slices)
    elif any(item.split for item in raw.slices):  # the adapter knows the dataset's official split
        labels = [item.split for item in raw.slices]
    elif isinstance(cfg, SeededSplit):
        labels = assign_splits([s.case for s in raw.slices], [s.position for s in raw.slices],
                               cfg.val_fraction, cfg.test_fraction, cfg.slab_slices, cfg.slab_gap, cfg.seed)
    else:
        raise DataError(f"adapter {cfg.adapter!r} gave no split for {raw.name}", where,
                        "every slice of this adapter should carry its official split; report this")
    kept = [(item, label) for item, label in zip(raw.slices, labels) if label is not None]
    channels = cfg.channels or (3 if any(item.image.shape[0] == 3 for item, _ in kept) else 1)
    images, masks, spacings = [], [], []
    for item, _ in tqdm(kept, desc=f"prepare {raw.name}", unit="slice", disable=None, leave=False):
        image, mask, spacing = resize_slice(item, cfg, channels, len(raw.class_names))
        images.append(image)
        masks.append(mask)
        spacings.append(spacing)
    splits = {name: [i for i, (_, label) in enumerate(kept) if label == name] for name in SPLITS}
    return PreparedDataset(
        name=raw.name, images=np.stack(images).astype(np.float32), masks=np.stack(masks).astype(np.uint8),
        ids=[item.id for item, _ in kept], spacings=np.asarray(spacings, dtype=np.float32),
        class_names=tuple(raw.class_names), modality=raw.modality, prompt_template=cfg.prompt_template,
        splits=splits, cases=[item.case for item, _ in kept], positions=[item.position for item, _ in kept],
        thickness=[item.thickness for item, _ in kept], spacing_unit=raw.spacing_unit,
        grid=f"{raw.grid}:size{cfg.size}" if raw.grid else "", perturbations=raw.perturbations,
        prompt_names=cfg.prompt_class_names)


def write_split_file(dataset: PreparedDataset, folder: Path) -> None:
    """`split.json`: sample ids per split, human-readable and editable."""
    split_ids = {name: [dataset.ids[i] for i in dataset.indices(name)] for name in SPLITS}
    (folder / "split.json").write_text(json.dumps(split_ids, indent=1))


def read_split_file(path: Path, ids: list[str]) -> dict[str, list[int]]:
    """Indices per split from `split.json`; unknown ids, overlaps or a bad layout are DataErrors."""
    fix = "delete split.json to get the default split back, or fix it (ids per split train/val/test)"
    try:
        split_ids = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"cannot read the split file ({err})", path, fix) from None
    if not isinstance(split_ids, dict) or set(split_ids) - set(SPLITS) or \
            not all(isinstance(v, list) for v in split_ids.values()):
        raise DataError(f"the split file must map {list(SPLITS)} to lists of sample ids", path, fix)
    position = {sample_id: i for i, sample_id in enumerate(ids)}
    seen: set[str] = set()
    splits = {}
    for name in SPLITS:
        members = split_ids.get(name, [])
        unknown = [m for m in members if m not in position]
        if unknown:
            raise DataError(f"split {name!r} names unknown sample ids {unknown[:5]}", path, fix)
        shared = seen.intersection(members)
        if shared:
            raise DataError(f"sample ids {sorted(shared)[:5]} are in more than one split", path, fix)
        seen.update(members)
        splits[name] = [position[m] for m in members]
    return splits


def load_prepared(folder: Path) -> PreparedDataset:
    """A prepared dataset from its cache folder, with the splits of its `split.json`."""
    dataset = PreparedDataset.load(folder)
    dataset.splits = read_split_file(folder / "split.json", dataset.ids)
    return dataset


def publish_folder(folder: Path, write: Callable[[Path], None]) -> None:
    """Run `write(tmp)` on a temporary sibling folder, then rename it to `folder` in one step.

    If another process published `folder` meanwhile, its copy (built from the same inputs) wins
    and ours is discarded; on any error nothing is left behind.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the published cache is an ordinary folder
        write(tmp)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not folder.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def prepare_dataset(cfg: DataConfig) -> PreparedDataset:
    """The dataset of `cfg` at `cfg.size` with its split: loaded from the cache, else built and cached."""
    folder = prepared_folder(cfg)
    if not (folder / "meta.json").is_file():
        raw = load_raw(cfg)
        dataset = build_prepared(raw, cfg)

        def write(tmp: Path) -> None:
            dataset.save(tmp)
            write_split_file(dataset, tmp)
            provenance = {"config": cfg.model_dump(mode="json"), "source": raw.source, "grid": dataset.grid,
                          "perturbations": raw.perturbations}
            (tmp / "provenance.json").write_text(json.dumps(provenance, indent=1))

        publish_folder(folder, write)
    dataset = load_prepared(folder)
    for message in empty_classes(dataset):
        log.warning(message)
    return dataset


def empty_classes(dataset: PreparedDataset) -> list[str]:
    """One warning per split (with samples) in which a declared class has no pixel: a class that masks
    read with the wrong class list or threshold lose, or one a split cannot train or score."""
    warnings = []
    for split in SPLITS:
        indices = dataset.indices(split) if split in dataset.splits else []
        if not indices:
            continue
        counts = np.bincount(dataset.masks[indices].ravel(), minlength=dataset.num_classes)
        missing = [name for name, count in zip(dataset.class_names, counts) if count == 0]
        if missing:
            warnings.append(f"dataset {dataset.name}: split {split} ({len(indices)} samples) has 0 pixels of "
                            f"class(es) {missing}; check data.class_names and the mask values (data show)")
    return warnings
