"""Span specs on the built-in model: real generations, made-up outputs (think tags, boxed), unicode, errors."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import spantrace
from spantrace import SpanError
from spantrace.spans import char_map, resolve_span
from spantrace.text.charmap import _decoded_ranges, build_char_map
from spantrace.text.pieces import content_end, split_lines, split_sentences

REASONING = "<think>Tom has 3 apples. He buys 4 more, so 3 + 4 = 7!\nThat is all.</think>\nThe answer is \\boxed{7}."


@pytest.fixture(scope="module")
def model() -> spantrace.Model:
    return spantrace.load()


@pytest.fixture(scope="module")
def generated(model: spantrace.Model) -> spantrace.Run:
    """A real greedy generation of a few sentences over a couple of lines."""
    return model.run("Name three colours.", max_new_tokens=36, progress=False)


@pytest.fixture(scope="module")
def french(model: spantrace.Model) -> spantrace.Run:
    """A real generation with accented (two-byte) characters."""
    return model.run("Écris une phrase en français sur le café.", max_new_tokens=24, progress=False)


@pytest.fixture(scope="module")
def given_output(model: spantrace.Model):
    runs: dict[str, spantrace.Run] = {}

    def run(output: str) -> spantrace.Run:
        if output not in runs:
            runs[output] = model.run("Solve the problem.", output=output, progress=False)
        return runs[output]

    return run


def span_text(run: spantrace.Run, span: tuple[int, int]) -> str:
    return run.model.tokenizer.decode(run.token_ids[span[0] : span[1]])


def assert_tightly_covers(run: spantrace.Run, span: tuple[int, int], target: str) -> None:
    """The tokens of ``span`` decode to text holding ``target``, and dropping either end token loses it."""
    start, end = span
    assert run.prompt_length <= start < end <= run.num_tokens
    assert target in span_text(run, span), (target, span_text(run, span))
    if end - start > 1:
        assert target not in span_text(run, (start + 1, end))
        assert target not in span_text(run, (start, end - 1))


def content(run: spantrace.Run) -> str:
    chars = char_map(run)
    return chars.text[: content_end(chars.text, chars.special_tokens)]


# --- real generations ------------------------------------------------------------------------------


def test_output_is_every_generated_token(generated: spantrace.Run) -> None:
    assert resolve_span(generated, "output") == (generated.prompt_length, generated.num_tokens)
    assert resolve_span(generated, " OUTPUT ") == (generated.prompt_length, generated.num_tokens)


def test_char_map_of_a_generation_round_trips(generated: spantrace.Run) -> None:
    chars = char_map(generated)
    assert chars.text == generated.generated_text
    assert chars.source == "offsets"
    assert len(chars.starts) == generated.num_tokens - generated.prompt_length
    assert all(a <= b for a, b in zip(chars.starts, chars.ends, strict=True))


def test_sentences_and_lines_of_a_generation(generated: spantrace.Run) -> None:
    text = content(generated)
    sentences, lines = split_sentences(text), split_lines(text)
    assert len(sentences) >= 2 and lines
    for index, (a, b) in enumerate(sentences):
        assert_tightly_covers(generated, resolve_span(generated, f"sentence:{index}"), text[a:b])
    for index, (a, b) in enumerate(lines):
        assert_tightly_covers(generated, resolve_span(generated, f"line:{index}"), text[a:b])
    assert resolve_span(generated, "sentence:-1") == resolve_span(generated, f"sentence:{len(sentences) - 1}")
    assert resolve_span(generated, "line:-1") == resolve_span(generated, f"line:{len(lines) - 1}")
    assert resolve_span(generated, f"sentence:-{len(sentences)}") == resolve_span(generated, "sentence:0")


def expected_answer(run: spantrace.Run) -> str:
    """Without </think>: the last non-blank line when there are several, else the last sentence."""
    text = content(run)
    lines = split_lines(text)
    a, b = lines[-1] if len(lines) > 1 else split_sentences(text)[-1]
    return text[a:b]


def test_answer_without_think_is_last_line_or_last_sentence(generated: spantrace.Run) -> None:
    assert_tightly_covers(generated, resolve_span(generated, "answer"), expected_answer(generated))


def test_regex_and_chars_on_a_generation(generated: spantrace.Run) -> None:
    text = char_map(generated).text
    word = re.search(r"[A-Za-z]{4,}", text)[0]
    assert_tightly_covers(generated, resolve_span(generated, f"regex:{word}"), word)
    assert_tightly_covers(generated, resolve_span(generated, "chars:0-6"), text[:6])
    tail = len(text) - 4
    assert_tightly_covers(generated, resolve_span(generated, f"chars:{tail}-{len(text)}"), text[tail:])


def test_run_trace_takes_spec_strings(generated: spantrace.Run) -> None:
    for spec in ("answer", "sentence:-1", "output"):
        result = generated.trace(spec, hops=0)
        assert result.span == resolve_span(generated, spec)
    assert generated.trace((generated.prompt_length, generated.prompt_length + 2), hops=0).span == (
        generated.prompt_length,
        generated.prompt_length + 2,
    )
    with pytest.raises(SpanError, match="generated text is"):
        generated.trace("regex:no such words here")


def test_multibyte_characters_of_a_real_generation(french: spantrace.Run) -> None:
    text = char_map(french).text
    accented = [i for i, ch in enumerate(text) if len(ch.encode()) > 1]
    assert accented, f"expected accented characters in {text!r}"
    for i in accented:
        assert_tightly_covers(french, resolve_span(french, f"chars:{i}-{i + 1}"), text[i])
    word = re.search(r"\w*[^\x00-\x7f]\w*", text)[0]
    assert_tightly_covers(french, resolve_span(french, f"regex:{word}"), word)
    assert_tightly_covers(french, resolve_span(french, "answer"), expected_answer(french))


# --- made-up outputs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("think", "Tom has 3 apples. He buys 4 more, so 3 + 4 = 7!\nThat is all."),
        ("answer", "The answer is \\boxed{7}."),
        ("boxed", "7"),
        ("sentence:0", "Tom has 3 apples."),
        ("sentence:1", "He buys 4 more, so 3 + 4 = 7!"),
        ("sentence:2", "That is all."),
        ("sentence:-1", "The answer is \\boxed{7}."),
        ("line:0", "Tom has 3 apples. He buys 4 more, so 3 + 4 = 7!"),
        ("line:-1", "The answer is \\boxed{7}."),
        ("regex:3 \\+ 4", "3 + 4"),
        ("regex:answer is (.+)\\.", "\\boxed{7}"),
        ("chars:7-10", "Tom"),
    ],
)
def test_spans_of_a_reasoning_output(given_output, spec: str, expected: str) -> None:
    run = given_output(REASONING)
    assert_tightly_covers(run, resolve_span(run, spec), expected)


def test_answer_and_output_with_a_trailing_end_token(given_output) -> None:
    run = given_output("So the total is 7 apples.<|im_end|>")
    assert run.tokens[-1] == "<|im_end|>"
    assert resolve_span(run, "output") == (run.prompt_length, run.num_tokens)  # EOS stays inside "output"
    answer = resolve_span(run, "answer")
    assert answer[1] == run.num_tokens - 1
    assert span_text(run, answer).strip() == "So the total is 7 apples."
    assert resolve_span(run, "sentence:-1") == answer


@pytest.mark.parametrize(
    ("output", "spec", "expected"),
    [
        ("First \\boxed{1}, then \\boxed{\\frac{1}{2}}.", "boxed", "\\frac{1}{2}"),
        ("Take \\boxed{3} or \\boxed{4", "boxed", "3"),  # the last one never closes
        ("Reasoning before the tag. </think> Final: 12", "think", "Reasoning before the tag."),
        ("Reasoning before the tag. </think> Final: 12", "answer", "Final: 12"),
        ("<think>cut off before closing", "think", "cut off before closing"),
        ("Pi is 3.14 today. Next one", "sentence:0", "Pi is 3.14 today."),
        ("Line one\n\n\nLine two\n", "line:1", "Line two"),
        ("One. Two? Three!", "answer", "Three!"),
    ],
)
def test_span_rules(given_output, output: str, spec: str, expected: str) -> None:
    run = given_output(output)
    assert_tightly_covers(run, resolve_span(run, spec), expected)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("sentence:0", "Ça coûte 3,50 € — d’accord?"),
        ("sentence:1", "Oui 😀😀 日本語で答えます。"),
        ("line:-1", "Ελληνικά: \\boxed{π²}"),
        ("boxed", "π²"),
        ("regex:日本(語)", "語"),
        ("regex:😀+", "😀😀"),
        ("chars:14-15", "€"),
    ],
)
def test_unicode_spans(given_output, spec: str, expected: str) -> None:
    run = given_output("Ça coûte 3,50 € — d’accord? Oui 😀😀 日本語で答えます。\nΕλληνικά: \\boxed{π²}")
    assert_tightly_covers(run, resolve_span(run, spec), expected)


# --- character maps --------------------------------------------------------------------------------


def test_decoded_map_when_ids_do_not_round_trip(model: spantrace.Model) -> None:
    """Ids that re-tokenising would merge (one token per character): the map comes from decoding them."""
    tokenizer = model.tokenizer
    text = "Hi 日本, ok. Bye!"
    ids = [i for ch in text for i in tokenizer(ch, add_special_tokens=False)["input_ids"]]
    prompt = model.encode_prompt("Say something.")
    run = model.run(input_ids=prompt + ids, prompt_length=len(prompt), progress=False)
    chars = char_map(run)
    assert chars.source == "decode" and chars.text == text
    for spec, expected in [("sentence:0", "Hi 日本, ok."), ("answer", "Bye!"), ("regex:本", "本"), ("chars:4-5", "本")]:
        assert_tightly_covers(run, resolve_span(run, spec), expected)


def test_split_characters_belong_to_every_token_that_carries_them(model: spantrace.Model) -> None:
    tokenizer = model.tokenizer
    ids = tokenizer(" 日本語 🙂", add_special_tokens=False)["input_ids"]
    chars = build_char_map(tokenizer, ids)
    pieces = [tokenizer.decode([i]) for i in ids]
    assert any("\ufffd" in piece for piece in pieces), "expected characters split over byte-level tokens"
    for piece, a, b in zip(pieces, chars.starts, chars.ends, strict=True):
        assert b > a  # every token carries at least part of one character
        if "\ufffd" in piece:
            assert any(len(ch.encode()) > 1 for ch in chars.text[a:b])


def texts(pieces: list[str], min_size: int, max_size: int) -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(pieces), min_size=min_size, max_size=max_size).map("".join)


unicode_text = texts([*"ab Z.,!?\n\t éüß日本語中🙂😀€—“’09", "<think>", "</think>"], 1, 30).filter(str.strip)


@settings(max_examples=40, deadline=None)
@given(text=unicode_text)
def test_decoded_map_matches_offsets(model: spantrace.Model, text: str) -> None:
    tokenizer = model.tokenizer
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    by_offsets = build_char_map(tokenizer, ids)
    assert by_offsets.source == "offsets" and by_offsets.text == text
    assert _decoded_ranges(tokenizer, ids, text) == (by_offsets.starts, by_offsets.ends)


# --- splitting rules -------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(text=texts([*"ab .!?\n\t3", "<think>", "</think>"], 0, 40))
def test_pieces_are_ordered_stripped_and_cover_the_words(text: str) -> None:
    for pieces in (split_sentences(text), split_lines(text)):
        covered = set()
        previous_end = 0
        for a, b in pieces:
            assert previous_end <= a < b <= len(text)
            piece = text[a:b]
            assert piece == piece.strip() and "\n" not in piece and "<think>" not in piece
            covered.update(range(a, b))
            previous_end = b
        tags = {i for m in re.finditer(r"</?think>", text) for i in range(m.start(), m.end())}
        assert all(text[i].isspace() or i in covered or i in tags for i in range(len(text)))


def test_sentence_rule() -> None:
    text = "First. Second!? Third\nFourth 3.5 e.g.x end..."
    assert [text[a:b] for a, b in split_sentences(text)] == ["First.", "Second!?", "Third", "Fourth 3.5 e.g.x end..."]


# --- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "spec", "message"),
    [
        ("Just text.", "think", "no <think>"),
        ("Just text.", "boxed", "boxed"),
        ("Only \\boxed{} here", "boxed", "boxed"),
        ("Just text.", "regex:zebra", "does not occur"),
        ("<think>all reasoning</think>   ", "answer", "after </think>"),
        ("Just text.", "sentence:5", "out of range"),
        ("Just text.", "line:-2", "out of range"),
    ],
)
def test_spans_that_match_nothing_show_the_text(given_output, output: str, spec: str, message: str) -> None:
    run = given_output(output)
    with pytest.raises(SpanError, match=re.escape(message)) as caught:
        resolve_span(run, spec)
    assert repr(run.generated_text) in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nonsense", "unknown span"),
        ("answer:2", "unknown span"),
        ("sentence:x", "whole number"),
        ("sentence:", "whole number"),
        ("regex:", "no pattern"),
        ("regex:(", "not a valid regular expression"),
        ("chars:5-2", "0 ≤ A < B"),
        ("chars:0-999", "0 ≤ A < B"),
        ("chars:a-b", "chars:A-B"),
        (3, "a span is"),
        ((1, 2, 3), "a span is"),
    ],
)
def test_malformed_specs(given_output, spec, message: str) -> None:
    run = given_output("Just text.")
    with pytest.raises(SpanError, match=re.escape(message)):
        resolve_span(run, spec)


def test_long_text_is_shortened_in_errors(model: spantrace.Model) -> None:
    """Only the tokenizer and the ids matter here, so a stand-in run skips the forward pass."""
    ids = model.tokenizer("word " * 300, add_special_tokens=False)["input_ids"]
    run = SimpleNamespace(model=model, token_ids=ids, prompt_length=0, num_tokens=len(ids))
    with pytest.raises(SpanError, match="characters…") as caught:
        resolve_span(run, "boxed")
    assert len(str(caught.value)) < 900
