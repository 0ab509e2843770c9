"""``spantrace methods``: the registered attribution methods, one line each."""

from __future__ import annotations

import typer

from ..methods.registry import describe_methods

EXAMPLES = "\b\nExample:\n  spantrace methods"


def methods() -> None:
    """List the registered attribution methods, one line each, with their cost class."""
    described = describe_methods()
    name_width = max(len(info.name) for info in described)
    cost_width = max(len(info.cost) for info in described)
    for info in described:
        typer.echo(f"{info.name:<{name_width}}  {info.cost:<{cost_width}}  {info.description}")
