"""``spantrace trace --image`` and image parts in a ``--messages`` file (paths relative to the file): the images
reach the model's processor, and a model without one says so in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

import spantrace
from spantrace.cli import app


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    spantrace.load()  # the built-in model, loaded once: it is text-only, so it has no processor
    return CliRunner()


def one_line_error(result) -> str:  # noqa: ANN001
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_image_with_prompt_reaches_the_processor_check(runner: CliRunner, tmp_path: Path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "pic.png")
    result = runner.invoke(app, ["trace", "--image", str(tmp_path / "pic.png"), "--prompt", "What?", "-o", "Dark."])
    assert result.exit_code == 2
    assert "needs the model's processor" in one_line_error(result)


def test_image_paths_in_a_messages_file_are_relative_to_it(runner: CliRunner, tmp_path: Path) -> None:
    folder = tmp_path / "chat"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "pic.png")
    messages = [{"role": "user", "content": [{"type": "image", "image": "pic.png"}, {"type": "text", "text": "What?"}]},
                {"role": "assistant", "content": "Dark."}]
    (folder / "chat.json").write_text(json.dumps(messages))
    result = runner.invoke(app, ["trace", "--messages", str(folder / "chat.json")])  # run from another folder
    assert result.exit_code == 2
    assert "needs the model's processor" in one_line_error(result)  # found and opened: not "does not exist"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--image", "pyproject.toml", "--messages", "pyproject.toml"], "--image goes with --prompt"),
        (["--image", "no/such.png", "--prompt", "hi"], "does not exist"),
    ],
)
def test_bad_image_options(runner: CliRunner, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["trace", *args])
    assert result.exit_code == 2
    assert message in one_line_error(result)
