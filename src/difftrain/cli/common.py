"""Shared CLI plumbing: exit codes and error reporting."""

from __future__ import annotations

import functools
import sys

import typer
from rich.console import Console
from rich.text import Text

from difftrain.config import ConfigError
from difftrain.errors import CheckpointError, DataError, TrainingDiverged  # light: no torch

# soft_wrap: never break an error message mid-phrase (it is read by people and by scripts).
# markup=False: messages carry user text (paths, class names, keys) that may contain "[...]";
# Rich must print it literally, never interpret it (a stray "[/raw]" raised MarkupError). Style
# with Text(..., style=...) instead of markup. highlight=False: no guessed colours in user text.
err_console = Console(stderr=True, soft_wrap=True, markup=False, highlight=False)
console = Console(soft_wrap=True, markup=False, highlight=False)

EXIT_BAD_INPUT = 2
EXIT_FAILURE = 1
# The longest message we print: a message built from user input (a YAML alias bomb, a huge
# value) must not flood the terminal; the head names the key and the problem.
MAX_MESSAGE_CHARS = 4000


def bounded(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`text` cut to `limit` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]} ... [{len(text) - limit} more characters not shown]"


def print_error(prefix: str, err: BaseException | str) -> None:
    """`prefix: message` on stderr: prefix in bold red, the message literal and bounded."""
    err_console.print(Text.assemble((prefix, "bold red"), " ", bounded(str(err))))


def handle_errors(fn):
    """Bad input → message and exit 2; an unrecoverable failure → message and exit 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ConfigError, DataError) as err:
            print_error("error:", err)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except CheckpointError as err:
            print_error("checkpoint error:", err)
            raise typer.Exit(EXIT_FAILURE) from None
        except TrainingDiverged as err:
            print_error("training diverged:", err)
            raise typer.Exit(EXIT_FAILURE) from None
        except KeyboardInterrupt:
            err_console.print("interrupted; the latest checkpoint is intact (resume with --resume)")
            sys.exit(130)

    return wrapper
