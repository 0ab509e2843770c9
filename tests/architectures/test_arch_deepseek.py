"""DeepSeek-V3 / R1 and Kimi K2 (Multi-head Latent Attention): every detail of the adapter matters, and what
it cannot reproduce is refused at load.

The library-vs-reference tests (tests/test_reference.py, tests/layers/test_softmax.py with ``-k deepseek_v3``)
check the full tiny config; here each detail is switched off in turn (the self-check must then refuse the
adapter, naming a layer) and the configurations the tiny model does not cover are loaded and checked.
"""

from __future__ import annotations

import functools
import math
import sys

import pytest
import torch
from tiny_models import make_tiny_model, random_ids

import spantrace
from spantrace import UnsupportedArchitectureError
from spantrace.architectures import registry
from spantrace.architectures.deepseek import DeepseekV3Adapter
from spantrace.architectures.registry import adapter_for
from spantrace.capture import capture_residuals
from spantrace.layers.softmax import layer_inputs

ARCH = "deepseek_v3"
HEADS, NOPE, ROPE, VALUE, WIDTH = 4, 10, 6, 8, 48  # the tiny config's sizes (tests/tiny_models.py)


@functools.cache
def tiny() -> torch.nn.Module:
    return make_tiny_model(ARCH)


# ----------------------------------------------------------------------------------------------------
# Configurations beyond the tiny default pass the self-check
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"q_lora_rank": None},  # plain q_proj instead of q_a_proj → q_a_layernorm → q_b_proj
        {"rope_interleave": False},  # rotate-half instead of interleaved pairs
        {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}},  # no YaRN: plain scale, plain tables
        {"attention_bias": False, "q_lora_rank": None, "rope_interleave": False},
    ],
    ids=["default", "no-q-lora", "rotate-half", "no-yarn", "plain"],
)
def test_variants_pass_the_self_check(overrides: dict) -> None:
    model = spantrace.load(make_tiny_model(ARCH, **overrides))
    assert model.self_check.max_relative_error < 1e-5


def test_float64_eager_model_passes_the_self_check() -> None:
    """Eager attention and eager experts in float64 (grouped matmuls have no float64 kernel)."""
    model = make_tiny_model(ARCH, dtype=torch.float64, attn_implementation="eager")
    model.set_experts_implementation("eager")
    loaded = spantrace.load(model)
    assert loaded.self_check.max_relative_error <= loaded.self_check.tolerance


# ----------------------------------------------------------------------------------------------------
# Shapes and rules
# ----------------------------------------------------------------------------------------------------


def test_keys_values_and_output_projection_shapes() -> None:
    """Keys are per head (G = H) and nope+rope wide, values v_head_dim wide; the rope slice is shared."""
    adapter = adapter_for(tiny())
    ids = random_ids(12, seed=4)
    capture = capture_residuals(adapter, ids)
    for index in range(capture.num_layers):
        layer = layer_inputs(adapter, capture, index)
        assert layer.rule.num_heads == layer.rule.num_kv_heads == HEADS
        assert layer.rule.head_dim == NOPE + ROPE
        assert layer.keys.shape == (HEADS, 12, NOPE + ROPE)
        assert layer.values.shape == (HEADS, 12, VALUE)
        assert layer.out_weight.shape == (HEADS, VALUE, WIDTH)
        assert layer.sink_queries(torch.tensor([3, 11])).shape == (HEADS, 2, NOPE + ROPE)
        rope_part = layer.keys[:, :, NOPE:]  # [H, N, rope]: one rotated slice shared by every head
        assert torch.equal(rope_part, rope_part[:1].expand_as(rope_part))
        assert not torch.equal(layer.keys[0, :, :NOPE], layer.keys[1, :, :NOPE])  # per-head k_nope


def test_scaling_carries_the_yarn_mscale() -> None:
    """``qk_head_dim^-0.5 · mscale(factor, mscale_all_dim)²`` (factor 4, mscale_all_dim 2 in the tiny config)."""
    adapter = adapter_for(tiny())
    expected = (NOPE + ROPE) ** -0.5 * (0.1 * 2.0 * math.log(4.0) + 1.0) ** 2
    for index in range(adapter.num_layers()):
        assert adapter.attention_rule(index).scaling == pytest.approx(expected, rel=1e-12)
    plain = adapter_for(make_tiny_model(ARCH, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}))
    assert plain.attention_rule(0).scaling == pytest.approx((NOPE + ROPE) ** -0.5, rel=1e-12)


