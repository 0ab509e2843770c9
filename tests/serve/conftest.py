"""Shared fixtures of the viewer tests: a tiny random llama with the built-in tokenizer (real text, no weights)."""

from __future__ import annotations

import pytest
from tiny_models import make_tiny_model

import spantrace


@pytest.fixture(scope="session")
def tiny_model(tokenizer) -> spantrace.Model:
    hf_model = make_tiny_model("llama", vocab_size=len(tokenizer), max_position_embeddings=512)
    return spantrace.Model(hf_model, tokenizer, "tiny-llama")
