"""Shared CLI plumbing: exit codes and error reporting."""

from __future__ import annotations

import functools
import sys

import typer
from rich.console import Console

from difftrain.config import ConfigError
from difftrain.data import DataError
from difftrain.pipeline.checkpoint import CheckpointError
from difftrain.train.loop import TrainingDiverged

# soft_wrap: never break an error message mid-phrase (it is read by people and by scripts).
err_console = Console(stderr=True, soft_wrap=True)
console = Console(soft_wrap=True)

EXIT_BAD_INPUT = 2
EXIT_FAILURE = 1


def handle_errors(fn):
    """Bad input → message and exit 2; an unrecoverable failure → message and exit 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ConfigError, DataError) as err:
            err_console.print(f"[bold red]error:[/] {err}", highlight=False, markup=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except CheckpointError as err:
            err_console.print(f"[bold red]checkpoint error:[/] {err}", highlight=False)
            raise typer.Exit(EXIT_FAILURE) from None
        except TrainingDiverged as err:
            err_console.print(f"[bold red]training diverged:[/] {err}", highlight=False)
            raise typer.Exit(EXIT_FAILURE) from None
        except KeyboardInterrupt:
            err_console.print("interrupted; the latest checkpoint is intact (resume with --resume)")
            sys.exit(130)

    return wrapper
