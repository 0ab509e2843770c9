"""OLMo 2, OLMo 3 and EXAONE 4 (spantrace/architectures/olmo.py): each special detail is needed, and checked.

Each test drops or changes one detail of ``PostNormAdapter`` and shows that the load-time self-check
refuses the model with the layer named; the tiny models come from ``tests/tiny_models.py`` (norms and
biases randomised, windows of 5 on a 16-token check, YaRN on OLMo 3's full layer only, EXAONE 4's
full layer without rotary).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator

import pytest
import torch
from tiny_models import make_tiny_model, random_ids

import spantrace
from spantrace.architectures.olmo import PostNormAdapter
from spantrace.architectures.registry import adapter_for, register_adapter
from spantrace.capture import capture_residuals
from spantrace.contract import AttentionRule, SandwichNorm
from spantrace.errors import UnsupportedArchitectureError
from spantrace.layers.softmax import layer_inputs

TYPES = ("olmo2", "olmo3", "exaone4")
N_TOKENS = 16


@functools.cache
def tiny(arch: str) -> torch.nn.Module:
    return make_tiny_model(arch)


@pytest.fixture
def swap_adapter() -> Iterator[Callable[[str, type], None]]:
    """Register a deliberately wrong adapter for a type; the real one is put back afterwards."""
    swapped: list[str] = []

    def swap(model_type: str, factory: type) -> None:
        swapped.append(model_type)
        register_adapter(model_type, factory, replace=True)

    yield swap
    for model_type in swapped:
        register_adapter(model_type, PostNormAdapter, replace=True)


def refused(arch: str, factory: type, swap: Callable[[str, type], None], layers: str = r"\d+") -> None:
    """Loading ``arch``'s tiny model with ``factory`` as its adapter is refused, naming one of ``layers``."""
    swap(arch, factory)
    with pytest.raises(UnsupportedArchitectureError, match=rf"reproduce layer {layers}'s attention output"):
        spantrace.load(tiny(arch))


# --- the real adapter ----------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", TYPES)
def test_loads_and_passes_the_self_check(arch: str) -> None:
    model = spantrace.load(tiny(arch))
    assert isinstance(model.adapter, PostNormAdapter)
    assert model.self_check.max_relative_error < 1e-5


@pytest.mark.parametrize("arch", TYPES)
def test_norms_are_randomised(arch: str) -> None:
    """make_tiny_model reaches every norm of these layers (weights at 1 would hide a missing gain)."""
    for layer in tiny(arch).model.layers:
        for norm in (layer.self_attn.q_norm, layer.self_attn.k_norm, layer.post_attention_layernorm,
                     layer.post_feedforward_layernorm):
            assert (norm.weight - 1).abs().max() > 0.1


@pytest.mark.parametrize("arch", TYPES)
def test_x_mid_is_the_residual_after_attention(arch: str) -> None:
    """The MLP's input is exactly x_mid: each layer's output is x_mid + post_feedforward_layernorm(mlp(x_mid))."""
    model = tiny(arch)
    adapter = adapter_for(model)
    ids = random_ids(N_TOKENS)
    outputs: list[torch.Tensor] = []  # L x [1, N, D]

    def keep(_module, _args, out) -> None:
        outputs.append(out[0] if isinstance(out, tuple) else out)

    handles = [layer.register_forward_hook(keep) for layer in model.model.layers]
    try:
        capture = capture_residuals(adapter, ids)
    finally:
        for handle in handles:
            handle.remove()
    with torch.no_grad():
        for index, layer in enumerate(model.model.layers):
            x_mid = capture.x_mid[index]  # [N, D]
            rebuilt = x_mid + layer.post_feedforward_layernorm(layer.mlp(x_mid))
            torch.testing.assert_close(rebuilt, outputs[index].reshape(rebuilt.shape), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["olmo3", "exaone4"])
def test_sliding_layers_hide_far_sources(arch: str) -> None:
    model = tiny(arch)
    adapter = adapter_for(model)
    capture = capture_residuals(adapter, random_ids(N_TOKENS))
    windows = [adapter.attention_rule(i).sliding_window for i in range(capture.num_layers)]
    assert windows == [5, None, 5]  # from layer_types, not from the attention module's own attribute
    for index, window in enumerate(windows):
        rows = layer_inputs(adapter, capture, index).rows(torch.tensor([N_TOKENS - 1]))  # [H, 1, N]
        visible = N_TOKENS - (window or N_TOKENS)
        assert torch.all(rows[:, 0, :visible] == 0)
        assert torch.all(rows[:, 0, visible:] > 0)


