"""Issue 27's smaller items: the tool_call:N error for a conversation without tool calls, an empty evaluation data
file (one line, no "wrote" of a file that is not there), and an unknown model name offline failing at once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from tiny_models import make_tiny_model
from typer.testing import CliRunner

import spantrace
import spantrace.cli.evaluate
from spantrace.cli import app as cli_app
from spantrace.eval.tasks import make_samples
from spantrace.loading import hub


@pytest.fixture(scope="module")
def model(tokenizer) -> spantrace.Model:
    return spantrace.Model(make_tiny_model("llama", vocab_size=len(tokenizer)), tokenizer, "tiny-llama", check=False)


def test_tool_call_on_a_conversation_without_tool_calls_does_not_ask_for_messages(model) -> None:
    messages = [{"role": "user", "content": "Is 7 prime?"}, {"role": "assistant", "content": "Yes."}]
    run = model.run(messages=messages, progress=False)
    with pytest.raises(spantrace.SpanError) as raised:
        run.trace("tool_call:0")
    assert "this run has no tool calls; trace a message (message:N) instead" in str(raised.value)
    assert "messages=" not in str(raised.value)


def test_an_empty_data_file_is_one_line_and_no_file_is_claimed(model, tmp_path: Path, monkeypatch) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(spantrace.InputError, match="holds no samples"):
        make_samples("gsm8k", 3, path=empty)
    monkeypatch.setattr(spantrace.cli.evaluate, "load", lambda *args, **kwargs: model)
    out = tmp_path / "rows.jsonl"
    result = CliRunner().invoke(
        cli_app, ["eval", "--task", "gsm8k", "--data-path", str(empty), "--out", str(out), "--methods", "ifr", "-q"]
    )
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"Error: the gsm8k data file {empty} holds no samples; give one "
                                                  "with at least one"]
    assert "wrote" not in result.output and not out.exists()


def test_an_unknown_model_name_offline_fails_at_once(monkeypatch) -> None:
    """No network here either way: the probe is made to fail, and the hub client must then not be asked at all
    (its retries took ~27 s)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    for name in hub.PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    probed = []

    def unreachable(address, timeout):
        probed.append((address, timeout))
        raise OSError("no route to host")

    monkeypatch.setattr(hub.socket, "create_connection", unreachable)
    started = time.perf_counter()
    with pytest.raises(spantrace.ModelLoadError, match="not in the Hugging Face cache and the hub cannot be reached"):
        hub.load_hf("someone/no-such-model-offline")
    assert time.perf_counter() - started < 5
    assert probed == [(("huggingface.co", 443), hub.HUB_PROBE_SECONDS)]


def test_the_probe_trusts_a_proxy_and_honours_hf_hub_offline(monkeypatch) -> None:
    import huggingface_hub.constants

    def refuse(*args, **kwargs):
        raise OSError("refused")

    monkeypatch.setattr(hub.socket, "create_connection", refuse)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert not hub.hub_reachable()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    assert hub.hub_reachable()  # the proxy may reach it; the client will say
    for name in hub.PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert not hub.hub_reachable()
