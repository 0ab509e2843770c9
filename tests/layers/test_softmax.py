"""Recomputed attention rows against the model's own eager attention, on every architecture."""

from __future__ import annotations

import pytest
import torch
from tiny_models import ARCHITECTURES, make_tiny_model, random_ids

from spantrace.architectures.registry import adapter_for
from spantrace.capture import capture_residuals
from spantrace.kernels.rows import attention_rows
from spantrace.layers.softmax import layer_inputs

N_TOKENS = 17


def eager_probabilities(model, ids: torch.Tensor) -> list[torch.Tensor]:
    """Attention probabilities [H, N, N] per layer, read from the eager attention modules."""
    model.config._attn_implementation = "eager"
    found: list[torch.Tensor] = []
    attention_modules = [m for name, m in model.named_modules() if name.endswith(("self_attn", ".attn"))]

    def keep(module, args, output):
        found.append(output[1][0].detach())

    handles = [m.register_forward_hook(keep) for m in attention_modules]
    try:
        with torch.no_grad():
            model(ids[None])
    finally:
        for handle in handles:
            handle.remove()
    return found


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_recomputed_rows_match_eager(arch: str) -> None:
    model = make_tiny_model(arch, attn_implementation="eager")
    ids = random_ids(N_TOKENS, seed=3)
    expected = eager_probabilities(model, ids)
    adapter = adapter_for(model)
    capture = capture_residuals(adapter, ids)
    assert len(expected) == capture.num_layers
    all_sinks = torch.arange(N_TOKENS)
    for index in range(capture.num_layers):
        layer = layer_inputs(adapter, capture, index)
        rows = attention_rows(layer.queries, layer.keys, all_sinks, layer.rule, N_TOKENS)
        torch.testing.assert_close(rows, expected[index].float(), atol=1e-5, rtol=0)
        # Queries recomputed for a chunk of sinks only, in any order, give the same rows.
        some = torch.tensor([16, 4, 9])
        torch.testing.assert_close(layer.rows(some, N_TOKENS), rows[:, some], atol=1e-6, rtol=0)


@pytest.mark.parametrize("arch", ["mistral", "gemma2", "qwen2"])
def test_sliding_window_hides_far_sources(arch: str) -> None:
    model = make_tiny_model(arch)
    adapter = adapter_for(model)
    capture = capture_residuals(adapter, random_ids(N_TOKENS))
    windows = [adapter.attention_rule(i).sliding_window for i in range(capture.num_layers)]
    assert any(w is not None and w < N_TOKENS for w in windows)
    for index, window in enumerate(windows):
        if window is None:
            continue
        layer = layer_inputs(adapter, capture, index)
        rows = layer.rows(torch.tensor([N_TOKENS - 1]))
        assert torch.all(rows[:, 0, : N_TOKENS - window] == 0)
        assert torch.all(rows[:, 0, N_TOKENS - window :] > 0)
