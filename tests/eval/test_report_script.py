"""scripts/eval_report.sh's settings are valid: every task it names exists and fits its prompt length."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from spantrace.eval.tasks import TASK_NAMES, make_samples
from spantrace.eval.tasks.ruler import ruler_spec

SCRIPT = Path(__file__).parents[2] / "scripts" / "eval_report.sh"
OPTIONS = dict(re.findall(r'^\s+\[(\w+)\]="([^"]*)"$', SCRIPT.read_text(), flags=re.MULTILINE))


def test_the_script_names_every_task_once_with_options():
    order = re.search(r"^ORDER=\((.*)\)$", SCRIPT.read_text(), flags=re.MULTILINE).group(1).split()
    assert sorted(order) == sorted(OPTIONS) and len(order) == 7


@pytest.mark.parametrize("task", sorted(OPTIONS))
def test_each_task_of_the_script_can_be_made(task, tokenizer):
    words = OPTIONS[task].split()
    settings = {words[i].lstrip("-").replace("-", "_"): words[i + 1] for i in range(0, len(words), 2)}
    assert set(settings) <= {"length", "max_new_tokens", "measures"}
    assert settings.get("measures", "token") == "token"  # the committed rows have token-level measures only
    settings = {key: int(value) for key, value in settings.items() if key != "measures"}
    if ruler_spec(task) is None:
        assert task in TASK_NAMES and "length" not in settings
        return
    samples = make_samples(task, 2, tokenizer=tokenizer, length=settings["length"])  # raises when it does not fit
    assert len(samples) == 2 and all(sample.answers for sample in samples)
