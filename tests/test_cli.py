"""The ``spantrace`` command line through Typer's runner, and once as the installed console script."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import spantrace
from spantrace.cli import app
from spantrace.methods.registry import describe_methods

PROMPT = "Tom has 3 apples and buys 4 more. How many apples does he have?"
OUTPUT = "Tom has 3 apples and 4 more apples, so he has 3 + 4 = 7 apples."


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    spantrace.load()  # loaded once per process: every command below reuses it
    return CliRunner()


def test_trace_writes_html_and_json(runner: CliRunner, tmp_path: Path) -> None:
    html, json = tmp_path / "out" / "trace.html", tmp_path / "trace.json"
    args = ["trace", "--prompt", PROMPT, "--output", OUTPUT, "--span", "regex:= (\\d+)", "--hops", "2"]
    result = runner.invoke(app, [*args, "--top-k", "5", "--html", str(html), "--json", str(json)])
    assert result.exit_code == 0, result.output
    assert html.is_file() and json.is_file()
    loaded = spantrace.TraceResult.load(json)
    assert loaded.method == "flashtrace" and loaded.hops == 2 and len(loaded.rho) == 3
    assert loaded.tokens[loaded.span[0] : loaded.span[1]] == ["7"]
    assert np.all(np.isfinite(loaded.scores)) and loaded.scores[: loaded.prompt_length].sum() > 0
    # the terminal view: top-k table, ρ of each hop, timings, the written files
    assert "top 5 prompt tokens" in result.stdout
    assert "ρ₀ =" in result.stdout and "ρ₂ =" in result.stdout
    assert "timings: load" in result.stdout and "trace" in result.stdout
    assert f"wrote {html}" in result.stdout and f"wrote {json}" in result.stdout
    assert "apples" in html.read_text(encoding="utf-8")


def test_trace_generates_when_no_output_is_given(runner: CliRunner, tmp_path: Path) -> None:
    json = tmp_path / "trace.json"
    args = ["trace", "-p", "What is 2 + 2?", "--max-new-tokens", "12", "--span", "output", "--hops", "0"]
    result = runner.invoke(app, [*args, "--json", str(json)])
    assert result.exit_code == 0, result.output
    loaded = spantrace.TraceResult.load(json)
    assert loaded.span == (loaded.prompt_length, loaded.num_tokens)
    assert 0 < loaded.num_tokens - loaded.prompt_length <= 12
    assert "generate" in result.stdout


def test_prompt_and_output_files(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "prompt.txt").write_text("Is 7 prime? 🙂", encoding="utf-8")
    (tmp_path / "output.txt").write_text(
        "<think>7 has no divisors.</think> Yes, \\boxed{7} is prime.", encoding="utf-8"
    )
    args = ["trace", "--prompt-file", str(tmp_path / "prompt.txt"), "--output-file", str(tmp_path / "output.txt")]
    args += ["--span", "boxed", "--method", "ifr", "--hops", "0"]
    result = runner.invoke(app, [*args, "--json", str(tmp_path / "t.json")])
    assert result.exit_code == 0, result.output
    loaded = spantrace.TraceResult.load(tmp_path / "t.json")
    assert loaded.method == "ifr" and "".join(loaded.tokens[loaded.span[0] : loaded.span[1]]) == "7"


def test_methods_lists_every_registered_method(runner: CliRunner) -> None:
    result = runner.invoke(app, ["methods"])
    assert result.exit_code == 0
    lines = result.stdout.strip().splitlines()
    assert len(lines) == len(spantrace.available_methods())
    for line, info in zip(lines, describe_methods(), strict=True):
        assert line.split()[0] == info.name and line.endswith(info.description)
        assert info.cost.startswith("O(") and info.cost in line


def test_models_lists_the_builtin_model_and_architectures(runner: CliRunner) -> None:
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    assert spantrace.DEFAULT_MODEL in result.stdout
    assert all(arch in result.stdout for arch in spantrace.supported_architectures())


@pytest.mark.parametrize("command", [[], ["trace"], ["methods"], ["models"]])
def test_help_has_an_example(runner: CliRunner, command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    assert "Example" in result.stdout and "spantrace " in result.stdout


def test_no_command_prints_help(runner: CliRunner) -> None:
    result = runner.invoke(app, [])
    assert result.exit_code == 0 and "Commands:" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["trace", "--prompt", "hi", "--nope"], "No such option: --nope"),
        (["trace"], "give --prompt TEXT or --prompt-file PATH"),
        (["trace", "--prompt", "hi", "--prompt-file", "pyproject.toml"], "not both"),
        (["trace", "--prompt", "hi", "--prompt-file", "no/such/file.txt"], "does not exist"),
        (["trace", "--prompt", "hi", "--hops", "-1"], "'--hops'"),
        (["trace", "--prompt", "hi", "--top-k", "0"], "'--top-k'"),
        (["trace", "--prompt", "hi", "--hops", "two"], "'--hops'"),
        (["trace", "--prompt", "hi", "--method", "magic"], "unknown method 'magic'"),
        (["trace", "--prompt", "hi", "--recursive", "sideways"], "'--recursive'"),
        (["trace", "--prompt", "hi", "--output", "Hello.", "--span", "boxed"], "the generated text is 'Hello.'"),
        (["trace", "--prompt", "hi", "--output", "Hello.", "--span", "sentence:4"], "out of range"),
        (["trace", "--prompt", "hi", "--output", "Hello.", "--span", "nonsense"], "unknown span 'nonsense'"),
        (["trace", "--prompt", "hi", "--output", "Hello.", "--model", "./no/such/model"], "No such file or folder"),
        (["trace", "--prompt", "hi", "--output", "Hello.", "--dtype", "int3"], "dtype"),
        (["frobnicate"], "No such command 'frobnicate'"),
    ],
)
def test_bad_options_give_one_line_and_exit_code_2(runner: CliRunner, args: list[str], message: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ") and message in lines[0]
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_console_script_from_outside(tmp_path: Path) -> None:
    """The installed ``spantrace`` script, as a person runs it: exit 0, both files, JSON reads back."""
    script = shutil.which("spantrace", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the spantrace console script is not installed (pip install -e .)")
    html, json = tmp_path / "trace.html", tmp_path / "trace.json"
    args = ["trace", "--prompt", PROMPT, "--output", OUTPUT, "--span", "answer", "--top-k", "3"]
    done = subprocess.run(
        [script, *args, "--html", str(html), "--json", str(json)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    loaded = spantrace.TraceResult.load(json)
    assert "".join(loaded.tokens[loaded.span[0] : loaded.span[1]]) == OUTPUT
    assert html.read_text(encoding="utf-8").startswith("<!doctype html>")


def test_a_conversation_object_may_hold_documents(runner: CliRunner, tmp_path: Path) -> None:
    """``--messages`` as ``{"messages", "documents"}``: the documents are placed; given twice, or no conversation at
    all, is one line and exit code 2."""
    messages = [{"role": "user", "content": "Where is the Eiffel tower?"}, {"role": "assistant", "content": "Paris."}]
    documents = [{"name": "eiffel", "text": "The Eiffel tower stands in Paris."}]
    conversation, only_documents = tmp_path / "chat.json", tmp_path / "documents.json"
    conversation.write_text(json_text({"messages": messages, "documents": documents}), encoding="utf-8")
    only_documents.write_text(json_text(documents), encoding="utf-8")
    saved = tmp_path / "trace.json"
    args = ["trace", "--messages", str(conversation), "--hops", "0", "-q"]
    result = runner.invoke(app, [*args, "--by", "document", "--json", str(saved)])
    assert result.exit_code == 0, result.output
    assert [row.name for row in spantrace.TraceResult.load(saved).by("document")] == ["eiffel"]
    twice = runner.invoke(app, [*args, "--documents", str(only_documents)])
    assert twice.exit_code == 2 and "documents are given twice" in twice.stderr
    conversation.write_text(json_text("just text"), encoding="utf-8")
    not_a_conversation = runner.invoke(app, args)
    assert not_a_conversation.exit_code == 2 and "messages must be a non-empty list" in not_a_conversation.stderr
    assert len(not_a_conversation.stderr.strip().splitlines()) == 1


def json_text(data: object) -> str:
    import json

    return json.dumps(data)


@pytest.mark.parametrize("content", ["[" * 100_000 + "]" * 100_000, "[" + "9" * 5000 + "]", "\udcff"])
def test_a_messages_file_that_json_cannot_read_is_one_line(tmp_path: Path, content: str) -> None:
    """Nested thousands deep, an integer past Python's digit limit, bytes that are not UTF-8: one line, exit 2."""
    path = tmp_path / "chat.json"
    path.write_bytes(content.encode("utf-8", "surrogateescape"))
    result = CliRunner().invoke(app, ["trace", "--messages", str(path)])
    assert result.exit_code == 2 and "could not read" in result.output and "Traceback" not in result.output
