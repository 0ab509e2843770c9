"""The ``spantrace`` command line: a thin shell that parses options, calls the library and shows the result.

    spantrace trace --prompt "Tom has 3 apples and buys 4 more. How many?" --span answer --html trace.html
    spantrace methods
    spantrace models
    spantrace eval --task niah_single -n 20 --out results.jsonl
    spantrace report results.jsonl
    spantrace serve                      # the interactive viewer at http://127.0.0.1:8000/

Every error a person can fix (a bad option, a span that matches nothing, a model that does not load)
is one line on stderr and exit code 2; progress bars go to stderr, the report to stdout.

This module holds the Typer ``app`` (with the one-line error group) and ``main``; each command is a module
of its own (``trace``, ``methods``, ``models``, ``evaluate``, ``report``, ``serve``), sharing ``common``.
"""

from __future__ import annotations

import sys
from typing import Any

import typer
from typer.core import TyperGroup

from . import evaluate, methods, models, report, serve, trace
from .common import EVAL_EXAMPLES, one_line

# Click's base error class, wherever this Typer keeps Click (recent versions vendor it).
_CLICK_ERROR = next(cls for cls in typer.BadParameter.__mro__ if cls.__name__ == "ClickException")


class _OneLineErrors(TyperGroup):
    """Report usage errors as one line on stderr (exit code 2) instead of Click's usage box."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except _CLICK_ERROR as error:  # bad options (exit code 2), unreadable files
            context = getattr(error, "ctx", None)
            hint = f" (see '{context.command_path} --help')" if context is not None else ""
            typer.echo(f"Error: {one_line(error.format_message())}{hint}", err=True)
            sys.exit(error.exit_code)
        except typer.Abort:
            typer.echo("Aborted.", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=_OneLineErrors,
    name="spantrace",
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # Click's compact help; the examples keep their lines (\b)
)


@app.callback(invoke_without_command=True)
def _root(context: typer.Context) -> None:
    """Explain what a language model's generated text rests on (FlashTrace span attribution).

    \b
    Example:
      spantrace trace --prompt "What is 17 + 25?" --span answer --html trace.html
    """
    if context.invoked_subcommand is None:
        typer.echo(context.get_help())


# The commands in the order `spantrace --help` lists them.
app.command(epilog=trace.EXAMPLES)(trace.trace)
app.command(epilog=methods.EXAMPLES)(methods.methods)
app.command(epilog=models.EXAMPLES)(models.models)
app.command(name="eval", epilog=EVAL_EXAMPLES)(evaluate.eval_)
app.command(epilog=EVAL_EXAMPLES)(report.report)
app.command(epilog=serve.EXAMPLES)(serve.serve)


def main() -> None:
    """The console-script entry point."""
    app()
