"""The public call shape on tiny models: load → run → trace, identities, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import ARCHITECTURES, make_tiny_model, random_ids

import spantrace
from spantrace import InputError, SpanError, SpanTraceError, TraceResult, UnsupportedArchitectureError

PROMPT_LENGTH = 8


@pytest.fixture(scope="module", params=["llama", "gemma3_text", "gpt2"])
def run(request) -> spantrace.Run:
    model = spantrace.load(make_tiny_model(request.param))
    return model.run(input_ids=random_ids(18, seed=5), prompt_length=PROMPT_LENGTH)


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("method", ["flashtrace", "ifr"])
def test_public_call_shape(arch: str, method: str) -> None:
    ids = random_ids(16, seed=1)
    result = (
        spantrace.load(make_tiny_model(arch)).run(input_ids=ids, prompt_length=6).trace((12, 15), method=method, hops=2)
    )
    assert result.scores.shape == (16,) and result.scores.dtype == np.float32
    assert len(result.hop_scores) == 3 and all(h.shape == (16,) for h in result.hop_scores)
    assert len(result.rho) == 3 and all(0.0 <= r <= 1.0 for r in result.rho)
    assert result.rho[0] >= result.rho[1] >= result.rho[2]
    assert np.all(np.isfinite(result.scores)) and np.all(result.scores >= 0)
    assert np.all(result.scores[6:] == 0)  # observation mask: only the prompt is scored
    assert result.scores[:6].sum() > 0
    # hop 0 never looks past the span end
    assert np.all(result.hop_scores[0][15:] == 0)


def test_combination_rule(run: spantrace.Run) -> None:
    result = run.trace((14, 17), hops=2)
    mask = np.arange(run.num_tokens) < PROMPT_LENGTH
    expected = mask * (
        result.hop_scores[0] + result.rho[0] * result.hop_scores[1] + result.rho[1] * result.hop_scores[2]
    )
    np.testing.assert_allclose(result.scores, expected, rtol=1e-6, atol=1e-8)
    g_start, g_end = result.recursive_span
    assert (g_start, g_end) == (PROMPT_LENGTH, 17)
    share = result.hop_scores[0][g_start:g_end].sum() / result.hop_scores[0].sum()
    assert result.rho[0] == pytest.approx(share, rel=1e-6)


def test_one_token_span_same_under_both_methods(run: spantrace.Run) -> None:
    flash = run.trace((13, 14), hops=0)
    tokenwise = run.trace((13, 14), method="ifr", hops=0)
    np.testing.assert_allclose(flash.hop_scores[0], tokenwise.hop_scores[0], rtol=1e-5, atol=1e-7)
    assert tokenwise.rows is not None and tokenwise.rows.shape == (1, run.num_tokens)


def test_ifr_span_is_mean_of_rows(run: spantrace.Run) -> None:
    result = run.trace((12, 16), method="ifr", hops=0)
    assert result.row_positions == [12, 13, 14, 15]
    np.testing.assert_allclose(result.hop_scores[0], result.rows.mean(0), rtol=1e-6)


def test_chunk_size_changes_nothing(run: spantrace.Run) -> None:
    for method in ("flashtrace", "ifr"):
        reference = run.trace((10, 17), method=method, hops=1, chunk_size=128)
        for chunk in (1, 3):
            other = run.trace((10, 17), method=method, hops=1, chunk_size=chunk)
            np.testing.assert_allclose(other.scores, reference.scores, rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(other.rho, reference.rho, rtol=1e-5)


def test_recursive_reasoning_uses_tokens_before_the_span(run: spantrace.Run) -> None:
    result = run.trace((14, 17), hops=1, recursive="reasoning")
    assert result.recursive_span == (PROMPT_LENGTH, 14)
    at_start = run.trace((PROMPT_LENGTH, 10), hops=2, recursive="reasoning")
    assert at_start.rho == [0.0, 0.0, 0.0]  # nothing before the span: hops add nothing
    np.testing.assert_array_equal(at_start.scores[:PROMPT_LENGTH], at_start.hop_scores[0][:PROMPT_LENGTH])
    assert any("no score mass" in note for note in at_start.info["notes"])


def test_sdpa_and_eager_give_the_same_scores() -> None:
    ids = random_ids(15, seed=2)
    results = []
    for implementation in ("sdpa", "eager"):
        model = spantrace.load(make_tiny_model("qwen2", attn_implementation=implementation))
        results.append(model.run(input_ids=ids, prompt_length=5).trace((9, 13), hops=1))
    np.testing.assert_allclose(results[0].scores, results[1].scores, rtol=1e-5, atol=1e-7)


def test_half_precision_store_stays_close() -> None:
    model = spantrace.load(make_tiny_model("llama"))
    ids = random_ids(15, seed=2)
    full = model.run(input_ids=ids, prompt_length=5).trace((9, 13))
    half = model.run(input_ids=ids, prompt_length=5, store_dtype=torch.float16, offload=True).trace((9, 13))
    np.testing.assert_allclose(half.scores, full.scores, rtol=0, atol=2e-3)


def test_json_round_trip(run: spantrace.Run, tmp_path) -> None:
    result = run.trace((12, 16), method="ifr", hops=2)
    again = TraceResult.load(result.save(tmp_path / "r.json"))
    np.testing.assert_array_equal(again.scores, result.scores)
    for a, b in zip(again.hop_scores, result.hop_scores, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(again.rows, result.rows)
    assert again.rho == result.rho and again.span == result.span and again.tokens == result.tokens
    assert again.info == result.info and again.prompt_length == result.prompt_length
    assert [t.position for t in again.top(3)] == [t.position for t in result.top(3)]
    top = result.top(3)
    assert len(top) == 3 and top[0].score >= top[1].score >= top[2].score
    assert all(t.position < PROMPT_LENGTH for t in result.top(100))


@pytest.mark.parametrize(
    "span, message",
    [
        ((12, 12), "empty"),
        ((15, 12), "empty"),
        ((10, 99), "out of range"),
        ((-1, 12), "out of range"),
        ((3, 12), "prompt"),
        ((12,), "start, end"),
        ("answer", "start, end"),
    ],
)
def test_bad_spans(run: spantrace.Run, span, message: str) -> None:
    with pytest.raises(SpanError, match=message):
        run.trace(span)


def test_bad_trace_options(run: spantrace.Run) -> None:
    with pytest.raises(SpanTraceError, match="unknown method"):
        run.trace((12, 14), method="nope")
    with pytest.raises(SpanTraceError, match="hops"):
        run.trace((12, 14), hops=-1)
    with pytest.raises(SpanTraceError, match="recursive"):
        run.trace((12, 14), recursive="everything")
    with pytest.raises(SpanTraceError, match="chunk_size"):
        run.trace((12, 14), chunk_size=0)


def test_bad_run_inputs() -> None:
    model = spantrace.load(make_tiny_model("llama"))
    ids = random_ids(10)
    with pytest.raises(InputError, match="no generated tokens"):
        model.run(input_ids=ids, prompt_length=10)
    with pytest.raises(InputError, match="prompt_length"):
        model.run(input_ids=ids)
    with pytest.raises(InputError, match="prompt_length"):
        model.run(input_ids=ids, prompt_length=0)
    with pytest.raises(InputError, match="empty"):
        model.run(input_ids=torch.tensor([], dtype=torch.long), prompt_length=1)
    with pytest.raises(InputError, match="vocabulary"):
        model.run(input_ids=torch.tensor([1, 2, 5000]), prompt_length=1)
    with pytest.raises(InputError, match="1-D"):
        model.run(input_ids=torch.ones(2, 3, dtype=torch.long), prompt_length=1)
    with pytest.raises(InputError, match="tokenizer"):
        model.run("What is 2 + 2?")
    with pytest.raises(InputError, match="nothing to run"):
        model.run()


def test_unsupported_architecture_is_named() -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("bloom", hidden_size=32, n_layer=1, n_head=4, vocab_size=50)
    with pytest.raises(UnsupportedArchitectureError, match="bloom"):
        spantrace.load(AutoModelForCausalLM.from_config(config))


def test_stop_tokens_are_soft_deleted() -> None:
    class Tokenizer:  # minimal decode-only tokenizer: id 3 is ".", the rest words
        chat_template = None

        def decode(self, ids):
            return "." if ids[0] == 3 else f" w{ids[0]}"

    hf = make_tiny_model("llama")
    ids = random_ids(16, seed=7)
    ids[2] = 3
    ids[12] = 3
    model = spantrace.Model(hf, Tokenizer())
    run = model.run(input_ids=ids, prompt_length=6)
    plain = run.trace((10, 14), hops=1)
    deleted = run.trace((10, 14), hops=1, stop_tokens=True)
    assert plain.scores[2] > 0 and deleted.scores[2] == 0
    assert all(h[12] == 0 and h[2] == 0 for h in deleted.hop_scores)
    assert not np.allclose(plain.scores, deleted.scores)


def test_characters_split_across_tokens_are_shown_whole(tokenizer) -> None:
    text = "Tom 日本 café 🍎 x \ufffd y"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    alone = [tokenizer.decode([i]) for i in ids]
    assert sum(piece.count("\ufffd") for piece in alone) > 1  # byte-level BPE splits 日 and 🍎
    model = spantrace.Model(make_tiny_model("llama", vocab_size=len(tokenizer)), tokenizer)
    pieces = model.token_strings(ids)
    assert len(pieces) == len(ids) and "".join(pieces) == text
    assert " 日" in pieces and " 🍎" in pieces and pieces.count("\ufffd") == 1  # the one that is in the text
    for piece, single in zip(pieces, alone, strict=True):
        assert piece == single or "\ufffd" in single  # only split characters change
