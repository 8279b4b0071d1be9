"""The `s2s2` command line: parses options, loads the config, delegates to a stage. No logic here.

Heavy imports (torch, diffusers, zarr) happen inside the commands so `s2s2 --help` stays fast.
`run` is the one error boundary: usage, config, data and store errors print one message and exit with
status 2; a traceback is shown only when S2S2_DEBUG=1 or `s2s2 --debug` asks for it.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from s2s2.pipeline.errors import S2S2Error
from s2s2.pipeline.signals import Interrupted

app = typer.Typer(
    help="S2S2: semantic stacking for robust medical image segmentation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
stack_app = typer.Typer(help="Create and inspect stack stores (Zarr).", no_args_is_help=True)
data_app = typer.Typer(help="Prepare and look at datasets.", no_args_is_help=True)
paper_app = typer.Typer(help="The paper's settings (configs/paper): what each reproduces and the data it needs.",
                        no_args_is_help=True)
app.add_typer(stack_app, name="stack")
app.add_typer(data_app, name="data")
app.add_typer(paper_app, name="paper")

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config file; explicit options override it.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override any config field: --set train.steps=100 (repeatable).")]


# --- data commands -------------------------------------------------------------------

AdapterOpt = Annotated[Optional[str], typer.Option(
    help="Dataset adapter: icbm152 (default, offline), spm152 (out-of-domain), folder, nnunet, npz.")]
SizeOpt = Annotated[Optional[int], typer.Option(help="Resize images and masks to SIZE x SIZE pixels.")]
RootOpt = Annotated[Optional[Path], typer.Option(help="Dataset folder (folder, nnunet and npz adapters).")]
ContrastOpt = Annotated[Optional[str], typer.Option(help="spm152 only: T1, PD or T2.")]


def _data_overrides(adapter: Optional[str], size: Optional[int], root: Optional[Path],
                    contrast: Optional[str]) -> dict[str, object]:
    """The explicit data options as dotted config overrides (None = not given, keep the config's)."""
    return {"data.adapter": adapter, "data.size": size, "data.root": str(root) if root else None,
            "data.contrast": contrast}


@data_app.command("prepare")
def data_prepare(config: ConfigOpt = None, set_: SetOpt = None, adapter: AdapterOpt = None, size: SizeOpt = None,
                 root: RootOpt = None, contrast: ContrastOpt = None) -> None:
    """Materialise the configured dataset (resized, split, cached) and print a summary."""
    from s2s2.pipeline.config.base import load_config
    from s2s2.pipeline.config.project import ProjectConfig
    from s2s2.pipeline.data.prepare import prepare_dataset, prepared_folder
    from s2s2.pipeline.data.summary import data_notice, describe

    cfg = load_config(ProjectConfig, config, overrides=_data_overrides(adapter, size, root, contrast), dotted=set_)
    dataset = prepare_dataset(cfg.data)
    typer.echo(describe(dataset, prepared_folder(cfg.data)))
    notice = data_notice(cfg.data.adapter)
    if notice:
        typer.echo(f"notice      {notice}")


@data_app.command("show")
def data_show(
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG file to write the grid to.")],
    config: ConfigOpt = None, set_: SetOpt = None, adapter: AdapterOpt = None, size: SizeOpt = None,
    root: RootOpt = None, contrast: ContrastOpt = None,
    split: Annotated[str, typer.Option(help="Which split to show: train, val, test or all.")] = "train",
    n: Annotated[int, typer.Option("--n", min=1, max=120,
                                   help="How many samples (spread evenly over the split).")] = 12,
) -> None:
    """Write a PNG grid of images with their mask overlays and print class pixel counts."""
    from s2s2.pipeline.config.base import load_config
    from s2s2.pipeline.config.project import ProjectConfig
    from s2s2.pipeline.data.prepare import prepare_dataset
    from s2s2.pipeline.data.summary import class_pixel_counts, show_grid

    cfg = load_config(ProjectConfig, config, overrides=_data_overrides(adapter, size, root, contrast), dotted=set_)
    dataset = prepare_dataset(cfg.data)
    picks = show_grid(dataset, split, n, out)
    counts = class_pixel_counts(dataset, dataset.indices(split))
    typer.echo(f"{dataset.name} split {split}: {len(dataset.indices(split))} samples, showing {len(picks)}")
    for i, (name, count) in enumerate(counts.items()):
        typer.echo(f"  {i} {name:<16} {count:>9} px")
    typer.echo(f"wrote {out}")


# --- stack commands ------------------------------------------------------------------


@stack_app.command("init")
def stack_init(
    out: Annotated[Optional[str], typer.Argument(help="Store path or fsspec URL (default: the config's store.path).")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", "--data", "-c", help="YAML config whose data section names the dataset.")] = None,
    set_: SetOpt = None,
    k: Annotated[Optional[int], typer.Option("--k", help="Generated images per mask (store.k).")] = None,
    shard_size: Annotated[Optional[int], typer.Option("--shard-size", help="Samples per shard file (store.shard_size).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing store made for other parameters.")] = False,
) -> None:
    """Create a stack store: originals and masks of the train split written, stack empty."""
    from s2s2.pipeline.config.base import load_config
    from s2s2.pipeline.config.project import ProjectConfig
    from s2s2.store.commands import run_init

    cfg = load_config(ProjectConfig, config, overrides={"store.k": k, "store.shard_size": shard_size}, dotted=set_)
    store = run_init(cfg, out, overwrite)
    typer.echo(f"stack store {store.path}: N={store.n_samples}, K={store.k}, {store.num_shards} shards, "
               f"{len(store.pending_shards())} pending")


@stack_app.command("inspect")
def stack_inspect(
    path: Annotated[Optional[str], typer.Argument(help="Store path or fsspec URL (default: the config's store.path).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    preview: Annotated[Optional[Path], typer.Option("--preview", help="Write a PNG grid: mask | original | K stack images, each titled with its source.")] = None,
    verify: Annotated[bool, typer.Option("--verify", help="Decode every chunk and check the images; exit 2 naming bad shards.")] = False,
) -> None:
    """Summarise a stack store (layout, completion, sources, mask fidelity against the originals,
    appearance diversity); optionally verify it."""
    from s2s2.pipeline.config.base import load_config
    from s2s2.pipeline.config.project import ProjectConfig
    from s2s2.store.commands import run_inspect

    cfg = load_config(ProjectConfig, config, dotted=set_)
    run_inspect(path or cfg.store.path, json_, preview, verify, cfg.store.storage_options, typer.echo)

# --- stage one commands: finetune, generate -------------------------------------------


@app.command()
def finetune(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    base_model: Annotated[Optional[str], typer.Option(help="Hub id, local diffusers folder, or 'tiny' (generator.base_model).")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Total optimizer steps (finetune.steps).")] = None,
    max_seconds: Annotated[Optional[float], typer.Option(help="Optional cap: stop, save and flag the run after this many seconds (finetune.max_seconds).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint at its exact step.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Train again even if the generator folder exists.")] = False,
) -> None:
    """Fine-tune the ControlNet on the masks; save a complete diffusers pipeline folder.

    Defaults follow the base: a tiny base (generator.base_model: tiny) brings the CPU recipe `make generate`
    runs (800 steps, lr 1e-3, batch 8, base UNet trained too, min-SNR 5); a Stable Diffusion base the
    paper's (20,000 steps, lr 1e-5, batch 16, base UNet locked). A finetune field set in the config or on
    the command line always wins; the recipe used is logged at the start.
    """
    import os

    import torch

    from s2s2.pipeline.config.base import load_config
    from s2s2.pipeline.config.project import ProjectConfig
    from s2s2.stages.finetune import run_finetune

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))  # 1 unless asked: same bytes on every run
    overrides = {"generator.base_model": base_model, "finetune.steps": steps, "finetune.max_seconds": max_seconds}
    cfg = load_config(ProjectConfig, config, overrides=overrides, dotted=set_)
    if cfg.generator.kind == "synth":  # a training-free source: `make generate` goes straight to the stack
        typer.echo("generator.kind is synth: nothing to fine-tune")
        return
    typer.echo(f"generator: {run_finetune(cfg, resume=resume, overwrite=overwrite)}")


@app.command()
def generate(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    k: Annotated[Optional[int], typer.Option("--k", help="Generated images per mask (store.k).")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Dask worker processes of the local cluster (generate.workers).")] = None,
    dask_scheduler: Annotated[Optional[str], typer.Option("--dask-scheduler", help="Join an existing dask scheduler, tcp://host:port (generate.scheduler_address).")] = None,
    old_scheduler: Annotated[Optional[str], typer.Option("--scheduler", hidden=True)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Regenerate every shard if the store was filled by another generator.")] = False,
    force: Annotated[bool, typer.Option("--force", help="With --overwrite: take over a store that another generate run is still writing (it stops at its next shard).")] = False,
) -> None:
    """Fill the stack store with K images per mask (resumes pending shards by default; several runs on one store split the shards)."""
    if old_scheduler is not None:  # renamed: generate.scheduler is the diffusion sampler, not the dask address
        raise S2S2Error(f"option --scheduler was renamed; fix: use --dask-scheduler {old_scheduler} "
                        "(the diffusion sampler is set with --set generate.scheduler=NAME)")
    from s2s2.pipeline.config.base import load_config
    from s2s2.pipeline.config.project import ProjectConfig
    from s2s2.stages.generate import run_generate

    overrides = {"store.k": k, "generate.workers": workers, "generate.scheduler_address": dask_scheduler}
    cfg = load_config(ProjectConfig, config, overrides=overrides, dotted=set_)
    run_generate(cfg, overwrite=overwrite, force=force)

# --- stage two commands: train, evaluate ----------------------------------------------


@app.command()
def train(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    name: Annotated[Optional[str], typer.Option(help="Run name: outputs go to RUN_DIR/train/NAME.")] = None,
    model: Annotated[Optional[str], typer.Option(help="Segmenter: unet, transunet or fcbformer.")] = None,
    stack: Annotated[Optional[bool], typer.Option("--stack/--baseline", help="S2S2 from the stack store, or the baseline without it.")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Optimisation steps.")] = None,
    max_seconds: Annotated[Optional[float], typer.Option(help="Optional wall-time cap: stop (checkpointed, flagged in summary.json) once spent.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of weights, data order, k draws and augmentation.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue RUN_DIR/train/NAME at its last checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the run already in RUN_DIR/train/NAME.")] = False,
    stop_after: Annotated[Optional[int], typer.Option(help="End this invocation after N steps (resumable).")] = None,
) -> None:
    """Train a segmenter: S2S2 from the stack store, or the baseline (--baseline). Works under torchrun and accelerate launch."""
    import os

    import torch

    from s2s2.pipeline.config.base import load_config
    from s2s2.pipeline.config.project import ProjectConfig
    from s2s2.stages.train import run_train

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))  # 1 unless asked: see notes on threads
    cfg = load_config(ProjectConfig, config, overrides={"train.name": name, "model.name": model, "train.stack": stack,
                                                        "train.steps": steps, "train.max_seconds": max_seconds,
                                                        "train.seed": seed}, dotted=set_)
    folder = run_train(cfg, resume=resume, stop_after=stop_after, overwrite=overwrite)
    typer.echo(f"run folder: {folder}")


@app.command()
def evaluate(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    run: Annotated[Optional[Path], typer.Option(help="Run folder: read and written as given; its config.yaml is used unless --config is given.")] = None,
    name: Annotated[Optional[str], typer.Option(help="Run name (RUN_DIR/train/NAME) when --run is not given.")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(help="Weights to evaluate (default: evaluate.checkpoint: the run's model.safetensors or last.safetensors).")] = None,
    model: Annotated[Optional[Path], typer.Option(help="A run folder (as --run) or a model folder of `s2s2 export` (its training_config.yaml is used unless --config is given).")] = None,
    test_set: Annotated[Optional[list[str]], typer.Option("--test-set", help="Only these test sets (repeatable; added to metrics.json, the others kept): in_domain, spm_t1, ...")] = None,
    atlas_copy: Annotated[bool, typer.Option("--atlas-copy", help="Score the atlas copy instead of a model: the training "
                                             "label map at each test slice's position, no image (RUN_DIR/atlas-copy/).")] = False,
) -> None:
    """Dice and HD95 per slice and per volume, in-domain and out-of-domain; writes metrics.json and predictions.png."""
    import os

    import torch

    from s2s2.pipeline.config.base import load_config
    from s2s2.pipeline.config.project import ProjectConfig
    from s2s2.stages.evaluate import run_atlas_copy, run_evaluate, summary_lines

    from s2s2.pipeline.segmenters import is_model_folder

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    model_folder = model if model is not None and is_model_folder(model) else None
    run = model if model is not None and model_folder is None else run
    if config is None and (run is not None or model_folder is not None):
        config = run / "config.yaml" if run is not None else model_folder / "training_config.yaml"
    cfg = load_config(ProjectConfig, config, overrides={"train.name": name}, dotted=set_)
    results = run_atlas_copy(cfg, sets=test_set) if atlas_copy else run_evaluate(
        cfg, checkpoint=checkpoint, sets=test_set, folder=run, model_folder=model_folder)
    for line in summary_lines(results):
        typer.echo(line)


@app.command()
def predict(
    model: Annotated[Path, typer.Option("--model", "-m", help="A model folder (`s2s2 export`) or a run folder (RUN_DIR/train/NAME).")],
    input_: Annotated[Path, typer.Option("--input", "-i", help="A scan, or a folder of them: NIfTI (.nii/.nii.gz, nnU-Net <case>_0000 names), PNG/JPEG/TIFF, npz.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output file (one input file) or folder: masks in the input's format and geometry.")],
    save_probabilities: Annotated[bool, typer.Option("--save-probabilities", help="Also write <case>_probabilities.npz (class probabilities, input geometry).")] = False,
    tta: Annotated[Optional[str], typer.Option("--tta", help="Test-time augmentation: 'flip' averages with the left-right mirrored input.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Redo outputs that exist (default: keep them, so a folder run resumes).")] = False,
    batch_size: Annotated[int, typer.Option(help="Slices per forward pass.")] = 16,
) -> None:
    """Segment new scans: each input prepared as the training data was, each mask written in the input's format and geometry."""
    import os

    import torch

    from s2s2.stages.predict import run_predict

    if tta not in (None, "flip"):
        raise typer.BadParameter(f"--tta {tta!r}: the one test-time augmentation is 'flip'")
    if device not in ("auto", "cpu", "cuda"):
        raise typer.BadParameter(f"--device {device!r}: use auto, cpu or cuda")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    written = run_predict(model, input_, output, device=device, tta=tta == "flip",
                          save_probabilities=save_probabilities, overwrite=overwrite, batch_size=batch_size)
    typer.echo(f"{len(written)} mask(s) written to {output}")


@app.command()
def export(
    run: Annotated[Path, typer.Option("--run", help="Run folder of `s2s2 train` (RUN_DIR/train/NAME).")],
    out: Annotated[Path, typer.Option("--out", help="Model folder to write: config.json + model.safetensors.")],
) -> None:
    """Export a run's best model as a self-describing model folder (loads anywhere with from_pretrained)."""
    from s2s2.stages.predict import run_export

    typer.echo(f"model folder: {run_export(run, out)}")


@app.command()
def report(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    runs: Annotated[Optional[list[str]], typer.Option("--run", help="Run names in table order (default: all evaluated).")] = None,
    atlas_copy: Annotated[bool, typer.Option("--atlas-copy/--no-atlas-copy", help="Add the atlas-copy reference row "
                                             "(the training label map at each test slice's position, no image).")] = True,
) -> None:
    """Collect evaluated runs into RUN_DIR/results.md and results.json and print the tables."""
    from s2s2.pipeline.config.base import load_config
    from s2s2.pipeline.config.project import ProjectConfig
    from s2s2.stages.report import run_report

    cfg = load_config(ProjectConfig, config, dotted=set_)
    _, table = run_report(cfg, runs, atlas_copy)
    typer.echo(table)


# --- the paper's settings ---------------------------------------------------------------


@paper_app.command("list")
def paper_list() -> None:
    """Print every paper setting: its config, the paper's numbers, the data it expects and where to put it."""
    from s2s2.stages.paper import describe_settings

    typer.echo(describe_settings())


@paper_app.command("steps")
def paper_steps(
    name: Annotated[str, typer.Argument(help="Setting name, e.g. slaug_ct_to_mri (see `s2s2 paper list`).")],
    set_: SetOpt = None,
) -> None:
    """Prepare the setting's data and print what stage two runs (L_enc stages, loss weights, augmentation) and
    the epoch-exact step counts, last as --set options for its commands."""
    from s2s2.stages.paper import describe_steps

    typer.echo(describe_steps(name, set_))


def _log_to_stderr() -> None:
    """Show the library's progress messages (logger `s2s2`, INFO and up) on stderr, one per line."""
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("s2s2")
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def _debug() -> bool:
    """True when the user asked for tracebacks (S2S2_DEBUG=1 or `s2s2 --debug ...`)."""
    return os.environ.get("S2S2_DEBUG", "").strip() not in ("", "0")


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show the full traceback of any error (same as S2S2_DEBUG=1).")] = False) -> None:
    if debug:
        os.environ["S2S2_DEBUG"] = "1"


@functools.cache
def _click_command() -> typer.core.TyperGroup:
    """The click command tree typer builds from `app` (once: building it takes ~0.1 s)."""
    return typer.main.get_command(app)


def _command_path(argv: list[str]) -> str:
    """The command named by the leading words of `argv` ("s2s2 stack init"), for errors that carry no context."""
    command, words = _click_command(), ["s2s2"]
    for word in argv:
        sub = getattr(command, "commands", {}).get(word)
        if sub is None:
            if not word.startswith("-"):
                break
            continue
        command, words = sub, [*words, word]
    return " ".join(words)


def _report(err: BaseException, argv: list[str]) -> int:
    """Print `err` as one message on stderr and return the exit status: 2 for anything the user can fix."""
    if isinstance(err, SystemExit):
        return err.code if isinstance(err.code, int) else (0 if err.code is None else 1)
    if isinstance(err, typer.TyperException):  # click's usage errors (typer vendors click; the base class is public)
        ctx = getattr(err, "ctx", None)
        if type(err).__name__ == "NoArgsIsHelpError":  # `s2s2` or `s2s2 stack` alone: the help was printed
            message = err.format_message()  # empty when rich printed the help itself
            if message.strip():
                typer.echo(message, err=True)
            return 2
        where = ctx.command_path if ctx is not None else _command_path(argv)
        typer.secho(f"error: {where}: {err.format_message()} (see '{where} --help')", fg=typer.colors.RED, err=True)
        return 2
    if isinstance(err, S2S2Error):
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        return 2
    if isinstance(err, OSError) and err.filename is not None:  # a path the system refused: not a bug of ours
        typer.secho(f"error: cannot use {err.filename}: {err.strerror or err}; fix: point run_dir, data.cache_dir, "
                    "store.path (or the option given) at a folder you may create and write",
                    fg=typer.colors.RED, err=True)
        return 2
    if isinstance(err, Interrupted):  # a command that cleaned up after a signal: what was kept, how to resume
        typer.secho(str(err), fg=typer.colors.YELLOW, err=True)
        return err.exit_status
    if isinstance(err, KeyboardInterrupt):
        typer.echo("interrupted", err=True)
        return 130
    typer.secho(f"error: unexpected {type(err).__name__}: {err}\n  this is a bug in s2s2 or an input it does not "
                "check yet; rerun with S2S2_DEBUG=1 (or `s2s2 --debug ...`) for the traceback and report it",
                fg=typer.colors.RED, err=True)
    return 1


def run(argv: list[str] | None = None) -> int:
    """Run the command line on `argv` (default: sys.argv) and return its exit status.

    This is the CLI's one error boundary: usage, config, data and store errors become one message and
    status 2; no traceback reaches the user unless S2S2_DEBUG=1 or `--debug` asks for it.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        status = _click_command().main(args=argv, prog_name="s2s2", standalone_mode=False)
    except BaseException as err:
        if _debug() and not isinstance(err, SystemExit):
            raise
        return _report(err, argv)
    return status if isinstance(status, int) else 0  # typer.Exit(code) is returned, not raised, here


def main() -> None:
    """Entry point: progress messages on stderr, then the command; exits with its status when not 0."""
    _log_to_stderr()
    status = run()
    if status:
        sys.exit(status)


if __name__ == "__main__":
    main()
