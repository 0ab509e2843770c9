"""Shared fixtures of the viewer tests: a tiny random llama with the built-in tokenizer (real text, no weights), and
for the image tests a tiny random LLaVA with its processor built offline (``llava``: 56 × 56 pixels, 4 × 4 image
tokens) and a tiny Qwen2.5-VL (2 × 2 image tokens, M-RoPE), imported from tests/test_vision_end_to_end.py, not
copied, so both files test the same models."""

from __future__ import annotations

import pytest
from test_vision_end_to_end import llava, qwen2_5_vl  # noqa: F401  (fixtures: pytest finds them here)
from tiny_models import make_tiny_model

import spantrace


@pytest.fixture(scope="session")
def tiny_model(tokenizer) -> spantrace.Model:
    hf_model = make_tiny_model("llama", vocab_size=len(tokenizer), max_position_embeddings=512)
    return spantrace.Model(hf_model, tokenizer, "tiny-llama")
