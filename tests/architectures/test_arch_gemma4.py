"""Gemma 4 (spantrace/architectures/gemma4.py): every special detail is switched on in the tiny models, and each
is needed.

The tiny ``gemma4_text`` (and the same stack inside the ``gemma4`` wrapper) has full layers with another head
dim and kv-head count than the sliding ones, keys = values on the full layers, ``v_norm``, q/k/v/o biases,
windows of 5 on a 16-token check, partial ("proportional") rotary on the full layers, two KV-shared layers
(3 reads layer 2's keys and values, 4 reads layer 1's), per-layer input embeddings, a MoE block and a
random ``layer_scalar`` per layer. Each "wrong adapter" test drops or changes one detail and shows that the
load-time self-check refuses the model, naming a layer where the detail lives.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import pytest
import torch
from tiny_models import make_config, make_tiny_model, random_ids
from transformers import AutoModelForCausalLM

import spantrace
from spantrace.architectures.gemma4 import Gemma4Adapter
from spantrace.architectures.registry import adapter_for, register_adapter
from spantrace.capture import capture_residuals
from spantrace.contract import AttentionRule
from spantrace.errors import UnsupportedArchitectureError
from spantrace.layers.softmax import layer_inputs

TYPES = ("gemma4_text", "gemma4")
N_TOKENS = 16
SLIDING, FULL, SHARED = (0, 2, 3), (1, 4), (3, 4)


@functools.cache
def tiny(arch: str) -> torch.nn.Module:
    return make_tiny_model(arch)


def text_stack(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model.model, "language_model", model.model)


@pytest.fixture
def swap_adapter() -> Iterator[Callable[[str, type], None]]:
    """Register a deliberately wrong adapter for a type; the real one is put back afterwards."""
    swapped: list[str] = []

    def swap(model_type: str, factory: type) -> None:
        swapped.append(model_type)
        register_adapter(model_type, factory, replace=True)

    yield swap
    for model_type in swapped:
        register_adapter(model_type, Gemma4Adapter, replace=True)


def refused(arch: str, factory: type, swap: Callable[[str, type], None], layers: tuple[int, ...]) -> None:
    """Loading ``arch``'s tiny model with ``factory`` as its adapter is refused, naming one of ``layers``."""
    swap(arch, factory)
    names = "|".join(str(layer) for layer in layers)
    with pytest.raises(UnsupportedArchitectureError, match=rf"reproduce layer ({names})'s attention output"):
        spantrace.load(tiny(arch))


# --- the tiny models really have every detail ----------------------------------------------------------


@pytest.mark.parametrize("arch", TYPES)
def test_tiny_model_has_every_detail_on(arch: str) -> None:
    model = tiny(arch)
    stack = text_stack(model)
    config = model.config.get_text_config()
    attention = [layer.self_attn for layer in stack.layers]
    assert {attention[i].head_dim for i in SLIDING} != {attention[i].head_dim for i in FULL}
    assert {attention[i].num_key_value_groups for i in SLIDING} != {attention[i].num_key_value_groups for i in FULL}
    assert all(attention[i].sliding_window is not None and attention[i].sliding_window < N_TOKENS for i in SLIDING)
    assert all(attention[i].sliding_window is None for i in FULL)
    assert attention[1].v_proj is None and attention[0].v_proj is not None  # keys = values on full layers
    assert not hasattr(attention[0].v_norm, "weight")  # v_norm: scale-free
    assert [a.is_kv_shared_layer for a in attention] == [False, False, False, True, True]
    assert attention[0].q_proj.bias is not None and attention[0].o_proj.bias is not None
    full_freq = stack.rotary_emb.full_attention_inv_freq
    assert (full_freq == 0).any() and (full_freq != 0).any()  # partial rotary on full layers
    scalars = torch.stack([layer.layer_scalar for layer in stack.layers])
    assert (scalars - 1).abs().min() > 1e-3
    assert config.hidden_size_per_layer_input and config.enable_moe_block
    assert all((layer.post_attention_layernorm.weight - 1).abs().max() > 0.05 for layer in stack.layers)


