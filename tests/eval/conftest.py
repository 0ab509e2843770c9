"""Shared fixtures of the evaluation tests: the built-in model's tokenizer (no model weights needed) and the
rows of a small serial evaluation on a tiny model (``runner_job.CONFIG``)."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    from spantrace.model import builtin

    entry = builtin.cache_entry()
    if builtin.is_complete(entry):
        return AutoTokenizer.from_pretrained(entry)
    return builtin.load_builtin()[1]


@pytest.fixture(scope="session")
def serial_rows(tmp_path_factory, tokenizer) -> list[dict]:
    from runner_job import CONFIG, tiny_model

    from spantrace.eval.runner import run_eval

    out = tmp_path_factory.mktemp("serial") / "rows.jsonl"
    run_eval(tiny_model(tokenizer), CONFIG, out)
    return [json.loads(line) for line in out.read_text().splitlines()]
