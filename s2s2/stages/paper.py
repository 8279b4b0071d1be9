"""The paper's settings (`s2s2 paper`): which config in configs/paper reproduces which number of Pan
et al. (AAAI 2025), the data each expects and where to get it, what stage two runs in it (encoder
stages of L_enc, loss weights, augmentation) and epoch-exact step counts.

This table is the single source of those settings: a test checks every config in configs/paper
against it, and `s2s2 paper steps NAME` prints it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
class Recipe:
    """Stage two of a setting as the authors' code runs it (or the nearest this project offers): the model,
    the encoder stages L_enc compares, and the `train.loss` and `train.augment` values."""

    model: str
    sc_stages: tuple[str, ...]
    loss: dict[str, Any]
    augment: dict[str, Any]
    location_scale: bool = False  # SLAug's global location-scale remap of the real image


# TransUNet: 0.5 (CE0 + CEk) + 0.5 (Dice0 + Dicek) + L_enc(ViT tokens) + L_dec; p 0.5 rot90 + flip, else p 0.5
# rotation in [-20, 20), drawn independently here with the same marginal probabilities; no photometrics.
TRANSUNET = Recipe("transunet", ("tokens",),
                   {"seg": "ce_dice", "lambda_ce": 0.5, "lambda_dice": 0.5, "w_seg": 1.0, "w_seg_gen": 1.0,
                    "a_enc": 1.0, "a_dec": 1.0},
                   {"hflip_p": 0.25, "vflip_p": 0.25, "rot90_p": 0.375, "affine_p": 0.25, "max_rotate_deg": 20,
                    "max_scale": 0.0, "max_translate": 0.0, "photometric_p": 0.0})
# FCBFormer: (Dice + BCE)(original) + (Dice + BCE)(generated) + 0.4 L_TB + 0.4 L_FCB; flips and affine shared by
# the pair, colour jitter drawn per image (so the stack image gets its own draw).
FCBFORMER = Recipe("fcbformer", ("tb", "fcb"),
                   {"seg": "bce_dice", "lambda_ce": 1.0, "lambda_dice": 1.0, "w_seg": 1.0, "w_seg_gen": 1.0,
                    "a_enc": 0.4, "a_dec": 0.0},
                   {"hflip_p": 0.5, "vflip_p": 0.5, "rot90_p": 0.0, "affine_p": 1.0, "max_rotate_deg": 180,
                    "max_scale": 0.5, "max_translate": 0.125, "photometric_p": 1.0, "brightness": 0.2,
                    "contrast": 0.5, "gamma": 0.0, "noise_std": 0.0, "stack_photometric": True})
# SLAug + S2S2: (CE + Dice)(real) + 0.1 (CE + Dice)(generated) + 0.1 L_enc on the deepest encoder stage
# (smp features[-1]); affine without flips; brightness/contrast, gamma and noise. The authors' loader draws one
# intensity jitter for the generated image and the augmented real images together; here the stack image gets a
# draw of its own (stack_photometric), the nearer of the two choices offered (geometric only is the other).
SLAUG = Recipe("unet", ("stage5",),
               {"seg": "ce_dice", "lambda_ce": 1.0, "lambda_dice": 1.0, "w_seg": 1.0, "w_seg_gen": 0.1,
                "a_enc": 0.1, "a_dec": 0.0},
               {"hflip_p": 0.0, "vflip_p": 0.0, "rot90_p": 0.0, "affine_p": 1.0, "max_rotate_deg": 20,
                "max_scale": 0.5, "max_translate": 0.078, "photometric_p": 1.0, "brightness": 0.1,
                "contrast": 0.45, "gamma": 0.6, "noise_std": 0.05, "stack_photometric": True},
               location_scale=True)


@dataclass(frozen=True)
class PaperSetting:
    """One config of configs/paper and the paper's numbers it should reproduce."""

    name: str  # configs/paper/<name>.yaml
    title: str
    result: str  # the paper's numbers, as its comment states them
    datasets: tuple[str, ...]  # training data first, then the out-of-domain test sets in config order
    recipe: Recipe
    train_samples: int  # training slices the config's step counts assume (an estimate where `estimated`)
    train_epochs: int | None  # epochs of stage two; None: `train_iterations` is the authors' count
    drop_last: bool  # whether the authors' loader drops the last partial batch of an epoch
    train_iterations: int | None = None
    estimated: bool = False  # train_samples is a guess: `s2s2 paper steps` counts your copy of the data
    finetune_epochs: int = 100  # ControlNet fine-tuning (paper App. C)


