"""`icbm152` adapter, the embedded default: nilearn's bundled MNI ICBM152 2009a T1 template (1 mm).

Real MRI that ships inside the nilearn wheel, so nothing is downloaded. Labels come from the
template's grey/white matter probability maps; `inside = T1 > 0` (the template is skull-stripped).
"""

from __future__ import annotations

import numpy as np

from s2s2.pipeline.config.data import DataConfig
from s2s2.pipeline.data.brain import brain_slices, icbm_csf, tissue_labels
from s2s2.pipeline.data.raw import RawDataset

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


def load_icbm152(cfg: DataConfig) -> RawDataset:
    """Label the 1 mm template's voxels (background, CSF/other, GM, WM) and cut slices along `cfg.axis`."""
    import nibabel as nib
    from nilearn import datasets

    volumes = [nib.as_closest_canonical(loader(resolution=1)) for loader in
               (datasets.load_mni152_template, datasets.load_mni152_gm_template, datasets.load_mni152_wm_template)]
    t1, grey, white = (np.asarray(v.get_fdata(), dtype=np.float32) for v in volumes)
    inside = (t1 > 0).astype(np.float32)
    labels = tissue_labels(inside, icbm_csf(inside, grey, white), grey, white)
    zooms = tuple(float(z) for z in volumes[0].header.get_zooms())
    slices = brain_slices(t1, labels, zooms, cfg.axis, cfg.min_foreground_fraction, "icbm152")
    return RawDataset(name="icbm152", slices=slices, class_names=cfg.default_class_names(),
                      modality=cfg.resolved_modality(), source=icbm152_source())
