"""The blocked weighted row sum (FlashTrace's ᾱ) against plain rows and a float64 loop, on random inputs."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tiny_models import make_tiny_model, random_ids

import spantrace.layers.softmax as softmax_module
from spantrace.architectures.registry import adapter_for
from spantrace.capture import capture_residuals
from spantrace.contract import AttentionRule
from spantrace.kernels.proximity import Workspace
from spantrace.kernels.rows import (
    attention_rows,
    first_visible,
    fused_row_sum,
    fused_row_sum_applies,
    row_blocks,
    weighted_row_sum,
)
from spantrace.layers.softmax import layer_inputs


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


def slow_logsumexp(queries: torch.Tensor, keys: torch.Tensor, rule: AttentionRule) -> torch.Tensor:
    """Every position's row log-sum-exp [H, N] in float64 (queries [H, N, d] of every position)."""
    heads, groups = rule.num_heads, rule.num_kv_heads
    expanded = keys.double().repeat_interleave(heads // groups, dim=0)
    logits = rule.scaling * queries.double() @ expanded.transpose(1, 2)
    causal = torch.ones(keys.shape[1], keys.shape[1], dtype=torch.bool).tril()
    return torch.logsumexp(logits.masked_fill(~causal[None], float("-inf")), dim=-1)


FUSED_SINKS = {
    "a whole generation": lambda n: torch.arange(n // 4, n),
    "every position": lambda n: torch.arange(n),
    "one sink": lambda n: torch.tensor([n // 2]),
    "with gaps": lambda n: torch.tensor([5, 6, 8, 9, 10, 13, 14, 15, 16]),
    "a span in the middle": lambda n: torch.arange(n // 2, n // 2 + 7),
}


@pytest.mark.parametrize("sink_set", sorted(FUSED_SINKS))
@pytest.mark.parametrize("heads, groups", [(6, 2), (4, 4), (3, 1)])
def test_fused_row_sum_matches_float64_rows(sink_set: str, heads: int, groups: int) -> None:
    rule, length = AttentionRule(heads, groups, 8, 0.35, None, None), 48
    generator = torch.Generator().manual_seed(heads * 10 + groups)
    keys = 2 * torch.randn(groups, length, 8, generator=generator)
    all_queries = 2 * torch.randn(heads, length, 8, generator=generator)
    sinks = FUSED_SINKS[sink_set](length)
    # weights over seven orders of magnitude, as hop scores are
    magnitudes = torch.randint(0, 7, (len(sinks),), generator=generator).float()
    weights = torch.rand(len(sinks), generator=generator) * 10.0**-magnitudes
    logsumexp = slow_logsumexp(all_queries, keys, rule).float()
    queries = all_queries[:, sinks]
    assert fused_row_sum_applies(sinks, weights, rule, keys.device)
    width = length if sink_set != "a span in the middle" else int(sinks[-1]) + 5  # sources past the last sink: 0
    want = torch.einsum("hcn,c->hn", slow_rows(queries, keys, sinks, rule), weights.double())[:, :width]
    got = fused_row_sum(queries, keys, sinks, weights, logsumexp, rule, width)
    assert got.shape == (heads, width) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=2e-5, atol=1e-12)
    assert torch.all(got[:, int(sinks[-1]) + 1 :] == 0)
    # the same as the blocked sum, which computes its own normalisers
    torch.testing.assert_close(got, weighted_row_sum(queries, keys, sinks, weights, rule, width), rtol=2e-5, atol=1e-12)


def test_fused_row_sum_refuses_what_it_cannot_compute() -> None:
    sinks, weights = torch.arange(10, 20), torch.ones(10)
    cpu = torch.device("cpu")
    assert fused_row_sum_applies(sinks, weights, RULES["causal, GQA"], cpu)
    for name in ("window", "softcap and window, GQA", "sink logits", "chunked, sinks, window"):
        assert not fused_row_sum_applies(sinks, weights, RULES[name], cpu), name
    rule = RULES["causal, GQA"]
    assert not fused_row_sum_applies(sinks, torch.tensor([1.0] * 9 + [-0.5]), rule, cpu)  # a negative weight
    assert not fused_row_sum_applies(sinks, torch.tensor([1.0] * 9 + [0.0]), rule, cpu)  # weight 0: dropped first
    assert not fused_row_sum_applies(torch.tensor([0, 30]), torch.ones(2), rule, cpu)  # sparse: most slots empty
    assert not fused_row_sum_applies(sinks, weights, rule, torch.device("meta"))  # the kernel is the CPU one
    assert not fused_row_sum_applies(torch.tensor([], dtype=torch.long), torch.ones(0), rule, cpu)


def test_summed_rows_take_the_fused_path_only_with_a_checked_logsumexp(monkeypatch) -> None:
    """The captured normalisers are used where they agree with the recomputed rows, and refused where not."""
    model = make_tiny_model("llama")
    adapter = adapter_for(model)
    capture = capture_residuals(adapter, random_ids(30, seed=4))
    assert all(entry is not None for entry in capture.logsumexp)
    calls = []
    original = softmax_module.fused_row_sum
    monkeypatch.setattr(softmax_module, "fused_row_sum", lambda *a, **k: calls.append(1) or original(*a, **k))
    sinks = torch.arange(8, 30)
    weights = torch.rand(22, generator=torch.Generator().manual_seed(1)) + 0.01
    for index in range(capture.num_layers):
        layer = layer_inputs(adapter, capture, index)
        expected = torch.einsum("hcn,c->hn", layer.rows(sinks, 30), weights)
        torch.testing.assert_close(layer.summed_rows(sinks, weights, 30, 128), expected, rtol=1e-5, atol=1e-7)
        # a normaliser off by 1e-3 (far more than rounding) is caught by the probe rows: blocked sum, same result
        wrong = dataclasses.replace(layer, logsumexp=layer.logsumexp + 1e-3)
        assert wrong._checked_logsumexp is None
        torch.testing.assert_close(wrong.summed_rows(sinks, weights, 30, 128), expected, rtol=1e-5, atol=1e-7)
    assert len(calls) == capture.num_layers