SETTINGS: tuple[PaperSetting, ...] = (
    PaperSetting("transunet_synapse", "TransUNet on Synapse, 8 abdominal organs (Tables 1, 8)",
                 "Dice 81.19 %, HD 24.81 (TransUNet alone 76.86 % / 26.73)", ("Synapse",), TRANSUNET, 2211, 150,
                 False),
    PaperSetting("transunet_acdc", "TransUNet on ACDC, RV / MYO / LV (Tables 1, 9)",
                 "Dice 90.40 % (TransUNet alone 88.86 %)", ("ACDC",), TRANSUNET, 1930, None, False,
                 train_iterations=30000),
    PaperSetting("fcbformer_kvasir", "FCBFormer on Kvasir-SEG, and Kvasir -> CVC-ClinicDB (Tables 2, 5, 11, 13)",
                 "Kvasir Dice 93.20 % (FCBFormer alone 91.90 %); Kvasir -> CVC 92.85 % (91.16 %)",
                 ("Kvasir-SEG", "CVC-ClinicDB"), FCBFORMER, 800, 200, True),
    PaperSetting("fcbformer_cvc", "FCBFormer on CVC-ClinicDB, and CVC-ClinicDB -> Kvasir (Tables 2, 5, 11, 13)",
                 "CVC Dice 94.88 % (FCBFormer alone 93.46 %); CVC -> Kvasir 88.72 % (86.46 %)",
                 ("CVC-ClinicDB", "Kvasir-SEG"), FCBFORMER, 490, 200, True),
    PaperSetting("slaug_ct_to_mri", "SLAug protocol, abdominal CT -> MRI (Tables 4, 12)",
                 "CHAOST2 Dice 87.75 % (SLAug alone 88.55 %)", ("SABSCT", "CHAOST2"), SLAUG, 740, 1100, False,
                 estimated=True),
    PaperSetting("slaug_mri_to_ct", "SLAug protocol, abdominal MRI -> CT (Tables 4, 12)",
                 "SABSCT Dice 83.15 % (SLAug alone 81.70 %)", ("CHAOST2", "SABSCT"), SLAUG, 450, 1100, False,
                 estimated=True),
    PaperSetting("slaug_bssfp_to_lge", "SLAug protocol, cardiac bSSFP -> LGE (Tables 4, 12)",
                 "LGE Dice 86.06 % (SLAug alone 86.42 %)", ("bSSFP", "LGE"), SLAUG, 420, 1100, False, estimated=True),
    PaperSetting("slaug_lge_to_bssfp", "SLAug protocol, cardiac LGE -> bSSFP (Tables 4, 12)",
                 "bSSFP Dice 87.49 % (SLAug alone 87.17 %)", ("LGE", "bSSFP"), SLAUG, 600, 1100, False, estimated=True),
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
    """Optimizer steps of `epochs` passes over `n` samples at `batch_size` (last partial batch dropped or not),
    counted as the trainer's sampler counts them."""
    from s2s2.stages.train.datasets import batches_per_epoch

    return epochs * max(batches_per_epoch(n, batch_size, drop_last), 1)


def setting_steps(item: PaperSetting, n: int, finetune_batch: int, train_batch: int) -> dict[str, int]:
    """{'finetune.steps', 'train.steps'} of a setting on `n` training slices at the given batch sizes."""
    train = (epoch_steps(n, train_batch, item.train_epochs, item.drop_last) if item.train_epochs is not None
             else int(item.train_iterations or 0))
    return {"finetune.steps": epoch_steps(n, finetune_batch, item.finetune_epochs, drop_last=False),
            "train.steps": train}


def training_slices(cfg: ProjectConfig) -> int:
    """Slices of the prepared training split (the one ControlNet fine-tunes on and stage two trains on)."""
    from s2s2.pipeline.data.prepare import prepare_dataset

    return len(prepare_dataset(cfg.data).indices(cfg.finetune.split))


def describe_recipe(item: PaperSetting, cfg: ProjectConfig) -> list[str]:
    """Lines naming what stage two runs under `cfg` (the setting's config, with any --set): model, L_enc stages,
    loss weights and the augmentation values the setting fixes."""
    loss, model = cfg.train.loss, cfg.model
    stages = model.sc_stages or ["(the model's default)"]
    augment = ", ".join(f"{key} {getattr(cfg.train.augment, key)}" for key in item.recipe.augment)
    return [f"  model    {model.name}, L_enc on encoder stage(s) {', '.join(stages)} (model.sc_stages)",
            f"  loss     {loss.w_seg} L_seg(original) + {loss.w_seg_gen} L_seg(generated) + {loss.a_enc} L_enc"
            f" + {loss.a_dec} L_dec; L_seg = {loss.seg} (CE/BCE x {loss.lambda_ce}, Dice x {loss.lambda_dice})",
            f"  augment  {augment}" + ("; location-scale remap of the real image" if cfg.train.location_scale else "")]


def describe_steps(name: str, dotted: list[str] | None = None) -> str:
    """What `s2s2 paper steps` prints: what stage two of the setting runs, its epoch-exact step counts on the
    prepared training split, and, last, those counts as --set options."""
    item = setting(name)
    cfg = load_config(ProjectConfig, config_path(name), dotted=dotted)
    n = training_slices(cfg)
    steps = setting_steps(item, n, cfg.finetune.batch_size, cfg.train.batch_size)
    train = (f"{item.train_epochs} epochs of batch {cfg.train.batch_size}"
             f"{', last partial batch dropped' if item.drop_last else ''}" if item.train_epochs is not None
             else "the authors' iteration count")
    lines = [f"{item.name}: {item.title}", *describe_recipe(item, cfg),
             f"  steps    finetune {steps['finetune.steps']} ({item.finetune_epochs} epochs of batch "
             f"{cfg.finetune.batch_size}), train {steps['train.steps']} ({train}) on {n} training slices",
             " ".join(f"--set {key}={value}" for key, value in steps.items())]
    return "\n".join(lines)