# --- the real adapter -------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", TYPES)
def test_real_adapter_passes_the_self_check(arch: str) -> None:
    model = spantrace.load(tiny(arch))
    assert isinstance(model.adapter, Gemma4Adapter)
    assert model.adapter.base_model() is text_stack(tiny(arch))
    assert model.self_check is not None and model.self_check.max_relative_error < 1e-5


@pytest.mark.parametrize("arch", TYPES)
def test_shared_layers_attend_to_their_source_keys_and_values(arch: str) -> None:
    """Layers 3 and 4 read layers 2 and 1's K/V, recomputed once from those layers' x_in and cached once."""
    adapter = adapter_for(tiny(arch))
    assert [adapter.key_value_layer(i) for i in range(adapter.num_layers())] == [0, 1, 2, 2, 1]
    capture = capture_residuals(adapter, random_ids(N_TOKENS))
    cache: dict = {}
    layers = [layer_inputs(adapter, capture, i, cache) for i in range(adapter.num_layers())]
    assert sorted(cache) == [0, 1, 2]
    assert layers[3].keys is layers[2].keys and layers[3].values is layers[2].values
    assert layers[4].keys is layers[1].keys and layers[4].values is layers[1].values
    # A shared layer has no keys of its own: asking for them is an error, not a silent guess.
    with pytest.raises(UnsupportedArchitectureError, match="attends to layer 2"):
        adapter.keys_values(3, capture.x_in[3])


@pytest.mark.parametrize("arch", TYPES)
def test_per_layer_inputs_and_layer_scalar_leave_the_capture_intact(arch: str) -> None:
    """x_in of each layer is the model's own hidden state there (after the previous layer's per-layer input
    and its in-place layer_scalar), so those details stay outside every layer's attention identity."""
    model = tiny(arch)
    ids = random_ids(N_TOKENS)
    with torch.no_grad():
        hidden = text_stack(model)(input_ids=ids[None], output_hidden_states=True).hidden_states
    capture = capture_residuals(adapter_for(model), ids)
    for index, x_in in enumerate(capture.x_in):
        torch.testing.assert_close(x_in, hidden[index][0], rtol=0, atol=0)


# --- refused configurations --------------------------------------------------------------------------------


def test_bidirectional_attention_is_refused() -> None:
    model = AutoModelForCausalLM.from_config(make_config("gemma4_text", use_bidirectional_attention="all"))
    with pytest.raises(UnsupportedArchitectureError, match="bidirectional"):
        spantrace.load(model)


def test_every_layer_shared_is_refused() -> None:
    model = AutoModelForCausalLM.from_config(make_config("gemma4_text", num_kv_shared_layers=5))
    with pytest.raises(UnsupportedArchitectureError, match="every layer reuses"):
        spantrace.load(model)


# --- each detail is needed ---------------------------------------------------------------------------------


class NoValueNorm(Gemma4Adapter):
    """Forgets the scale-free RMSNorm on the values."""

    def keys_values(self, index, x_in):
        keys, values = super().keys_values(index, x_in)
        attention = self._attention(index)
        hidden = self._layers[index].input_layernorm(x_in)
        projection = attention.v_proj if attention.v_proj is not None else attention.k_proj
        raw = projection(hidden).view(hidden.shape[0], values.shape[0], -1).transpose(0, 1)  # [G, N, d]
        return keys, raw


class ValuesFromFinishedKeys(Gemma4Adapter):
    """With keys = values, takes the values after the k norm and rotary instead of the raw projection."""

    def keys_values(self, index, x_in):
        keys, values = super().keys_values(index, x_in)
        if self._attention(index).v_proj is None:
            values = self._attention(index).v_norm(keys)
        return keys, values


class OwnInputForSharedLayers(Gemma4Adapter):
    """Applies the source layer's projections to the shared layer's own x_in (the wrong residual)."""

    def key_value_layer(self, index):
        return index

    def keys_values(self, index, x_in):
        return super().keys_values(self._sources[index], x_in)


