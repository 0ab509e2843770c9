"""Conversations, tools and documents end to end on the built-in model: API, spans, sources, JSON and the CLI."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import spantrace
from spantrace import GroupingError, SpanError, TraceResult
from spantrace.cli import app

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"
CHAT = json.loads((EXAMPLES / "chat.json").read_text(encoding="utf-8"))
DOCUMENTS = json.loads((EXAMPLES / "documents.json").read_text(encoding="utf-8"))
README_PROMPT = "Tom has 3 apples and buys 4 more. How many apples does he have?"
README_OUTPUT = "Tom has 3 apples and 4 more apples, so he has 3 + 4 = 7 apples.<|im_end|>"


def assert_template_left_out_of_top(result: TraceResult, k: int) -> None:
    """Checks that can fail: the mask covers every special token (read from the tokens' own text, not from the
    mask); without the filter template tokens would be in the top ``k`` (so leaving them out is tested); and
    ``top(k)`` is the full ranking less the masked tokens, in order."""
    prompt = range(result.prompt_length)
    special = [p for p in prompt if result.tokens[p].startswith("<|") and result.tokens[p].endswith("|>")]
    assert special and all(result.template_mask[p] for p in special)
    everything = result.top(result.prompt_length, include_template=True)
    assert [t.score for t in everything] == sorted((t.score for t in everything), reverse=True)
    assert any(result.template_mask[t.position] for t in everything[:k])  # the filter has work to do
    kept = [t for t in everything if not result.template_mask[t.position]][:k]
    assert [t.position for t in result.top(k)] == [t.position for t in kept]
    assert not any(t.token in ("\n", "") or t.position in special for t in kept)


@pytest.fixture(scope="module")
def model() -> spantrace.Model:
    return spantrace.load()


@pytest.fixture(scope="module")
def chat_run(model: spantrace.Model) -> spantrace.Run:
    return model.run(messages=CHAT["messages"], tools=CHAT["tools"], progress=False)


@pytest.fixture(scope="module")
def answer(chat_run: spantrace.Run) -> TraceResult:
    return chat_run.trace("message:-1", hops=0)


def test_the_final_answer_rests_on_messages(chat_run: spantrace.Run, answer: TraceResult) -> None:
    assert chat_run.generated_text.startswith("Yes, pack an umbrella")  # the given last turn, not generated
    start, end = answer.span
    assert "".join(answer.tokens[start:end]) == CHAT["messages"][-1]["content"]
    assert chat_run.trace("turn:-1", hops=0).span == answer.span
    sources = answer.by("message")
    assert {row.name for row in sources} == {
        "system #0", "user #1", "assistant #2", "tool #3 (get_weather)", "user #4"
    }  # fmt: skip
    assert sum(row.share for row in sources) == pytest.approx(1.0)
    assert [row.name for row in answer.by("tool_result")] == ["tool #3 (get_weather)"]
    assert answer.by("tool_call")[0].name == "tool_call 0 (get_weather)"
    # template tokens hold score, are reported, and never lead the token ranking
    assert 0 < answer.info["template"]["share"] < 1 and answer.info["template"]["tokens"] > 10
    assert_template_left_out_of_top(answer, 10)


def test_an_earlier_tool_call_is_traced_from_its_own_context(chat_run: spantrace.Run) -> None:
    result = chat_run.trace("tool_call:0", hops=0)
    start, end = result.span
    assert json.loads("".join(result.tokens[start:end]))["arguments"] == {"city": "Lisbon"}
    assert result.prompt_length < start < chat_run.prompt_length  # the assistant turn is the generation
    assert {row.name for row in result.by("message")} == {"system #0", "user #1"}  # only what came before
    assert np.all(result.scores[result.prompt_length :] == 0)
    with pytest.raises(SpanError, match="user #1, a user message"):
        chat_run.trace("message:1")
    with pytest.raises(SpanError, match="out of range"):
        chat_run.trace("tool_call:3")


def test_recursive_through_assistant_turns(chat_run: spantrace.Run, answer: TraceResult) -> None:
    result = chat_run.trace("message:-1", hops=0, recursive="assistant")
    turn = next(s for s in result.layout.of_kind("message") if s.name == "assistant #2")
    inside = [p for p in range(*turn.tokens) if not result.layout.template[p]]
    assert np.all(result.scores[inside] == 0)  # the earlier turn passes its score on
    assert result.rho[0] > answer.rho[0]  # more of hop 0's mass lies on the recursive sinks
    np.testing.assert_allclose(result.hop_scores[0], answer.hop_scores[0])


def test_groups_round_trip_through_json(answer: TraceResult, tmp_path: Path) -> None:
    loaded = TraceResult.load(answer.save(tmp_path / "chat.json"))
    assert loaded.layout == answer.layout
    assert [(r.name, r.score) for r in loaded.by("message")] == [(r.name, r.score) for r in answer.by("message")]
    with pytest.raises(GroupingError, match="no document boundaries"):
        loaded.by("document")


def test_documents_are_sources(model: spantrace.Model) -> None:
    run = model.run("Which city has the tower from 1889?", documents=DOCUMENTS, output="Paris.", progress=False)
    result = run.trace("output", hops=0)
    assert {row.name for row in result.by("document")} == {"eiffel", "colosseum", "big-ben"}
    html = result.to_html()
    assert "Sources by document" in html and 'href="#src-1"' in html


def test_template_tokens_no_longer_lead_the_readme_example(model: spantrace.Model) -> None:
    result = model.run(README_PROMPT, output=README_OUTPUT, progress=False).trace("answer")
    assert_template_left_out_of_top(result, 10)


def test_cli_traces_a_conversation(model: spantrace.Model, tmp_path: Path) -> None:
    html, saved = tmp_path / "chat.html", tmp_path / "chat.json"
    args = ["trace", "--messages", str(EXAMPLES / "chat.json"), "--by", "message", "--hops", "0"]
    outcome = CliRunner().invoke(app, [*args, "--html", str(html), "--json", str(saved)])
    assert outcome.exit_code == 0, outcome.output
    assert "sources by message" in outcome.stdout and "tool #3 (get_weather)" in " ".join(outcome.stdout.split())
    assert "template/special prompt tokens hold" in outcome.stdout
    assert "Sources by message" in html.read_text(encoding="utf-8")
    assert TraceResult.load(saved).by("tool_result")[0].name == "tool #3 (get_weather)"


def test_cli_documents_message_puts_documents_in_that_message(model: spantrace.Model, tmp_path: Path) -> None:
    saved = tmp_path / "chat.json"
    args = ["trace", "--messages", str(EXAMPLES / "chat.json"), "--documents", str(EXAMPLES / "documents.json"),
            "--documents-message", "1", "--by", "document", "--hops", "0", "--json", str(saved), "-q"]
    outcome = CliRunner().invoke(app, args)
    assert outcome.exit_code == 0, outcome.output
    layout = TraceResult.load(saved).layout
    documents = [s for s in layout.segments if s.kind == "document"]
    assert {s.name for s in documents} == {"eiffel", "colosseum", "big-ben"} and {s.message for s in documents} == {1}
    first_user = next(s for s in layout.segments if s.kind == "message" and s.index == 1)
    assert all(first_user.chars[0] <= s.chars[0] < s.chars[1] <= first_user.chars[1] for s in documents)


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        ([{"role": "robot", "content": "hi"}], [], "unknown role 'robot'"),
        ([{"role": "user", "content": "hi"}, {"role": "tool", "content": "x"}], [], "no matching tool call"),
        ({"turns": []}, [], '"messages" list'),
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello."}], ["--by", "document"],
         "no document boundaries"),
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello."}],
         ["--documents", str(EXAMPLES / "documents.json"), "--documents-message", "2"], "out of range"),
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello."}],
         ["--documents", str(EXAMPLES / "documents.json"), "--documents-message", "-1"], "is message 1 (assistant)"),
    ],
)
def test_cli_bad_conversations_give_one_line(model, tmp_path: Path, content, extra, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content), encoding="utf-8")
    outcome = CliRunner().invoke(app, ["trace", "--messages", str(path), "--hops", "0", *extra])
    assert outcome.exit_code == 2
    assert message in outcome.output and outcome.output.count("\n") == 1 and "Traceback" not in outcome.output


def test_a_template_that_renders_tool_calls_itself(model: spantrace.Model) -> None:
    from test_inputs import NATIVE_TEMPLATE

    tokenizer = copy.copy(model.tokenizer)
    tokenizer.chat_template = NATIVE_TEMPLATE
    native = spantrace.Model(model.hf_model, tokenizer, model_id="native")
    call = {"id": "1", "type": "function", "function": {"name": "lookup", "arguments": {"q": "Lisbon"}}}
    messages = [
        {"role": "user", "content": "Weather in Lisbon?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "Rain."},
        {"role": "assistant", "content": "It rains."},
    ]
    run = native.run(messages=messages, progress=False)
    result = run.trace("tool_call:0", hops=0)
    start, end = result.span
    assert "".join(result.tokens[start:end]) == 'lookup {"q": "Lisbon"}'
    assert result.prompt_length == start  # the call is all the turn has: it starts the generation
    assert [row.name for row in run.trace("message:-1", hops=0).by("tool_result")] == ["tool #2 (lookup)"]
