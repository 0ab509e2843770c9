"""What every ``spantrace`` command shares: the exit code of user errors, one-line error output, the text and
JSON option readers, the method check, the progress spinner and quieting transformers' own output."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from ..errors import ModelLoadError
from ..loading.placement import dispatch_options, parse_device_map, parse_max_memory
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
    except (OSError, ValueError, RecursionError) as error:  # ValueError: bad JSON, bad UTF-8, a huge integer
        reason = "nested too deeply" if isinstance(error, RecursionError) else one_line(str(error))
        message = f"could not read {path} as JSON ({reason})"
        raise typer.BadParameter(message, param_hint=f"'{name}'") from error


# --device-map, --max-memory, --offload-folder: the same three options on `trace`, `eval` and `serve`.
DeviceMapOption = Annotated[str | None, typer.Option(
    "--device-map", metavar="MAP", help="Spread the model over devices, the CPU and disk with accelerate: auto, "
    "balanced, sequential, cpu, or a JSON dict of module names to a device, 'cpu' or 'disk'.")]
MaxMemoryOption = Annotated[str | None, typer.Option(
    "--max-memory", metavar="LIMITS", help="With --device-map: memory per device, e.g. 0=20GiB,cpu=60GiB (or JSON).")]
OffloadFolderOption = Annotated[Path | None, typer.Option(
    "--offload-folder", file_okay=False, metavar="PATH", help="With --device-map: where layers on 'disk' go.")]


def placement_options(
    device_map: str | None, max_memory: str | None, offload_folder: Path | None, device: str | None = None
) -> dict[str, Any]:
    """``spantrace.load``'s ``device_map``, ``max_memory`` and ``offload_folder`` from the three options, checked
    before the model loads (only those given); a one-line usage error naming the option otherwise."""
    hint = "'--device-map'"
    try:
        mapped = parse_device_map(device_map) if device_map is not None else None
        hint = "'--max-memory'"
        limits = parse_max_memory(max_memory) if max_memory is not None else None
        hint = "'--device-map' / '--max-memory' / '--offload-folder'"
        dispatch_options(mapped, limits, offload_folder, device=None)
        if device is not None and mapped is not None:
            raise ModelLoadError("give either --device (the whole model on one device) or --device-map, not both")
    except ModelLoadError as error:
        raise typer.BadParameter(str(error), param_hint=hint) from error
    folder = str(offload_folder) if offload_folder is not None else None
    given = {"device_map": mapped, "max_memory": limits, "offload_folder": folder}
    return {name: value for name, value in given.items() if value is not None}  # none given: load as before


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