class NoWindow(Gemma4Adapter):
    def attention_rule(self, index):
        rule = super().attention_rule(index)
        return AttentionRule(rule.num_heads, rule.num_kv_heads, rule.head_dim, rule.scaling, None, None)


class InverseSqrtScaling(Gemma4Adapter):
    """Scales q·k by 1/sqrt(d) as most models do, though Gemma 4's q/k norms carry the scale."""

    def attention_rule(self, index):
        rule = super().attention_rule(index)
        return AttentionRule(rule.num_heads, rule.num_kv_heads, rule.head_dim, rule.head_dim**-0.5, None,
                             rule.sliding_window)


class FullRotary(Gemma4Adapter):
    """Rotates every frequency pair of the full layers (ignores the partial, proportional rotary)."""

    def _rotary_tables(self, index, like, length):
        cos, sin = super()._rotary_tables(index, like, length)
        if self._layer_type(index) != "full_attention":
            return cos, sin
        d = cos.shape[-1]
        theta = self.config.rope_parameters["full_attention"]["rope_theta"]
        inv_freq = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
        angles = torch.arange(length, dtype=torch.float32)[:, None] * inv_freq  # [N, d/2]
        angles = torch.cat((angles, angles), dim=-1)[None]  # [1, N, d]
        return angles.cos().to(cos.dtype), angles.sin().to(sin.dtype)


class NoSandwich(Gemma4Adapter):
    def sandwich_norm(self, index):
        return None


class LayerScalarFolded(Gemma4Adapter):
    """Folds layer_scalar into the attention branch, as if it scaled the attention output."""

    def output_projection(self, index):
        weight, bias = super().output_projection(index)
        scalar = float(self._layers[index].layer_scalar)
        return weight * scalar, bias * scalar if bias is not None else None


class OneShapeForAll(Gemma4Adapter):
    """Gives every layer the first (sliding) layer's head dim and kv-head count, as for Gemma 3."""

    def attention_rule(self, index):
        rule, first = super().attention_rule(index), super().attention_rule(0)
        return AttentionRule(rule.num_heads, first.num_kv_heads, first.head_dim, rule.scaling, None,
                             rule.sliding_window)


WRONG = [
    (NoValueNorm, SLIDING + FULL),
    (ValuesFromFinishedKeys, FULL),
    (OwnInputForSharedLayers, SHARED),
    (NoWindow, SLIDING),
    (InverseSqrtScaling, SLIDING + FULL),
    (FullRotary, FULL),
    (NoSandwich, SLIDING + FULL),
    (LayerScalarFolded, SLIDING + FULL),
]


@pytest.mark.parametrize("arch", TYPES)
@pytest.mark.parametrize(("factory", "layers"), WRONG, ids=[w[0].__name__ for w in WRONG])
def test_dropping_a_detail_is_refused(arch: str, factory: type, layers: tuple[int, ...], swap_adapter) -> None:
    refused(arch, factory, swap_adapter, layers)


@pytest.mark.parametrize("arch", TYPES)
def test_one_head_shape_for_all_layers_is_refused(arch: str, swap_adapter) -> None:
    """The full layers' own head dim and kv-head count are needed: the sliding layers' do not even fit."""
    swap_adapter(arch, OneShapeForAll)
    with pytest.raises(UnsupportedArchitectureError):
        spantrace.load(tiny(arch))


# --- the other methods -------------------------------------------------------------------------------------


def test_integrated_gradients_refuses_per_layer_embeddings_by_name() -> None:
    """IG's interpolated embeddings cannot carry the per-layer token embeddings: a named refusal, not a crash."""
    run = spantrace.load(tiny("gemma4_text")).run(input_ids=random_ids(N_TOKENS), prompt_length=8)
    with pytest.raises(UnsupportedArchitectureError, match="per-layer input embeddings"):
        run.trace((11, 14), method="integrated-gradients")
