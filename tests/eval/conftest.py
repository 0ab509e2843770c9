"""Shared fixtures of the evaluation tests: the built-in model's tokenizer (no model weights needed)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    from spantrace.model import builtin

    entry = builtin.cache_entry()
    if builtin.is_complete(entry):
        return AutoTokenizer.from_pretrained(entry)
    return builtin.load_builtin()[1]
