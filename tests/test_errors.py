"""docs/errors.md is the error contract: every row's class exists, the command line and the viewer map it to the
exit code and HTTP status the row gives (one line, JSON), and every error class of spantrace.errors has a row."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from tiny_models import make_tiny_model
from typer.testing import CliRunner

import spantrace
import spantrace.cli.trace
from spantrace import errors
from spantrace.cli import app as cli_app
from spantrace.serve import create_app

TABLE_ROW = re.compile(r"^\| `(?P<name>\w+)` \| (?P<when>[^|]+) \| (?P<exit>\d+) \| (?P<status>\d+) \|$")
MESSAGE = "the thing is wrong; do this instead"


def contract() -> dict[str, tuple[int, int]]:
    text = (Path(__file__).parents[1] / "docs" / "errors.md").read_text(encoding="utf-8")
    rows = [TABLE_ROW.match(line) for line in text.splitlines()]
    return {row["name"]: (int(row["exit"]), int(row["status"])) for row in rows if row is not None}


def error_classes() -> set[str]:
    return {
        name for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, spantrace.SpanTraceError)
    }


def test_every_error_class_has_a_row_and_every_row_a_class() -> None:
    documented = set(contract())
    assert documented, "docs/errors.md has no table rows"
    assert documented == error_classes()
    for name in documented:  # the public API exports them all
        assert getattr(spantrace, name) is getattr(errors, name)


@pytest.mark.parametrize("name", sorted(contract()))
def test_the_command_line_prints_one_line_and_exits_as_documented(name: str, monkeypatch) -> None:
    error_class = getattr(errors, name)

    def failing_load(*args, **kwargs):
        raise error_class(MESSAGE)

    monkeypatch.setattr(spantrace.cli.trace, "load", failing_load)
    result = CliRunner().invoke(cli_app, ["trace", "--prompt", "Is 7 prime?"])
    exit_code, _ = contract()[name]
    assert result.exit_code == exit_code, result.output
    assert result.stderr.strip().splitlines() == [f"Error: {MESSAGE}"]
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def viewer(tokenizer):
    model = spantrace.Model(make_tiny_model("llama", vocab_size=len(tokenizer)), tokenizer, "tiny-llama")
    app = create_app(model)
    raised: dict[str, type[Exception]] = {}

    @app.get("/api/raise-for-test")
    def raise_for_test() -> None:  # a route whose work fails with the class under test
        raise raised["class"](MESSAGE)

    return TestClient(app), raised


@pytest.mark.parametrize("name", sorted(contract()))
def test_the_viewer_answers_json_with_the_documented_status(name: str, viewer) -> None:
    client, raised = viewer
    raised["class"] = getattr(errors, name)
    response = client.get("/api/raise-for-test")
    _, status = contract()[name]
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"detail": MESSAGE}


def test_a_real_mistake_raises_its_documented_class() -> None:
    """Not only the mapping: a span that reaches into the prompt is a SpanError, with its one line."""
    model = spantrace.Model(make_tiny_model("llama"), None, "tiny-llama")
    run = model.run(input_ids=list(range(3, 15)), prompt_length=8, progress=False)
    with pytest.raises(spantrace.SpanError, match="reaches into the prompt") as raised:
        run.trace((2, 10))
    assert "\n" not in str(raised.value)
