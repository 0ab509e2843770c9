"""Hybrids through the front ends: the CLI from a saved folder (terminal, HTML, JSON), and the viewer's API.

One tiny hybrid of each kind of mixing (Qwen3.5: Gated DeltaNet + gated attention; Nemotron-H: Mamba-2 +
attention blocks; Falcon-H1: both in parallel), with the built-in model's tokenizer so prompts are real text.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from test_deltanet import randomise
from test_mamba2 import CONFIGS
from transformers import AutoConfig, AutoModelForCausalLM
from typer.testing import CliRunner

import spantrace
from spantrace.cli import app
from spantrace.serve import create_app

PROMPT = "Tom has 3 apples and buys 4 more. How many apples does he have?"
OUTPUT = "He has 3 + 4 = 7 apples."
QWEN = dict(hidden_size=48, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8,
            linear_value_head_dim=12, linear_conv_kernel_dim=4, attention_bias=True)
KINDS = {
    "qwen3_5_text": ("qwen3_5_text", QWEN),
    "nemotron_h": CONFIGS["nemotron_h"],
    "falcon_h1": CONFIGS["falcon_h1"],
}


@functools.cache
def hybrid(kind: str, vocab_size: int) -> AutoModelForCausalLM:
    model_type, specific = KINDS[kind]
    common = dict(hidden_size=32, pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    config = AutoConfig.for_model(model_type, **{**common, **specific, "vocab_size": vocab_size})
    return randomise(AutoModelForCausalLM.from_config(config)).eval()


@pytest.fixture(scope="module", params=sorted(KINDS))
def saved(request, tokenizer, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp(request.param)
    hybrid(request.param, len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_cli_traces_a_saved_hybrid(saved: Path, tmp_path: Path) -> None:
    html, json = tmp_path / "trace.html", tmp_path / "trace.json"
    args = ["trace", "--model", str(saved), "--prompt", PROMPT, "--output", OUTPUT, "--span", "regex:= (\\d+)"]
    result = CliRunner().invoke(app, [*args, "--hops", "1", "--html", str(html), "--json", str(json)])
    assert result.exit_code == 0, result.output
    loaded = spantrace.TraceResult.load(json)
    assert loaded.tokens[loaded.span[0] : loaded.span[1]] == ["7"]
    assert np.isfinite(loaded.scores).all() and loaded.scores[: loaded.prompt_length].sum() > 0
    assert loaded.info["self_check"]["max_relative_error"] <= 1e-5
    assert "top 5" in result.stdout or "prompt tokens" in result.stdout
    assert "apples" in html.read_text(encoding="utf-8")


def test_viewer_api_serves_a_hybrid(tokenizer) -> None:
    model = spantrace.Model(hybrid("qwen3_5_text", len(tokenizer)), tokenizer, "tiny-qwen3.5")
    client = TestClient(create_app(model))
    created = client.post("/api/runs", json={"prompt": PROMPT, "output": OUTPUT})
    assert created.status_code == 200, created.text
    run_id = created.json()["run_id"]
    for method in ("flashtrace", "ifr", "attention-mean"):
        response = client.post(f"/api/runs/{run_id}/trace", json={"span": "answer", "method": method, "hops": 1})
        assert response.status_code == 200, response.text
        payload = response.json()
        direct = model.run(PROMPT, output=OUTPUT, progress=False).trace("answer", method=method, hops=1)
        np.testing.assert_allclose(payload["scores"], direct.scores, rtol=1e-5, atol=1e-7)
