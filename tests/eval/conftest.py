"""Shared fixture of the evaluation tests: the rows of a small serial evaluation on a tiny model
(``runner_job.CONFIG``)."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="session")
def serial_rows(tmp_path_factory, tokenizer) -> list[dict]:
    from runner_job import CONFIG, tiny_model

    from spantrace.eval.runner import run_eval

    out = tmp_path_factory.mktemp("serial") / "rows.jsonl"
    run_eval(tiny_model(tokenizer), CONFIG, out)
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.fixture(scope="session")
def builtin_cache(tokenizer):
    """The built-in tokenizer's cache, built when missing (the ``tokenizer`` fixture builds it), for the tests
    that start evaluation runs in subprocesses: they read the tokenizer from there. Built at run time, not checked
    at collection, so a fresh machine runs these tests instead of skipping them."""
    from spantrace.loading import builtin

    entry = builtin.cache_entry()
    assert builtin.is_complete(entry), f"the built-in tokenizer's cache at {entry} is still incomplete"
    return entry