def test_exaone4_rotates_only_sliding_layers_when_hybrid() -> None:
    adapter = adapter_for(tiny("exaone4"))
    assert [adapter._uses_rotary(i) for i in range(3)] == [True, False, True]


def test_exaone4_without_window_rotates_every_layer() -> None:
    """EXAONE 4 with no sliding window (all layers full attention) keeps rotary everywhere."""
    model = make_tiny_model("exaone4", sliding_window=None, layer_types=["full_attention"] * 3)
    loaded = spantrace.load(model)
    adapter = loaded.adapter
    assert [adapter._uses_rotary(i) for i in range(3)] == [True, True, True]
    assert all(adapter.attention_rule(i).sliding_window is None for i in range(3))


def test_refuses_a_layer_with_a_pre_attention_norm() -> None:
    with pytest.raises(UnsupportedArchitectureError, match="input_layernorm"):
        PostNormAdapter(make_tiny_model("llama"))


def test_refuses_an_unknown_layer_type() -> None:
    model = make_tiny_model("olmo3")
    model.config.layer_types = ["sliding_attention", "chunked_attention", "sliding_attention"]
    with pytest.raises(UnsupportedArchitectureError, match="chunked_attention"):
        PostNormAdapter(model)


# --- each detail dropped is refused --------------------------------------------------------------------


class NoAttentionOutputNorm(PostNormAdapter):
    """Ignores post_attention_layernorm: x_mid − x_in taken as the raw attention output."""

    def _read_sandwich_norm(self, index: int) -> SandwichNorm | None:
        return None


class NoQKNorm(PostNormAdapter):
    """Skips the q/k norms."""

    def _norm_placement(self, index: int, part: str, heads: int, head_dim: int) -> str | None:
        return None


class PerHeadQKNorm(PostNormAdapter):
    """Normalises q/k per head with the same gains, instead of over the full H·d (G·d) width."""

    def _heads(self, index: int, part: str, hidden: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
        norm = getattr(self._attention(index), f"{part}_norm")
        projected = self._projection(index, part, hidden)  # [C, heads·d]
        split = projected.view(hidden.shape[0], heads, head_dim).transpose(0, 1)  # [heads, C, d]
        split = split * torch.rsqrt(split.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
        return split * norm.weight.view(heads, 1, head_dim)


class NoWindow(PostNormAdapter):
    """Treats every layer as full attention."""

    def attention_rule(self, index: int) -> AttentionRule:
        return dataclasses.replace(super().attention_rule(index), sliding_window=None)


class RotaryEverywhere(PostNormAdapter):
    """Applies rotary on EXAONE 4's full-attention layers too."""

    def _uses_rotary(self, index: int) -> bool:
        return True


class FullLayerRotaryTables(PostNormAdapter):
    """Uses the full-attention layer's rotary tables (OLMo 3: YaRN) on every layer."""

    def _rotary_tables(self, index: int, like: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        return super()._rotary_tables(self.config.layer_types.index("full_attention"), like, length)


class MidFromFeedforwardNorm(PostNormAdapter):
    """Reads x_mid at post_feedforward_layernorm (the MLP's output) instead of the MLP's input."""

    def mid_hook_module(self, index: int) -> torch.nn.Module:
        return self._layers[index].post_feedforward_layernorm


@pytest.mark.parametrize("arch", TYPES)
def test_attention_output_norm_is_needed(arch: str, swap_adapter) -> None:
    refused(arch, NoAttentionOutputNorm, swap_adapter)


@pytest.mark.parametrize("arch", TYPES)
def test_qk_norms_are_needed(arch: str, swap_adapter) -> None:
    refused(arch, NoQKNorm, swap_adapter)


@pytest.mark.parametrize("arch", ["olmo2", "olmo3"])
def test_olmo_qk_norm_spans_all_heads(arch: str, swap_adapter) -> None:
    refused(arch, PerHeadQKNorm, swap_adapter)


@pytest.mark.parametrize("arch", ["olmo3", "exaone4"])
def test_sliding_window_is_needed(arch: str, swap_adapter) -> None:
    refused(arch, NoWindow, swap_adapter, layers="[02]")


def test_exaone4_full_layers_skip_rotary(swap_adapter) -> None:
    refused("exaone4", RotaryEverywhere, swap_adapter, layers="1")


def test_olmo3_rotary_tables_are_per_layer_type(swap_adapter) -> None:
    refused("olmo3", FullLayerRotaryTables, swap_adapter, layers="[02]")


@pytest.mark.parametrize("arch", TYPES)
def test_x_mid_hook_point_is_the_mlp_input(arch: str, swap_adapter) -> None:
    refused(arch, MidFromFeedforwardNorm, swap_adapter)
