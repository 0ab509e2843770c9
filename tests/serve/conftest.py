"""Shared fixtures of the viewer tests: a tiny random llama with the built-in tokenizer (real text, no weights), and
for the image tests a tiny random LLaVA with its processor built offline (``llava``: 56 × 56 pixels, 4 × 4 image
tokens), imported from tests/test_vision_end_to_end.py, not copied, so both files test the same model."""

from __future__ import annotations

import pytest
from test_vision_end_to_end import llava  # noqa: F401  (a fixture: pytest finds it here)
from tiny_models import make_tiny_model

import spantrace


@pytest.fixture(scope="session")
def tiny_model(tokenizer) -> spantrace.Model:
    hf_model = make_tiny_model("llama", vocab_size=len(tokenizer), max_position_embeddings=512)
    return spantrace.Model(hf_model, tokenizer, "tiny-llama")
