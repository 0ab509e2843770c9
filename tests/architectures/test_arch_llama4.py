"""Llama 4 (spantrace/architectures/llama4.py): each special detail is needed, and checked.

The tiny ``llama4_text`` model (tests/tiny_models.py) has layers 1 and 3 without rotary and with the
query temperature (floor_scale 3, so positions 2, 5, 8, … step it up), layers 0 and 2 with interleaved
complex rotary, L2 q/k norm and chunks of 5 tokens, randomised norms and q/k/v/o biases. Each
``refused`` test drops or changes one detail of ``Llama4Adapter`` and shows that the load-time
self-check refuses the model with a layer named. The image-text wrapper (``llama4``) is checked against
its own language model, which the float64 reference checks.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
from reference import reference_terms, trace
from tiny_models import make_tiny_model, random_ids

import spantrace
from spantrace.architectures.llama4 import Llama4Adapter
from spantrace.architectures.registry import adapter_for, register_adapter
from spantrace.capture import capture_residuals
from spantrace.contract import AttentionRule
from spantrace.errors import UnsupportedArchitectureError
from spantrace.layers.softmax import layer_inputs

N_TOKENS = 16
CHUNK = 5
ROTARY_LAYERS, NOPE_LAYERS = (0, 2), (1, 3)


@functools.cache
def tiny(arch: str = "llama4_text", **overrides) -> torch.nn.Module:
    return make_tiny_model(arch, **overrides)


@pytest.fixture
def swap_adapter() -> Iterator[Callable[[type], None]]:
    """Register a deliberately wrong adapter for llama4_text; the real one is put back afterwards."""
    yield lambda factory: register_adapter("llama4_text", factory, replace=True)
    register_adapter("llama4_text", Llama4Adapter, replace=True)


def refused(model: torch.nn.Module, layers: tuple[int, ...]) -> None:
    """Loading ``model`` (with whatever adapter is registered) is refused, naming one of ``layers``."""
    names = "|".join(str(i) for i in layers)
    with pytest.raises(UnsupportedArchitectureError, match=rf"reproduce layer ({names})'s attention output"):
        spantrace.load(model)


# --- the real adapter ----------------------------------------------------------------------------------


def test_tiny_model_switches_every_detail_on() -> None:
    model = tiny()
    config = model.config
    assert config.layer_types == ["chunked_attention", "full_attention"] * 2
    assert config.attention_chunk_size == CHUNK < N_TOKENS
    adapter = adapter_for(model)
    assert isinstance(adapter, Llama4Adapter)
    for index, layer in enumerate(model.model.layers):
        attention = layer.self_attn
        rotary = index in ROTARY_LAYERS
        assert bool(attention.use_rope) == rotary
        assert hasattr(attention, "qk_norm") == rotary  # L2 norm on rotary layers only
        assert adapter.attention_rule(index).attention_chunk == (CHUNK if rotary else None)
        for norm in (layer.input_layernorm, layer.post_attention_layernorm):
            assert (norm.weight - 1).abs().max() > 0.1
        for projection in (attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj):
            assert projection.bias is not None and projection.bias.abs().max() > 0.1
    # the temperature moves within the test sequence: 1 at positions 0–1, 1 + 2·log 6 at position 15
    scales = adapter._temperature(NOPE_LAYERS[0], torch.arange(N_TOKENS))
    assert scales[0] == 1 and scales[1] == 1 and scales[2] > 1
    assert math.isclose(float(scales[15]), 1 + 2 * math.log(6), rel_tol=1e-6)


def test_loads_and_passes_the_self_check() -> None:
    model = spantrace.load(tiny())
    assert isinstance(model.adapter, Llama4Adapter)
    assert model.self_check.max_relative_error < 1e-5


def test_bfloat16_passes_the_self_check() -> None:
    """Rotary and temperature in float32, cast back to bf16 like the model: within the bf16 tolerance."""
    check = spantrace.load(make_tiny_model("llama4_text", dtype=torch.bfloat16)).self_check
    assert check.max_relative_error < check.tolerance


@pytest.mark.parametrize(
    "overrides",
    [
        dict(use_qk_norm=False, interleave_moe_layer_step=1),  # Maverick-like: no q/k norm
        dict(attn_temperature_tuning=False),
        # chunking follows layer_types, not rotary: a rotary layer at full range, a NoPE layer chunked
        dict(layer_types=["full_attention", "chunked_attention", "chunked_attention", "full_attention"]),
        dict(attention_chunk_size=None),  # no chunked layers at all
    ],
    ids=["no-qk-norm", "no-temperature", "chunks-by-layer-type", "no-chunks"],
)
def test_config_variants_pass_the_self_check(overrides: dict) -> None:
    model = make_tiny_model("llama4_text", **overrides)
    adapter = adapter_for(model)
    for index, layer_type in enumerate(model.config.layer_types):
        assert (adapter.attention_rule(index).attention_chunk is not None) == (layer_type == "chunked_attention")
    assert spantrace.load(model).self_check.max_relative_error < 1e-5


def test_chunk_mask_is_transformers_mask() -> None:
    """The eager probabilities the model applies are zero exactly outside causal ∧ same chunk (chunked
    layers) or outside causal (full layers); the library's rows have the same support."""
    model = make_tiny_model("llama4_text", attn_implementation="eager")
    ids = random_ids(N_TOKENS, seed=5)
    found: list[torch.Tensor] = []
    handles = [layer.self_attn.register_forward_hook(lambda m, a, out: found.append(out[1][0]))
               for layer in model.model.layers]
    try:
        with torch.no_grad():
            model(ids[None])
    finally:
        for handle in handles:
            handle.remove()
    i, j = torch.meshgrid(torch.arange(N_TOKENS), torch.arange(N_TOKENS), indexing="ij")
    causal = j <= i
    adapter = adapter_for(model)
    capture = capture_residuals(adapter, ids)
    for index, probabilities in enumerate(found):  # [H, N, N]
        visible = causal & (i // CHUNK == j // CHUNK) if index in ROTARY_LAYERS else causal
        assert torch.equal(probabilities > 0, visible[None].expand_as(probabilities)), f"layer {index}"
        rows = layer_inputs(adapter, capture, index).rows(torch.arange(N_TOKENS), N_TOKENS)
        assert torch.equal(rows > 0, visible[None].expand_as(rows)), f"layer {index}"


def test_temperature_scales_nope_queries_by_position() -> None:
    """The same residual row queried at two positions differs exactly by the ratio of the temperatures."""
    model = tiny()
    adapter = adapter_for(model)
    row = torch.randn(1, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for index in NOPE_LAYERS:
            early = adapter.queries(index, row, torch.tensor([0]), N_TOKENS)  # [H, 1, d], scale 1
            late = adapter.queries(index, row, torch.tensor([14]), N_TOKENS)  # scale 1 + 2·log 6
            torch.testing.assert_close(late, early * (1 + 2 * math.log(6)), rtol=1e-6, atol=1e-6)


# --- each detail dropped is refused --------------------------------------------------------------------


class NoChunks(Llama4Adapter):
    def attention_rule(self, index: int) -> AttentionRule:
        return dataclasses.replace(super().attention_rule(index), attention_chunk=None)


class ChunkAsSlidingWindow(Llama4Adapter):
    """The right width, the wrong shape: a window of the last 5 tokens instead of a fixed block."""

    def attention_rule(self, index: int) -> AttentionRule:
        rule = super().attention_rule(index)
        return dataclasses.replace(rule, attention_chunk=None, sliding_window=rule.attention_chunk)


class NoTemperature(Llama4Adapter):
    def _temperature(self, index: int, positions: torch.Tensor) -> torch.Tensor | None:
        return None


class TemperatureOffByOne(Llama4Adapter):
    """⌊pos / floor_scale⌋ instead of the model's ⌊(pos + 1) / floor_scale⌋."""

    def _temperature(self, index: int, positions: torch.Tensor) -> torch.Tensor | None:
        scales = super()._temperature(index, positions)
        return None if scales is None else super()._temperature(index, positions - 1)


class NoQkNorm(Llama4Adapter):
    def _qk_norm(self, index: int) -> torch.nn.Module | None:
        return None


class RotaryEverywhere(Llama4Adapter):
    def _uses_rotary(self, index: int) -> bool:
        return True


def rotate_halves(xq: torch.Tensor, xk: torch.Tensor, freqs_cis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Llama 2/3's convention (pairs i and i + d/2) instead of Llama 4's interleaved pairs (2i, 2i + 1)."""

    def rotate(x: torch.Tensor) -> torch.Tensor:  # [B, N, heads, d]
        half = x.shape[-1] // 2
        z = torch.complex(x[..., :half].float(), x[..., half:].float()) * freqs_cis[:, :, None, :]
        return torch.cat([z.real, z.imag], dim=-1).type_as(x)

    return rotate(xq), rotate(xk)


class HalfSplitRotary(Llama4Adapter):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__(model)
        self._rotate = rotate_halves


@pytest.mark.parametrize(
    ("factory", "layers"),
    [
        (NoChunks, ROTARY_LAYERS),
        (ChunkAsSlidingWindow, ROTARY_LAYERS),
        (NoTemperature, NOPE_LAYERS),
        (TemperatureOffByOne, NOPE_LAYERS),
        (NoQkNorm, ROTARY_LAYERS),
        (HalfSplitRotary, ROTARY_LAYERS),
    ],
    ids=lambda value: value.__name__ if isinstance(value, type) else None,
)
def test_dropping_a_detail_is_refused(swap_adapter, factory: type, layers: tuple[int, ...]) -> None:
    swap_adapter(factory)
    refused(tiny(), layers)


def test_rotary_on_nope_layers_is_refused(swap_adapter) -> None:
    """Temperature off, so the only thing wrong is rotating the layers that skip rotary."""
    swap_adapter(RotaryEverywhere)
    refused(tiny(attn_temperature_tuning=False), NOPE_LAYERS)


def test_unknown_layer_types_and_missing_chunk_size_are_refused() -> None:
    model = make_tiny_model("llama4_text")
    model.config.layer_types = ["chunked_attention", "sliding_attention", "chunked_attention", "full_attention"]
    with pytest.raises(UnsupportedArchitectureError, match="sliding_attention"):
        adapter_for(model)
    model.config.layer_types = ["chunked_attention", "full_attention"] * 2
    model.config.attention_chunk_size = None
    with pytest.raises(UnsupportedArchitectureError, match="attention_chunk_size"):
        adapter_for(model)


# --- the image-text wrapper ----------------------------------------------------------------------------


# make_tiny_model's .to(dtype) casts the vision tower's complex rotary buffer to real; text never uses it
@pytest.mark.filterwarnings("ignore:Casting complex values to real")
def test_wrapper_traces_its_language_model() -> None:
    """``Llama4ForConditionalGeneration`` holds a complete ``Llama4ForCausalLM`` at ``language_model``, and
    spantrace traces that model (transformers 5.24's wrapper forward fails on every input, reading an
    ``image_outputs`` its language model does not return): it passes the self-check, and its traces match
    the float64 reference."""
    wrapper = tiny("llama4")
    assert wrapper.config.model_type == "llama4"
    inner = wrapper.language_model
    assert inner.config.model_type == "llama4_text"
    loaded = spantrace.load(wrapper)
    assert loaded.hf_model is inner and isinstance(loaded.adapter, Llama4Adapter)
    assert loaded.adapter.base_model() is inner.model
    assert loaded.self_check.max_relative_error < 1e-5

    ids, prompt_length, span = random_ids(N_TOKENS, seed=3), 8, (11, 14)
    run = loaded.run(input_ids=ids, prompt_length=prompt_length)
    inner_run = spantrace.load(inner).run(input_ids=ids, prompt_length=prompt_length)
    terms = reference_terms(inner, ids)
    for method in ("flashtrace", "ifr"):
        got = run.trace(span, method=method, hops=2)
        same = inner_run.trace(span, method=method, hops=2)
        want = trace(terms, span, prompt_length, method=method, hops=2)
        for k in range(3):
            np.testing.assert_array_equal(np.asarray(got.hop_scores[k]), np.asarray(same.hop_scores[k]))
            np.testing.assert_allclose(np.asarray(got.hop_scores[k], dtype=np.float64), want.hop_scores[k],
                                       rtol=1e-4, atol=1e-6, err_msg=f"{method} hop {k}")
