"""``spantrace trace --span`` takes token positions in the documented forms, refuses a regex that never ends
and hops past the limit with one line, on the built-in model."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import spantrace
from spantrace.cli import app
from spantrace.cli.trace import span_argument
from spantrace.methods.hops import MAX_HOPS
from spantrace.spans import REGEX_TIMEOUT_S

PROMPT = "Tom has 3 apples and buys 4 more. How many apples does he have?"
OUTPUT = "He has 3 + 4 = 7 apples."
README = Path(__file__).parent.parent / "README.md"


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    spantrace.load()  # loaded once per process: every command below reuses it
    return CliRunner()


def traced(runner: CliRunner, span: str, path: Path) -> spantrace.TraceResult:
    args = ["trace", "-p", PROMPT, "-o", OUTPUT, "--method", "attention-last", "--hops", "0", "--span", span]
    result = runner.invoke(app, [*args, "--json", str(path)])
    assert result.exit_code == 0, result.output
    return spantrace.TraceResult.load(path)


def test_positions_in_every_documented_form(runner: CliRunner, tmp_path: Path) -> None:
    whole = traced(runner, "output", tmp_path / "output.json")
    start, end = whole.prompt_length + 1, whole.num_tokens - 1
    for form in (f"{start},{end}", f"({start}, {end})", f"[{start}, {end}]", f" {start} , {end} "):
        given = traced(runner, form, tmp_path / "given.json")
        assert given.span == (start, end), form
    expected = traced(runner, f"chars:0-{len(OUTPUT)}", tmp_path / "chars.json")  # a spec still works too
    assert expected.span[0] == whole.prompt_length


@pytest.mark.parametrize(
    ("span", "message"),
    [
        ("(1, 2, 3)", "two whole numbers START,END"),
        ("x,y", "two whole numbers START,END"),
        ("(4 5)", "two whole numbers START,END"),
        ("0,3", "reaches into the prompt"),
        ("9000,9001", "out of range"),
        ("regex:(a+)+$", "matches nothing"),  # on this short output the pattern simply fails
    ],
)
def test_bad_positions_give_one_line(runner: CliRunner, span: str, message: str) -> None:
    result = runner.invoke(app, ["trace", "-p", PROMPT, "-o", OUTPUT, "--span", span])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_hops_past_the_limit_are_refused(runner: CliRunner) -> None:
    result = runner.invoke(app, ["trace", "-p", PROMPT, "-o", OUTPUT, "--hops", str(MAX_HOPS + 1)])
    assert result.exit_code == 2 and "'--hops'" in result.stderr
    assert f"at most {MAX_HOPS}" in " ".join(runner.invoke(app, ["trace", "--help"]).stdout.split())


def test_a_catastrophic_regex_is_refused_on_the_command_line(runner: CliRunner) -> None:
    args = ["trace", "-p", "Say a lot of a.", "-o", "a" * 3000 + "!", "--span", "regex:(a+)+$"]
    started = time.monotonic()
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert time.monotonic() - started < 60  # load, one forward pass over ~800 tokens, and the 1 s search
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"did not finish within {REGEX_TIMEOUT_S:g} s" in lines[0], result.stderr


def test_help_and_readme_show_the_same_forms(runner: CliRunner) -> None:
    help_text = " ".join(runner.invoke(app, ["trace", "--help"]).stdout.split())
    assert "START,END" in help_text and "(START, END)" in help_text
    readme = README.read_text(encoding="utf-8")
    assert "`--span 40,52`" in readme and '`--span "(40, 52)"`' in readme
    assert span_argument("40,52") == span_argument('(40, 52)') == (40, 52)
    assert np.array_equal(span_argument("[40, 52]"), (40, 52))
