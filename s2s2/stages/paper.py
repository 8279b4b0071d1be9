"""The paper's settings (`s2s2 paper`): which config in configs/paper reproduces which number of Pan
et al. (AAAI 2025), the data each expects and where to get it, and epoch-exact step counts."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from s2s2.pipeline.config.base import load_config
from s2s2.pipeline.config.project import ProjectConfig
from s2s2.pipeline.errors import ConfigError

PAPER_DIR = Path(__file__).resolve().parents[2] / "configs" / "paper"
SLAUG_SOURCE = ("SLAug's processed release (CSDG preprocessing), linked from github.com/Kaiseem/SLAug "
                "(README, 'processed datasets')")


@dataclass(frozen=True)
class Dataset:
    """One public dataset: the files an adapter reads under data.root and where to get them."""

    layout: str
    source: str


DATASETS: dict[str, Dataset] = {
    "Synapse": Dataset("train_npz/case*_slice*.npz, test_vol_h5/case*.npy.h5, lists_Synapse/{train,test_vol}.txt",
                       "TransUNet's preprocessed release, linked from github.com/Beckschen/TransUNet (lists in its "
                       "lists/lists_Synapse); the scans: synapse.org syn3193805 (registration)"),
    "ACDC": Dataset("ACDC_training_slices/patient*_frame*_slice_*.h5, ACDC_training_volumes/patient*_frame*.h5",
                    "SSL4MIS's h5 conversion, github.com/HiLab-git/SSL4MIS (data/ACDC); the scans: "
                    "acdc.creatis.insa-lyon.fr (registration)"),
    "Kvasir-SEG": Dataset("images/*.jpg, masks/*.jpg (1,000 pairs)", "datasets.simula.no/kvasir-seg (kvasir-seg.zip)"),
    "CVC-ClinicDB": Dataset("Original/*.tif, Ground Truth/*.tif (612 pairs)", "polyp.grand-challenge.org/CVCClinicDB"),
    "SABSCT": Dataset("SABSCT/processed/image_<id>.nii.gz + label_<id>.nii.gz (30 scans)", SLAUG_SOURCE),
    "CHAOST2": Dataset("CHAOST2/processed/image_<id>.nii.gz + label_<id>.nii.gz (20 scans)", SLAUG_SOURCE),
    "bSSFP": Dataset("bSSFP/image_<id>.nii.gz + label_<id>.nii.gz (45 scans)", SLAUG_SOURCE),
    "LGE": Dataset("LGE/image_<id>.nii.gz + label_<id>.nii.gz (45 scans)", SLAUG_SOURCE),
}


@dataclass(frozen=True)
class PaperSetting:
    """One config of configs/paper and the paper's numbers it should reproduce."""

    name: str  # configs/paper/<name>.yaml
    title: str
    result: str  # the paper's numbers, as its comment states them
    datasets: tuple[str, ...]  # training data first, then the out-of-domain test sets in config order
    train_epochs: int | None  # epochs of stage two; None: the config's iteration count is the authors'
    drop_last: bool  # whether the authors' loader drops the last partial batch of an epoch
    finetune_epochs: int = 100  # ControlNet fine-tuning (paper App. C)


