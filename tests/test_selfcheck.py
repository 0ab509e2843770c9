"""The load-time self-check: exact adapters pass, a missed detail or a patched layer is refused by name."""

from __future__ import annotations

import types

import pytest
import torch
from tiny_models import make_tiny_model, random_ids

import spantrace
from spantrace.architectures import registry
from spantrace.architectures.llama import LlamaStyleAdapter
from spantrace.selfcheck import TOLERANCE_BY_DTYPE


@pytest.fixture
def restore_registry():
    """Put back every adapter a test replaced."""
    saved = dict(registry._ADAPTERS)
    yield
    registry._ADAPTERS.clear()
    registry._ADAPTERS.update(saved)


def test_an_exact_adapter_passes_and_the_result_says_so():
    model = spantrace.load(make_tiny_model("qwen3"))
    check = model.self_check
    assert check is not None and check.max_relative_error < 1e-5
    assert check.tolerance == TOLERANCE_BY_DTYPE[torch.float32] and check.tokens == 16
    result = model.run(input_ids=random_ids(12), prompt_length=6).trace((8, 10))
    assert result.info["self_check"]["max_relative_error"] == check.max_relative_error
    assert 0 <= result.info["self_check"]["worst_layer"] < 3


class NoSinkLogits(LlamaStyleAdapter):
    """gpt-oss as if it had no sink logits: rows renormalised to 1."""

    def attention_rule(self, index):
        rule = super().attention_rule(index)
        return type(rule)(**{**rule.__dict__, "sink_logits": None})


class RotaryEverywhere(LlamaStyleAdapter):
    """SmolLM3 as if every layer used rotary."""

    def _uses_rotary(self, index):
        return True


class NoPostNorm(LlamaStyleAdapter):
    """GLM-4 as if its attention output went to the residual unnormed."""

    def sandwich_norm(self, index):
        return None


class NoResidualMultiplier(LlamaStyleAdapter):
    """Granite as if the attention branch were not scaled."""

    def output_projection(self, index):
        weight, bias = super().output_projection(index)
        scale = self._layers[index].residual_multiplier
        return weight / scale, (bias / scale if bias is not None else None)


class NoQueryScale(LlamaStyleAdapter):
    """Ministral 3 without its position-dependent query scale."""

    def _query_scale(self, positions):
        return None


@pytest.mark.parametrize(
    "arch, broken",
    [
        ("gpt_oss", NoSinkLogits),
        ("smollm3", RotaryEverywhere),
        ("glm4", NoPostNorm),
        ("granite", NoResidualMultiplier),
        ("ministral3", NoQueryScale),
    ],
)
def test_an_adapter_that_misses_a_detail_is_refused_with_the_layer_named(restore_registry, arch, broken):
    model = make_tiny_model(arch)
    spantrace.load(model)  # the real adapter passes
    spantrace.register_adapter(arch, broken, replace=True)
    with pytest.raises(spantrace.UnsupportedArchitectureError, match=rf"{arch}: .* layer \d+'s attention output"):
        spantrace.load(model)


def test_a_patched_attention_module_is_refused(restore_registry):
    model = make_tiny_model("llama")
    attention = model.model.layers[1].self_attn
    original = attention.forward

    def louder(self, *args, **kwargs):
        output, weights = original(*args, **kwargs)
        return output * 1.05, weights

    attention.forward = types.MethodType(louder, attention)
    with pytest.raises(spantrace.UnsupportedArchitectureError, match="layer 1's attention output"):
        spantrace.load(model)
    unchecked = spantrace.load(model, check=False)  # the explicit opt-out loads it, and says so in results
    assert unchecked.self_check is None
    result = unchecked.run(input_ids=random_ids(10), prompt_length=5).trace((6, 8))
    assert result.info["self_check"] == "skipped"


def test_an_adapter_that_cannot_run_is_refused_not_a_torch_traceback(restore_registry):
    class Crashing(LlamaStyleAdapter):
        def queries(self, index, x_rows, positions, length):
            raise RuntimeError("shape mismatch deep inside")

    spantrace.register_adapter("llama", Crashing, replace=True)
    with pytest.raises(spantrace.UnsupportedArchitectureError, match="could not recompute .* check=False"):
        spantrace.load(make_tiny_model("llama"))


def test_register_adapter_refuses_a_silent_override_and_bad_arguments(restore_registry):
    with pytest.raises(spantrace.SpanTraceError, match="already registered .* replace=True"):
        spantrace.register_adapter("llama", NoPostNorm)
    with pytest.raises(spantrace.SpanTraceError, match="callable"):
        spantrace.register_adapter("my_model", "not a factory")
    with pytest.raises(spantrace.SpanTraceError, match="non-empty"):
        spantrace.register_adapter("", LlamaStyleAdapter)
