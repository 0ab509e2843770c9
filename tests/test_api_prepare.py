"""``Model.prepare`` + ``Model.run(prepared=...)``: the two-step form gives the same run as passing the text."""

from __future__ import annotations

import numpy as np
import pytest
from tiny_models import make_tiny_model

import spantrace
from spantrace import InputError

PROMPT = "Tom has 3 apples and buys 4 more. How many apples does he have?"
OUTPUT = "He has 3 + 4 = 7 apples."
CHAT = [
    {"role": "user", "content": "Weather in Lisbon?"},
    {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "weather", "arguments": {}}}]},
    {"role": "tool", "content": "Rain all day."},
    {"role": "assistant", "content": "It will rain."},
]
DOCUMENTS = [{"name": "fruit", "text": "Apples are red."}, "Pears are green."]


@pytest.fixture(scope="module")
def model(tokenizer) -> spantrace.Model:
    hf_model = make_tiny_model("llama", vocab_size=len(tokenizer), max_position_embeddings=512)
    return spantrace.Model(hf_model, tokenizer, "tiny-llama")


def assert_same_run(two_step: spantrace.Run, one_step: spantrace.Run) -> None:
    assert two_step.token_ids == one_step.token_ids and two_step.prompt_length == one_step.prompt_length
    assert two_step.layout.to_dict() == one_step.layout.to_dict()
    a, b = two_step.trace("output", hops=1), one_step.trace("output", hops=1)
    np.testing.assert_array_equal(a.scores, b.scores)


@pytest.mark.parametrize(
    "given",
    [
        {"prompt": PROMPT, "output": OUTPUT},
        {"prompt": PROMPT, "output": OUTPUT, "documents": DOCUMENTS},
        {"prompt": PROMPT, "output": OUTPUT, "chat": False},
        {"messages": CHAT},
        {"messages": CHAT[:1], "documents": DOCUMENTS, "documents_message": 0, "output": OUTPUT},
    ],
)
def test_prepare_then_run_is_run(model: spantrace.Model, given: dict) -> None:
    prepared = model.prepare(**given)
    assert prepared.output_ids is not None  # the output is given, or the conversation's last turn is
    assert prepared.ids == model.prepare(**given).ids  # preparing has no side effects
    assert_same_run(model.run(prepared=prepared, progress=False), model.run(**given, progress=False))


def test_prepare_then_generate(model: spantrace.Model) -> None:
    prepared = model.prepare(PROMPT)
    assert prepared.output_ids is None and prepared.ids == model.encode_prompt(PROMPT)
    run = model.run(prepared=prepared, max_new_tokens=4, progress=False)
    assert run.prompt_length == len(prepared.ids) and run.num_tokens == len(prepared.ids) + 4
    assert_same_run(run, model.run(PROMPT, max_new_tokens=4, progress=False))


@pytest.mark.parametrize(
    "extra",
    [{"prompt": PROMPT}, {"output": OUTPUT}, {"messages": CHAT}, {"documents": DOCUMENTS}, {"tools": []},
     {"documents_message": 0}, {"input_ids": [1, 2, 3]}, {"prompt_length": 2}],
)
def test_prepared_excludes_the_text_and_the_ids(model: spantrace.Model, extra: dict) -> None:
    prepared = model.prepare(PROMPT, output=OUTPUT)
    with pytest.raises(InputError, match="either `prepared` or what it is made from") as caught:
        model.run(prepared=prepared, **extra, progress=False)
    assert "\n" not in str(caught.value)


def test_prepare_errors(model: spantrace.Model) -> None:
    with pytest.raises(InputError, match="nothing to prepare"):
        model.prepare()
    with pytest.raises(InputError, match="the output is empty"):
        model.prepare(PROMPT, output="")
    with pytest.raises(InputError, match="unknown role"):
        model.prepare(messages=[{"role": "robot", "content": "hi"}])
    bare = spantrace.Model(model.hf_model, None, "no-tokenizer")
    with pytest.raises(InputError, match="needs a tokenizer"):
        bare.prepare(PROMPT)
