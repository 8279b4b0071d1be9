"""The `s2s2` command line: parses options, loads the config, delegates to a stage. No logic here.

Heavy imports (torch, diffusers, zarr) happen inside the commands so `s2s2 --help` stays fast.
User errors (`S2S2Error`) are printed without a traceback and exit with status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from s2s2.pipeline.errors import S2S2Error

app = typer.Typer(
    help="S2S2: semantic stacking for robust medical image segmentation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
stack_app = typer.Typer(help="Create and inspect stack stores (Zarr).", no_args_is_help=True)
data_app = typer.Typer(help="Prepare and look at datasets.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")
app.add_typer(data_app, name="data")

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config file; explicit options override it.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override any config field: --set train.steps=100 (repeatable).")]


# --- data commands (issue 2) -------------------------------------------------------------------

# --- stack commands (issue 3) ------------------------------------------------------------------

# --- stage one commands: finetune, generate (issue 4) -------------------------------------------

# --- stage two commands: train, evaluate (issue 5) ----------------------------------------------


def main() -> None:
    """Entry point: run the app; turn user errors into one message and exit status 2."""
    try:
        app(standalone_mode=False)
    except S2S2Error as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as err:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(err, click.ClickException):
            err.show()
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()
