"""Every supported type is described (CLI and docs), every refused type says why, and a refused load says it."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_models import ARCHITECTURES, HYBRID_ARCHITECTURES, VISION_ARCHITECTURES
from transformers import AutoConfig, AutoModelForCausalLM

import spantrace
from spantrace.architectures.catalog import NOTES, REFUSED
from spantrace.architectures.registry import supported_architectures

DOCS = (Path(__file__).resolve().parents[2] / "docs" / "architectures.md").read_text()


def test_every_supported_type_has_a_note_a_docs_row_and_a_tiny_test_model():
    for model_type in supported_architectures():
        assert model_type in NOTES, f"{model_type}: no entry in spantrace/architectures/catalog.py"
        assert f"`{model_type}`" in DOCS, f"{model_type}: not in docs/architectures.md"
        tested = ARCHITECTURES + HYBRID_ARCHITECTURES + VISION_ARCHITECTURES
        assert model_type in tested, f"{model_type}: no tiny model in the tests"


def test_refused_types_are_documented_and_not_supported():
    assert not set(REFUSED) & set(supported_architectures())
    for model_type in REFUSED:
        assert f"`{model_type}`" in DOCS, f"{model_type}: refused but not in docs/architectures.md"


def test_loading_a_refused_type_says_why():
    config = AutoConfig.for_model(
        "cohere", vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
    )
    with pytest.raises(spantrace.UnsupportedArchitectureError, match="'cohere' is not supported: .*in parallel"):
        spantrace.load(AutoModelForCausalLM.from_config(config))
