"""Context-length guards (issue 27, point 7): an input longer than the model's trained context is refused with
the numbers, or traced with allow_long=True and a warning kept in the result; GPT-2 past n_positions is refused
always (no bare IndexError)."""

from __future__ import annotations

import pytest
import torch
from tiny_models import make_tiny_model, random_ids
from typer.testing import CliRunner

import spantrace
import spantrace.cli.trace
from spantrace.cli import app as cli_app
from spantrace.context_length import ContextLimit, context_limit


def llama(tokenizer=None, context: int = 24) -> spantrace.Model:
    vocab = {"vocab_size": len(tokenizer)} if tokenizer is not None else {}
    return spantrace.Model(
        make_tiny_model("llama", max_position_embeddings=context, **vocab), tokenizer, "tiny-llama", check=False
    )


def test_the_limit_is_read_from_the_config() -> None:
    limit = context_limit(make_tiny_model("llama", max_position_embeddings=24))
    assert limit == ContextLimit(24, "max_position_embeddings", hard=False)
    gpt2 = context_limit(make_tiny_model("gpt2", n_positions=20))
    assert (gpt2.tokens, gpt2.hard) == (20, True)
    wrapper = make_tiny_model("gemma3")  # a multimodal wrapper: its text config's length
    assert context_limit(wrapper).tokens == wrapper.config.get_text_config().max_position_embeddings


def test_an_input_past_the_context_is_refused_with_the_numbers() -> None:
    model = llama()
    model.run(input_ids=random_ids(24), prompt_length=20, progress=False)  # exactly the context: fine
    with pytest.raises(spantrace.InputError) as raised:
        model.run(input_ids=random_ids(30), prompt_length=20, progress=False)
    assert str(raised.value) == (
        "the input has 30 tokens; this model was trained on 24 (max_position_embeddings): "
        "pass allow_long=True (--allow-long) to trace anyway"
    )


def test_allow_long_traces_it_and_keeps_the_warning() -> None:
    run = llama().run(input_ids=random_ids(30), prompt_length=20, progress=False, allow_long=True)
    result = run.trace((26, 30))
    assert result.info["warnings"] == [
        "the input has 30 tokens, past the 24 this model was trained on (max_position_embeddings): "
        "scores past the trained length mean little"
    ]
    assert spantrace.TraceResult.from_dict(result.to_dict()).info["warnings"] == result.info["warnings"]
    short = llama().run(input_ids=random_ids(20), prompt_length=16, progress=False).trace((16, 20))
    assert "warnings" not in short.info


def test_gpt2_past_n_positions_is_refused_always() -> None:
    model = spantrace.Model(make_tiny_model("gpt2", n_positions=20), None, "tiny-gpt2", check=False)
    model.run(input_ids=random_ids(20), prompt_length=16, progress=False)
    for allow_long in (False, True):
        with pytest.raises(spantrace.InputError, match="has 24 tokens; this model has learned positions for 20 only"):
            model.run(input_ids=random_ids(24), prompt_length=16, progress=False, allow_long=allow_long)


def test_prepare_refuses_a_prompt_past_the_context(tokenizer) -> None:
    model = llama(tokenizer, context=24)
    prompt = "count with me: " + " ".join(str(i) for i in range(40))
    with pytest.raises(spantrace.InputError, match=r"the input has \d+ tokens; this model was trained on 24"):
        model.prepare(prompt)
    assert model.prepare(prompt, allow_long=True).ids


def test_generation_stops_where_the_context_ends(tokenizer) -> None:
    model = llama(tokenizer, context=64)
    prepared = model.prepare("Is 7 prime?")
    room = 64 - len(prepared.ids)
    assert room > 0
    torch.manual_seed(0)
    run = model.run(prepared=prepared, max_new_tokens=room + 50, progress=False)
    assert run.num_tokens <= 64
    if run.num_tokens == 64:  # it ran into the end of the context rather than stopping by itself
        assert run.warnings == [f"generation stopped after {room} tokens, where the model's context ends"]


def test_cli_refuses_then_allows_with_allow_long(tokenizer, monkeypatch) -> None:
    monkeypatch.setattr(spantrace.cli.trace, "load", lambda *args, **kwargs: llama(tokenizer, context=24))
    args = ["trace", "--prompt", "Is 7 prime? Think step by step.", "--output", "Yes, 7 is prime.", "--span", "output"]
    refused = CliRunner().invoke(cli_app, args)
    assert refused.exit_code == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "this model was trained on 24 (max_position_embeddings): pass allow_long=True" in lines[0]
    allowed = CliRunner().invoke(cli_app, [*args, "--allow-long"])
    assert allowed.exit_code == 0, allowed.output
    assert "warning: the input has" in allowed.stderr and "past the 24 this model was trained on" in allowed.stderr
