"""No silent garbage (issue 27, point 3): a model whose forward goes NaN or infinite stops with NonFiniteError
saying where — in the capture, in generation and at load — and so does a method whose scores do; a store_dtype
the kernels cannot use is refused up front."""

from __future__ import annotations

import pytest
import torch
from tiny_models import make_tiny_model

import spantrace
from spantrace.methods.base import AttributionMethod, SinkScores
from spantrace.methods.registry import _METHODS, register_method

IDS = [3, 4, 5, 6, 7, 8, 9, 10]  # token id 5 sits at position 2


def nan_embedding_row() -> torch.nn.Module:
    """Token id 5's embedding row holds a NaN (the 16-token load check never reads that token)."""
    model = make_tiny_model("llama")
    with torch.no_grad():
        model.model.embed_tokens.weight[5, 3] = float("nan")
    return model


def inf_weight_in_layer_1() -> torch.nn.Module:
    model = make_tiny_model("llama")
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, 0] = float("inf")
    return model


def float16_overflow() -> torch.nn.Module:
    """Finite float16 weights whose layer-1 MLP output passes 65504."""
    model = make_tiny_model("llama", dtype=torch.float16)
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight.mul_(1000)
        model.model.layers[1].mlp.down_proj.weight.mul_(1000)
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    return model


CASES = {
    "nan embedding row": (nan_embedding_row, r"at the embedding, token position 2 \(token id 5, dtype float32\)"),
    "inf weight in layer 1": (inf_weight_in_layer_1, r"at layer 1, .*dtype float32\): its weights may be corrupt"),
    "float16 overflow": (float16_overflow, r"at layer 1, .*dtype float16\): .*load it in float32 or bfloat16"),
}


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and "please report" not in message
    return message


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_capture_says_where_the_forward_went_non_finite(case: str) -> None:
    build, where = CASES[case]
    model = spantrace.Model(build(), None, "tiny", check=False)
    with pytest.raises(spantrace.NonFiniteError, match=where) as raised:
        model.run(input_ids=IDS, prompt_length=4, progress=False)
    one_line(raised)


@pytest.mark.parametrize("case", sorted(CASES))
def test_generation_stops_instead_of_emitting_token_0(case: str) -> None:
    build, where = CASES[case]
    model = spantrace.Model(build(), None, "tiny", check=False)
    with pytest.raises(spantrace.NonFiniteError, match=where) as raised:
        model.generate([3, 4, 5, 6], max_new_tokens=4, progress=False)
    one_line(raised)


def test_generation_names_the_output_head_when_the_layers_are_finite() -> None:
    hf_model = make_tiny_model("llama")
    with torch.no_grad():
        hf_model.lm_head.weight[7, 0] = float("nan")
    model = spantrace.Model(hf_model, None, "tiny", check=False)
    with pytest.raises(spantrace.NonFiniteError, match="logits went non-finite while generating token 0.*output head"):
        model.generate([3, 4, 5, 6], max_new_tokens=4, progress=False)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("nan embedding row", r"weights are not finite: 1 of \d+ parameter tensors .*\(model\.embed_tokens\.weight\)"),
        ("inf weight in layer 1", r"weights are not finite: .*\(model\.layers\.1\.mlp\.up_proj\.weight\)"),
        ("float16 overflow", CASES["float16 overflow"][1]),
    ],
)
def test_the_load_check_refuses_non_finite_weights_or_forward(case: str, message: str) -> None:
    with pytest.raises(spantrace.NonFiniteError, match=message) as raised:
        spantrace.Model(CASES[case][0](), None, "tiny")
    assert "adapter" not in one_line(raised)


def test_a_model_non_finite_throughout_is_refused_for_its_weights_not_its_adapter() -> None:
    hf_model = make_tiny_model("llama")
    with torch.no_grad():
        for parameter in hf_model.parameters():
            parameter.fill_(float("nan"))
    with pytest.raises(spantrace.NonFiniteError, match=r"weights are not finite: (\d+) of \1 parameter tensors"):
        spantrace.Model(hf_model, None, "tiny")


def test_a_store_dtype_overflow_is_named() -> None:
    hf_model = make_tiny_model("llama")
    with torch.no_grad():
        hf_model.model.layers[1].mlp.down_proj.weight.mul_(1e30)
    model = spantrace.Model(hf_model, None, "tiny", check=False)
    model.run(input_ids=IDS, prompt_length=4, progress=False)  # float32 holds it
    with pytest.raises(spantrace.NonFiniteError, match="after layer 1 .* overflows store_dtype float16"):
        model.run(input_ids=IDS, prompt_length=4, progress=False, store_dtype=torch.float16)


@pytest.mark.parametrize("dtype", [torch.int8, torch.int64, torch.bool, torch.complex64, torch.float8_e4m3fn, "fp16"])
def test_an_unusable_store_dtype_is_refused_up_front_with_the_accepted_ones(dtype, monkeypatch, tokenizer) -> None:
    model = spantrace.Model(make_tiny_model("llama", vocab_size=len(tokenizer)), tokenizer, "tiny", check=False)

    def no_generation(*args, **kwargs):
        raise AssertionError("generated before refusing the store_dtype")

    monkeypatch.setattr(model, "generate", no_generation)
    with pytest.raises(spantrace.InputError, match=r"cannot hold the residuals: use one of torch\.float16, "):
        model.run("Is 7 prime?", progress=False, store_dtype=dtype)  # refused before it would generate


@pytest.mark.parametrize("method", ["ifr", "ifr-rollout", "rollout"])
def test_token_wise_methods_do_not_score_a_nan_input(method: str) -> None:
    """They used to return zeros or finite-looking scores over a NaN embedding; the run now refuses it."""
    assert method in spantrace.list_methods()
    model = spantrace.Model(nan_embedding_row(), None, "tiny", check=False)
    with pytest.raises(spantrace.NonFiniteError, match="at the embedding"):
        model.run(input_ids=IDS, prompt_length=4, progress=False).trace((4, 8), method=method)


class _NaNAtHop1(AttributionMethod):
    name = "test-nan-at-hop-1"
    description = "finite at hop 0, NaN at hop 1"

    def __init__(self) -> None:
        self.calls = 0

    def score(self, run, sinks, sink_weights, *, chunk_size):
        self.calls += 1
        scores = torch.ones(run.num_tokens)
        if self.calls > 1:
            scores[1] = float("nan")
        return SinkScores(scores=scores)


def test_non_finite_scores_name_the_method_and_the_hop() -> None:
    register_method(_NaNAtHop1)
    try:
        run = spantrace.Model(make_tiny_model("llama"), None, "tiny", check=False).run(
            input_ids=IDS, prompt_length=4, progress=False
        )
        run.trace((6, 8), method=_NaNAtHop1.name, hops=0)  # hop 0 alone is finite
        message = "'test-nan-at-hop-1' gave non-finite scores at hop 1 "
        with pytest.raises(spantrace.NonFiniteError, match=message) as raised:
            run.trace((6, 8), method=_NaNAtHop1.name, hops=1)
        one_line(raised)
    finally:
        _METHODS.pop(_NaNAtHop1.name, None)
