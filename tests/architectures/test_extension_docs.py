"""docs/adding-an-architecture.md: its code blocks run as written, and do what the page says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import spantrace
from spantrace.architectures import registry as adapter_registry
from spantrace.methods import registry as method_registry

PAGE = Path(__file__).resolve().parents[2] / "docs" / "adding-an-architecture.md"


@pytest.fixture
def restore_registries():
    adapters, methods = dict(adapter_registry._ADAPTERS), dict(method_registry._METHODS)
    yield
    adapter_registry._ADAPTERS.clear()
    adapter_registry._ADAPTERS.update(adapters)
    method_registry._METHODS.clear()
    method_registry._METHODS.update(methods)


def test_the_worked_examples_run(restore_registries, capsys):
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)
    assert len(blocks) == 3
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(PAGE), "exec"), namespace)  # noqa: S102 — our own documentation
    printed = capsys.readouterr().out
    assert "before: model type 'helium'" in printed  # refused until registered
    assert namespace["model"].self_check.max_relative_error < 1e-5
    assert "attention-first" in spantrace.list_methods()
    assert namespace["result"].scores.shape == (24,)