SETTINGS: tuple[PaperSetting, ...] = (
    PaperSetting("transunet_synapse", "TransUNet on Synapse, 8 abdominal organs (Tables 1, 8)",
                 "Dice 81.19 %, HD 24.81 (TransUNet alone 76.86 % / 26.73)", ("Synapse",), 150, False),
    PaperSetting("transunet_acdc", "TransUNet on ACDC, RV / MYO / LV (Tables 1, 9)",
                 "Dice 90.40 % (TransUNet alone 88.86 %)", ("ACDC",), None, False),
    PaperSetting("fcbformer_kvasir", "FCBFormer on Kvasir-SEG, and Kvasir -> CVC-ClinicDB (Tables 2, 5, 11, 13)",
                 "Kvasir Dice 93.20 % (FCBFormer alone 91.90 %); Kvasir -> CVC 92.85 % (91.16 %)",
                 ("Kvasir-SEG", "CVC-ClinicDB"), 200, True),
    PaperSetting("fcbformer_cvc", "FCBFormer on CVC-ClinicDB, and CVC-ClinicDB -> Kvasir (Tables 2, 5, 11, 13)",
                 "CVC Dice 94.88 % (FCBFormer alone 93.46 %); CVC -> Kvasir 88.72 % (86.46 %)",
                 ("CVC-ClinicDB", "Kvasir-SEG"), 200, True),
    PaperSetting("slaug_ct_to_mri", "SLAug protocol, abdominal CT -> MRI (Tables 4, 12)",
                 "CHAOST2 Dice 87.75 % (SLAug alone 88.55 %)", ("SABSCT", "CHAOST2"), 1100, False),
    PaperSetting("slaug_mri_to_ct", "SLAug protocol, abdominal MRI -> CT (Tables 4, 12)",
                 "SABSCT Dice 83.15 % (SLAug alone 81.70 %)", ("CHAOST2", "SABSCT"), 1100, False),
    PaperSetting("slaug_bssfp_to_lge", "SLAug protocol, cardiac bSSFP -> LGE (Tables 4, 12)",
                 "LGE Dice 86.06 % (SLAug alone 86.42 %)", ("bSSFP", "LGE"), 1100, False),
    PaperSetting("slaug_lge_to_bssfp", "SLAug protocol, cardiac LGE -> bSSFP (Tables 4, 12)",
                 "bSSFP Dice 87.49 % (SLAug alone 87.17 %)", ("LGE", "bSSFP"), 1100, False),
)
STAGES = ("data prepare", "finetune", "generate", "train", "evaluate")


def config_path(name: str) -> Path:
    """configs/paper/<name>.yaml of a known setting."""
    names = [s.name for s in SETTINGS]
    if name not in names:
        raise ConfigError(f"unknown paper setting {name!r}; known: {', '.join(names)} (see `s2s2 paper list`)")
    path = PAPER_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"{path} is missing; the paper configs ship with the repository (configs/paper/)")
    return path


def setting(name: str) -> PaperSetting:
    """The setting called `name`."""
    config_path(name)
    return next(s for s in SETTINGS if s.name == name)


def data_roots(cfg: ProjectConfig) -> list[str]:
    """The data folders a config reads: the training data, then each out-of-domain test set."""
    return [str(cfg.data.root), *(str(entry.get("root")) for entry in cfg.evaluate.out_of_domain.values())]


def describe_settings() -> str:
    """What `s2s2 paper list` prints: per setting its config, the paper's numbers, the data and where it goes."""
    blocks = []
    for item in SETTINGS:
        path = config_path(item.name)
        cfg = load_config(ProjectConfig, path)
        lines = [f"{item.name}: {item.title}", f"  paper    {item.result}", f"  config   {path.relative_to(PAPER_DIR.parents[1])}"]
        for dataset, root in zip(item.datasets, data_roots(cfg)):
            lines += [f"  data     {dataset} in {root}/", f"           {DATASETS[dataset].layout}",
                      f"           from {DATASETS[dataset].source}"]
        config = f"configs/paper/{item.name}.yaml"
        if item.train_epochs is not None:
            lines.append(f"  steps    s2s2 paper steps {item.name}   (epoch-exact finetune/train steps for your data)")
        lines += [f"  {'run' if i == 0 else '':<8} s2s2 {stage} -c {config}" for i, stage in enumerate(STAGES)]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n\nRoots are relative to where you run s2s2; change them with --set data.root=PATH.\n"


def epoch_steps(n: int, batch_size: int, epochs: int, drop_last: bool) -> int:
    """Optimizer steps of `epochs` passes over `n` samples at `batch_size` (last partial batch dropped or not)."""
    per_epoch = n // batch_size if drop_last else math.ceil(n / batch_size)
    return epochs * max(per_epoch, 1)


def exact_steps(name: str, dotted: list[str] | None = None) -> dict[str, int]:
    """{'finetune.steps', 'train.steps'} for the setting's epochs on the prepared training split."""
    from s2s2.pipeline.data.prepare import prepare_dataset

    item = setting(name)
    cfg = load_config(ProjectConfig, config_path(name), dotted=dotted)
    n = len(prepare_dataset(cfg.data).indices(cfg.finetune.split))
    steps = {"finetune.steps": epoch_steps(n, cfg.finetune.batch_size, item.finetune_epochs, drop_last=False)}
    steps["train.steps"] = (cfg.train.steps if item.train_epochs is None
                            else epoch_steps(n, cfg.train.batch_size, item.train_epochs, item.drop_last))
    return steps
