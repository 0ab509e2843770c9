"""``spantrace models``: the built-in model (installed? cached?) and the architectures ``--model`` accepts."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from ..architectures.catalog import NOTES, REFUSED
from ..architectures.registry import supported_architectures
from ..errors import SpanTraceError
from ..loading import builtin

EXAMPLES = "\b\nExample:\n  spantrace models"


def models() -> None:
    """List the built-in model and the architectures --model accepts."""
    try:
        builtin.find_builtin_gguf()
        state = "installed"
        if builtin.is_complete(builtin.cache_entry()):
            state += ", cached"
    except SpanTraceError:
        state = f"not installed: {builtin.INSTALL_LINE}"
    typer.echo(f"built-in model:\n  {builtin.DEFAULT_MODEL}  SmolLM2-135M-Instruct (the default; {state})")
    table = Table(title="supported architectures (config.model_type)", show_lines=False, expand=False)
    for column in ("model_type", "checkpoints", "handled exactly"):
        table.add_column(column, overflow="fold")
    for model_type in supported_architectures():
        note = NOTES.get(model_type)
        table.add_row(model_type, note.checkpoints if note else "(registered)", note.details if note else "")
    console = Console(width=max(100, Console().width))
    console.print(table)
    console.print("refused (each load of such a model says why):")
    for model_type, reason in sorted(REFUSED.items()):
        console.print(f"  {model_type}: {reason}", highlight=False)
    console.print(
        "--model takes a Hugging Face hub id, a folder saved with save_pretrained, or a .gguf file. "
        "Every model is self-checked at load; add an architecture with spantrace.register_adapter "
        "(docs/adding-an-architecture.md).",
        highlight=False,
    )
