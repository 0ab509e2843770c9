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
