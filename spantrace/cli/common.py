"""What every ``spantrace`` command shares: the exit code of user errors, one-line error output, the text and
JSON option readers, the method check, the progress spinner and quieting transformers' own output."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from ..methods.registry import available_methods

USAGE_ERROR = 2  # exit code of every error the user can fix (Click's own usage errors use it too)

EVAL_EXAMPLES = """\b
Examples:
  spantrace eval --task niah_single -n 20 --length 1024 --methods flashtrace,ifr,occlusion --out results.jsonl
  spantrace eval --task gsm8k -n 200 --methods flashtrace,ifr --ray --workers 8 --out gsm8k.jsonl
  spantrace report results.jsonl --markdown results.md
"""  # the epilog of both `eval` and `report`


def check_method(name: str) -> str:
    """``name`` when it is a registered method; else a usage error listing the registered ones."""
    if name not in available_methods():
        raise typer.BadParameter(f"unknown method {name!r}; choose from {', '.join(available_methods())}")
    return name


def text_option(text: str | None, path: Path | None, name: str, *, required: bool) -> str | None:
    """The text of ``name`` or of ``name-file``; UsageError unless exactly one is given (or none, if optional)."""
    if text is not None and path is not None:
        raise typer.BadParameter("give one of them, not both", param_hint=f"'{name}' / '{name}-file'")
    if path is not None:
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            message = f"could not read {path} as UTF-8 text ({error})"
            raise typer.BadParameter(message, param_hint=f"'{name}-file'") from error
    if text is None and required:
        raise typer.BadParameter(f"give {name} TEXT or {name}-file PATH", param_hint=f"'{name}'")
    return text


def json_option(path: Path, name: str) -> Any:
    """The JSON in ``path``; UsageError (one line) when it is not readable JSON."""
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        message = f"could not read {path} as JSON ({one_line(str(error))})"
        raise typer.BadParameter(message, param_hint=f"'{name}'") from error


@contextmanager
def working(what: str, enabled: bool) -> Iterator[None]:
    """An open-ended progress bar on stderr while the block runs (hidden when ``enabled`` is False)."""
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True, disable=not enabled) as bar:
        bar.add_task(what, total=None)
        yield


def quiet_transformers() -> None:
    """Hide transformers' own weight-loading bar and warnings: the CLI shows its own progress."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


def fail(message: str, *, code: int = USAGE_ERROR) -> NoReturn:
    """Print ``message`` as one ``Error:`` line on stderr and exit with ``code``."""
    typer.echo(f"Error: {one_line(message)}", err=True)
    raise typer.Exit(code)


def one_line(message: str) -> str:
    """``message`` with its lines joined by single spaces (blank lines dropped)."""
    return " ".join(line.strip() for line in message.splitlines() if line.strip())
