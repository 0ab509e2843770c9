"""The capture pass: residuals per layer, and the row log-sum-exp kept from the model's own sdpa calls."""

from __future__ import annotations

import contextlib

import pytest
import torch
from tiny_models import make_tiny_model, random_ids

import spantrace.capture as capture_module
from spantrace.architectures.registry import adapter_for
from spantrace.capture import capture_residuals
from spantrace.kernels.rows import visible_sources
from spantrace.layers.softmax import layer_inputs


def recomputed_logsumexp(adapter, capture, index: int) -> torch.Tensor:
    """[H, N] log-sum-exp of every row, in float64 from the recomputed queries and keys."""
    layer = layer_inputs(adapter, capture, index)
    count = capture.num_tokens
    queries = layer.queries.double()  # [H, N, d]
    keys = layer.keys.double().repeat_interleave(layer.rule.num_heads // layer.rule.num_kv_heads, dim=0)
    logits = layer.rule.scaling * queries @ keys.transpose(1, 2)
    visible = visible_sources(torch.arange(count), count, layer.rule)
    return torch.logsumexp(logits.masked_fill(~visible[None], float("-inf")), dim=-1)


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gpt2"])
def test_logsumexp_is_every_rows_normaliser(arch: str) -> None:
    model = make_tiny_model(arch)
    adapter = adapter_for(model)
    capture = capture_residuals(adapter, random_ids(20, seed=2))
    assert len(capture.logsumexp) == capture.num_layers
    for index, kept in enumerate(capture.logsumexp):
        assert kept is not None and kept.dtype == torch.float32
        torch.testing.assert_close(kept.double(), recomputed_logsumexp(adapter, capture, index), rtol=0, atol=1e-5)


def test_recording_leaves_the_forward_pass_bit_for_bit_unchanged(monkeypatch) -> None:
    model = make_tiny_model("llama")
    adapter = adapter_for(model)
    ids = random_ids(25, seed=6)
    recorded = capture_residuals(adapter, ids)
    monkeypatch.setattr(capture_module, "recording_logsumexp", lambda recorder: contextlib.nullcontext())
    plain = capture_residuals(adapter, ids)
    assert all(entry is None for entry in plain.logsumexp)
    for index in range(recorded.num_layers):
        assert torch.equal(recorded.x_mid[index], plain.x_mid[index])
        assert torch.equal(recorded.x_in[index], plain.x_in[index])


def test_sdpa_is_restored_even_when_the_forward_pass_fails(monkeypatch) -> None:
    model = make_tiny_model("llama")
    adapter = adapter_for(model)
    original = torch.nn.functional.scaled_dot_product_attention

    def broken(module, args, kwargs):
        assert torch.nn.functional.scaled_dot_product_attention is not original  # the recorder is in place
        raise RuntimeError("boom")

    handle = adapter.mid_hook_module(1).register_forward_pre_hook(broken, with_kwargs=True)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            capture_residuals(adapter, random_ids(10))
    finally:
        handle.remove()
    assert torch.nn.functional.scaled_dot_product_attention is original


def test_nothing_is_kept_where_the_forward_pass_is_not_float32_sdpa() -> None:
    eager = make_tiny_model("llama", attn_implementation="eager")
    capture = capture_residuals(adapter_for(eager), random_ids(12))
    assert capture.logsumexp == [None] * capture.num_layers
    double = make_tiny_model("llama").double()
    capture = capture_residuals(adapter_for(double), random_ids(12))
    assert capture.logsumexp == [None] * capture.num_layers
    # sliding-window layers call sdpa with a mask: only the full-attention layers keep theirs
    windowed = make_tiny_model("gemma3_text")
    adapter = adapter_for(windowed)
    capture = capture_residuals(adapter, random_ids(30))
    for index, kept in enumerate(capture.logsumexp):
        assert (kept is not None) == (adapter.attention_rule(index).sliding_window is None)