# ----------------------------------------------------------------------------------------------------
# Each detail matters: an adapter that drops it is refused at load
# ----------------------------------------------------------------------------------------------------


class NoQueryNorm(DeepseekV3Adapter):
    """Skips q_a_layernorm between the two query projections."""

    def queries(self, index, x_rows, positions, length):
        attention = self._attention(index)
        original = attention.q_a_layernorm
        attention.q_a_layernorm = torch.nn.Identity()
        try:
            return super().queries(index, x_rows, positions, length)
        finally:
            attention.q_a_layernorm = original


class NoLatentNorm(DeepseekV3Adapter):
    """Skips kv_a_layernorm on the compressed KV latent."""

    def keys_values(self, index, x_in):
        attention = self._attention(index)
        original = attention.kv_a_layernorm
        attention.kv_a_layernorm = torch.nn.Identity()
        try:
            return super().keys_values(index, x_in)
        finally:
            attention.kv_a_layernorm = original


class RotateHalf(DeepseekV3Adapter):
    """Rotates with rotate-half although the model pairs interleaved dimensions."""

    def __init__(self, model):
        super().__init__(model)
        self._rotate = sys.modules[type(self._attention(0)).__module__].apply_rotary_pos_emb


class UnrotatedSharedKey(DeepseekV3Adapter):
    """Forgets to rotate the shared k_pe slice (queries still rotated)."""

    def keys_values(self, index, x_in):
        keys, values = super().keys_values(index, x_in)
        attention = self._attention(index)
        hidden = self._layers[index].input_layernorm(x_in)
        k_pe = attention.kv_a_proj_with_mqa(hidden)[:, attention.kv_lora_rank :]  # [N, rope], unrotated
        keys = keys.clone()
        keys[:, :, NOPE:] = k_pe[None]
        return keys, values


class NoYarnMscale(DeepseekV3Adapter):
    """Uses the plain ``qk_head_dim^-0.5`` softmax scale, without YaRN's mscale²."""

    def attention_rule(self, index):
        rule = super().attention_rule(index)
        return type(rule)(**{**rule.__dict__, "scaling": self._attention(index).qk_head_dim ** -0.5})


class NoRopeAttentionFactor(DeepseekV3Adapter):
    """Builds its cos/sin without YaRN's attention factor ``mscale(0.5) / mscale(2)`` (≈ 0.84 here)."""

    def _shared_rotary_tables(self, like, length):
        cos, sin = super()._shared_rotary_tables(like, length)
        factor = self._rotary.attention_scaling
        return cos / factor, sin / factor


@pytest.mark.parametrize(
    "broken", [NoQueryNorm, NoLatentNorm, RotateHalf, UnrotatedSharedKey, NoYarnMscale, NoRopeAttentionFactor]
)
def test_dropping_a_detail_is_refused(broken, monkeypatch) -> None:
    model = tiny()
    monkeypatch.setitem(registry._ADAPTERS, ARCH, broken)
    with pytest.raises(UnsupportedArchitectureError, match=r"does not reproduce layer \d"):
        spantrace.load(model)


# ----------------------------------------------------------------------------------------------------
# Refused with the reason
# ----------------------------------------------------------------------------------------------------


def test_repeated_latent_keys_are_refused() -> None:
    """num_key_value_heads < num_attention_heads would make the model repeat its per-head keys again."""
    model = make_tiny_model(ARCH, num_key_value_heads=2)
    with pytest.raises(UnsupportedArchitectureError, match="num_key_value_heads"):
        adapter_for(model)


def test_quantised_output_projection_is_refused() -> None:
    """FP8 block-scaled weights are not the matrix the model multiplies: ask for a dequantised load."""
    model = make_tiny_model(ARCH)
    model.model.layers[1].self_attn.o_proj.register_buffer("weight_scale_inv", torch.ones(1, 1))
    with pytest.raises(UnsupportedArchitectureError, match="layer 1.*dequantised"):
        adapter_for(model)
