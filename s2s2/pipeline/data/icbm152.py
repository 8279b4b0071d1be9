"""`icbm152` adapter, the embedded default: nilearn's bundled MNI ICBM152 2009a T1 template (1 mm).

Real MRI that ships inside the nilearn wheel, so nothing is downloaded. Labels come from the
template's grey/white matter probability maps; `inside = T1 > 0` (the template is skull-stripped).
Its grid, slice axis and brain box are the reference every brain template is sliced on.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from s2s2.pipeline.config.data import BrainTemplate, Icbm152Data
from s2s2.pipeline.data.brain import (SliceReference, brain_slices, icbm_csf, place_volumes, slice_reference,
                                      template_perturbation, tissue_labels)
from s2s2.pipeline.data.raw import RawDataset
from s2s2.pipeline.data.world import Grid

ICBM152_NOTICE = (
    "MNI ICBM152 non-linear 2009 template: Copyright (C) 1993-2009 Louis Collins, McConnell Brain "
    "Imaging Centre, Montreal Neurological Institute, McGill University. Permission to use, copy, "
    "modify, and distribute this software and its documentation for any purpose and without fee is "
    "hereby granted, provided that the above copyright notice appear in all copies. The authors and "
    "McGill University make no representations about the suitability of this software for any "
    "purpose. It is provided \"as is\" without express or implied warranty. The authors are not "
    "responsible for any data loss, equipment damage, property loss, or injury to subjects or patients "
    "resulting from the use or misuse of this software package."
)


def icbm152_source() -> dict[str, object]:
    """What identifies the input data: the nilearn version that ships the template."""
    import nilearn

    return {"nilearn": nilearn.__version__, "template": "MNI152NLin2009aSym 1mm (nilearn bundled)"}


@lru_cache(maxsize=1)
def icbm152_volumes() -> tuple[dict[str, np.ndarray], Grid]:
    """The template's T1 and grey/white matter probability maps (RAS, 1 mm) and their grid; read once
    per process (the arrays are read-only)."""
    import nibabel as nib
    from nilearn import datasets

    images = [nib.as_closest_canonical(loader(resolution=1)) for loader in
              (datasets.load_mni152_template, datasets.load_mni152_gm_template, datasets.load_mni152_wm_template)]
    volumes = {key: np.asarray(image.get_fdata(), dtype=np.float32) for key, image in zip(("T1", "grey", "white"), images)}
    for volume in volumes.values():
        volume.setflags(write=False)
    return volumes, Grid(shape=tuple(int(s) for s in images[0].shape[:3]), affine=np.asarray(images[0].affine))


def icbm152_labels(volumes: dict[str, np.ndarray]) -> np.ndarray:
    """Hard labels (background, CSF/other, GM, WM) of the template's volumes."""
    inside = (volumes["T1"] > 0).astype(np.float32)
    return tissue_labels(inside, icbm_csf(inside, volumes["grey"], volumes["white"]), volumes["grey"], volumes["white"])


def icbm152_reference(cfg: BrainTemplate) -> SliceReference:
    """The training grid of the embedded default: the template's 1 mm grid, `cfg.axis`, its brain box."""
    volumes, grid = icbm152_volumes()
    return slice_reference("icbm152", icbm152_labels(volumes), grid, cfg.axis, cfg.min_foreground_fraction)


def load_icbm152(cfg: Icbm152Data) -> RawDataset:
    """Label the 1 mm template's voxels (background, CSF/other, GM, WM) and cut slices along `cfg.axis`
    (moved first by its rigid perturbation if `data.perturb` asks for one)."""
    volumes, grid = icbm152_volumes()
    reference = icbm152_reference(cfg)
    perturbation = template_perturbation(cfg, "icbm152", reference)
    placed = place_volumes(volumes, grid.affine, reference, perturbation)
    slices = brain_slices(placed["T1"], icbm152_labels(placed), reference, cfg.min_foreground_fraction, "icbm152")
    return RawDataset(name="icbm152", slices=slices, class_names=cfg.default_class_names(),
                      modality=cfg.resolved_modality(), source=icbm152_source(), spacing_unit="mm",
                      grid=reference.grid_id,
                      perturbations={"icbm152": perturbation.as_dict()} if perturbation else {})
