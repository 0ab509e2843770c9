"""The blocked weighted row sum (FlashTrace's ᾱ) against plain rows and a float64 loop, on random inputs."""

from __future__ import annotations

import pytest
import torch
from tiny_models import make_tiny_model, random_ids

from spantrace.attention import attention_rows, first_visible, layer_inputs, row_blocks, weighted_row_sum
from spantrace.capture import capture_residuals
from spantrace.kernels import Workspace
from spantrace.model.adapter import AttentionRule
from spantrace.model.registry import adapter_for


def slow_rows(queries: torch.Tensor, keys: torch.Tensor, sinks: torch.Tensor, rule: AttentionRule) -> torch.Tensor:
    """Attention rows [H, C, N] in float64, straight from the definition (queries [H, C, d], keys [G, N, d])."""
    heads, groups = rule.num_heads, rule.num_kv_heads
    expanded = keys.double().repeat_interleave(heads // groups, dim=0)  # [H, N, d]
    logits = rule.scaling * queries.double() @ expanded.transpose(1, 2)  # [H, C, N]
    if rule.softcap is not None:
        logits = rule.softcap * torch.tanh(logits / rule.softcap)
    sources = torch.arange(keys.shape[1])
    visible = sources[None, :] <= sinks[:, None]
    if rule.sliding_window is not None:
        visible &= sources[None, :] > sinks[:, None] - rule.sliding_window
    if rule.attention_chunk is not None:
        visible &= sources[None, :] // rule.attention_chunk == sinks[:, None] // rule.attention_chunk
    logits = logits.masked_fill(~visible[None], float("-inf"))
    row_max = logits.amax(-1, keepdim=True)  # [H, C, 1]
    if rule.sink_logits is not None:
        sink = rule.sink_logits.double()[:, None, None]
        row_max = torch.maximum(row_max, sink)
    exponentials = torch.exp(logits - row_max)
    denominator = exponentials.sum(-1, keepdim=True)
    if rule.sink_logits is not None:
        denominator = denominator + torch.exp(sink - row_max)
    return exponentials / denominator


def random_case(seed: int, rule: AttentionRule, length: int, count: int):
    generator = torch.Generator().manual_seed(seed)
    keys = 2 * torch.randn(rule.num_kv_heads, length, rule.head_dim, generator=generator)
    sinks = torch.randperm(length, generator=generator)[:count].sort().values
    queries = 2 * torch.randn(rule.num_heads, count, rule.head_dim, generator=generator)
    weights = torch.rand(count, generator=generator)
    weights[torch.rand(count, generator=generator) < 0.3] = 0.0  # weight-0 sinks
    return queries, keys, sinks, weights


RULES = {
    "causal, GQA": AttentionRule(6, 2, 8, 0.35, None, None),
    "window": AttentionRule(4, 4, 8, 0.35, None, 5),
    "softcap and window, GQA": AttentionRule(4, 1, 8, 0.35, 3.0, 9),
    "sink logits": AttentionRule(
        6, 3, 8, 0.35, None, None, sink_logits=torch.tensor([2.0, -1.0, 0.0, 9.0, -30.0, 0.5])
    ),
    "chunked, sinks, window": AttentionRule(
        6, 2, 8, 0.35, None, 11, sink_logits=torch.linspace(-2.0, 4.0, 6), attention_chunk=7
    ),
}


@pytest.mark.parametrize("name", sorted(RULES))
@pytest.mark.parametrize("block_elements", [1, 97, 1 << 20])
def test_weighted_row_sum_matches_float64_rows(name: str, block_elements: int) -> None:
    rule, length = RULES[name], 40
    for seed in range(3):
        queries, keys, sinks, weights = random_case(seed, rule, length, count=17)
        width = int(sinks.max()) + 1
        expected = torch.einsum("hcn,c->hn", slow_rows(queries, keys, sinks, rule), weights.double())[:, :width]
        got = weighted_row_sum(
            queries,
            keys,
            sinks,
            weights,
            rule,
            width,
            block_elements=block_elements,
            max_sinks=5,
            workspace=Workspace(),
        )
        torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["causal, GQA", "window", "softcap and window, GQA"])
def test_weighted_row_sum_matches_attention_rows(name: str) -> None:
    rule, length = RULES[name], 64
    queries, keys, sinks, weights = random_case(7, rule, length, count=30)
    width = int(sinks.max()) + 1
    rows = attention_rows(queries, keys, sinks, rule, width, queries_selected=True)  # [H, C, width]
    expected = torch.einsum("hcn,c->hn", rows, weights)
    got = weighted_row_sum(queries, keys, sinks, weights, rule, width, block_elements=300)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    # a sink of weight 0 contributes exactly nothing, wherever it is
    assert torch.all(got[:, int(sinks[weights > 0].max()) + 1 :] == 0)


def test_row_blocks_cover_every_sink_and_stay_small() -> None:
    rule = AttentionRule(3, 3, 4, 1.0, None, 6, attention_chunk=8)
    sinks = torch.tensor([0, 1, 2, 5, 9, 10, 11, 20, 21, 40, 41, 42, 43, 60])
    first = first_visible(sinks, rule)
    blocks = list(row_blocks(sinks.tolist(), first.tolist(), heads=3, block_elements=60, max_sinks=4))
    assert [block[0] for block in blocks] == [0, *[block[1] for block in blocks[:-1]]]
    assert blocks[-1][1] == len(sinks)
    for a, b, lo, hi in blocks:
        assert b - a <= 4 and (3 * (b - a) * (hi - lo) <= 60 or b - a == 1)
        assert lo == int(first[a:b].min()) and hi == int(sinks[a:b].max()) + 1


def test_summed_rows_skip_zero_weights_and_ignore_order() -> None:
    model = make_tiny_model("gemma2")  # GQA, soft-capping, sliding windows
    adapter = adapter_for(model)
    capture = capture_residuals(adapter, random_ids(23, seed=5))
    sinks = torch.tensor([21, 4, 17, 9, 12, 22, 3])
    weights = torch.tensor([0.5, 0.0, 2.0, 1.0, 0.0, 0.25, 3.0])
    for index in range(capture.num_layers):
        layer = layer_inputs(adapter, capture, index)
        expected = torch.einsum("hcn,c->hn", layer.rows(sinks, 23), weights)
        for chunk_size in (1, 3, 128):
            torch.testing.assert_close(
                layer.summed_rows(sinks, weights, 23, chunk_size), expected, rtol=1e-5, atol=1e-7
            )


@pytest.mark.parametrize("name", sorted(RULES))
def test_channel_weights_keep_the_channels(name: str) -> None:
    """A per-sink, per-channel factor (a hybrid's output gate): Σ_i w_i α[h, i, j] g[h, i, :] in small blocks."""
    rule = RULES[name]
    queries, keys, sinks, weights = random_case(11, rule, length=40, count=17)
    gates = torch.rand(rule.num_heads, sinks.shape[0], 5, generator=torch.Generator().manual_seed(2))
    want = torch.einsum("hij,i,hic->hjc", slow_rows(queries, keys, sinks, rule), weights.double(), gates.double())
    got = weighted_row_sum(queries, keys, sinks, weights, rule, 40, block_elements=64, channel_weights=gates)
    assert got.shape == (rule.num_heads, 40, 5)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
