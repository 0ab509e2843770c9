"""Span selection: turn what a person means ("the answer", "sentence 2") into token positions of a ``Run``.

Span specs (``resolve_span(run, spec)``; ``Run.trace`` takes the same):

    (start, end)      token positions, end exclusive
    "output"          every generated token (a trailing EOS token included)
    "answer"          the text after the last ``</think>``; without one, the last non-blank line when the
                      generation has several lines, else its last sentence
    "think"           the text inside the first ``<think>…</think>``: from the generation's start when
                      ``<think>`` is missing (templates open it in the prompt), to its end when
                      ``</think>`` is missing (cut-off reasoning)
    "boxed"           the text inside the last complete ``\\boxed{…}``
    "sentence:N"      the N-th sentence of the generation (0 is the first, -1 the last)
    "line:N"          the N-th non-blank line of the generation (0 is the first, -1 the last)
    "regex:PATTERN"   the first match of PATTERN in the generated text (its first group, when it has one)
    "chars:A-B"       characters A…B-1 of the generated text
    "message:N"       the N-th message of a conversation (``Model.run(messages=...)``); -1 is the last, the
                      traced or generated assistant turn
    "turn:N"          the N-th assistant message (the model's turns; -1 the last)
    "tool_call:N"     the N-th tool call of the conversation (counted over every assistant message)

A message, turn or tool call before the last turn lies in the context; tracing it treats that assistant
turn as the generation (what came before it is its context, what came after plays no part). Only the
model's own text can be traced: a user, system or tool message is an error.

Text spans are stripped of surrounding whitespace, and of special tokens (``<|im_end|>``, EOS) at the
end of the text. Sentences: a sentence ends at a newline, or after a run of ``.``, ``!`` or ``?``
followed by whitespace or the end of the text ("3.5" and "e.g.x" do not split); lines end at newlines.
``<think>`` and ``</think>`` tags end a sentence or line and belong to none; blank pieces are dropped.

A ``regex:`` pattern runs on the ``regex`` package's engine (compatible with ``re``; its V0 mode) with a time
limit of ``REGEX_TIMEOUT_S`` seconds: a pattern that backtracks without end (``(a+)+$`` over a long run of
``a``s) is refused with a SpanError instead of hanging, and nothing keeps running after it. The match releases
the interpreter's lock while it runs, so a server stays responsive meanwhile.

Characters → tokens follow ``spantrace.text.charmap``; sentences and lines ``spantrace.text.pieces``.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Sequence
from typing import Any

import regex

from .errors import SpanError
from .protocols import RunView
from .text.charmap import CharMap, build_char_map
from .text.layout import CharRange, Segment
from .text.pieces import THINK_CLOSE, THINK_OPEN, content_end, split_lines, split_sentences, strip_range

SPAN_FORMS = (
    "(start, end)",
    "output",
    "answer",
    "think",
    "boxed",
    "sentence:N",
    "line:N",
    "regex:PATTERN",
    "chars:A-B",
    "message:N",
    "turn:N",
    "tool_call:N",
)
STRUCTURE_SPANS = ("message", "turn", "tool_call")

_BOXED = re.compile(r"\\boxed\s*\{")
_INDEX = re.compile(r"[+-]?\d+")
_CHAR_RANGE = re.compile(r"(\d+)\s*-\s*(\d+)")
_SHOWN_CHARS = 600  # how much generated text an error message shows (head and tail)
REGEX_TIMEOUT_S = 1.0  # the longest a regex: span may search before it is refused


def char_map(run: RunView) -> CharMap:
    """The ``CharMap`` of ``run``'s generated tokens."""
    tokenizer = run.model.tokenizer
    if tokenizer is None:
        raise SpanError("text spans need the model's tokenizer; give (start, end) token positions instead")
    return build_char_map(tokenizer, run.token_ids[run.prompt_length :])


# --- resolving specs -------------------------------------------------------------------------------


def resolve_span(run: RunView, spec: str | tuple[int, int] | Sequence[int]) -> tuple[int, int]:
    """The ``(start, end)`` token positions (end exclusive) of ``spec`` in ``run`` (forms: module docstring).

    Raises SpanError when the spec is malformed or matches nothing; the message shows the generated text.
    """
    if isinstance(spec, (tuple, list)):
        return check_span(run, spec)
    if not isinstance(spec, str):
        raise SpanError(f"a span is (start, end) or one of {', '.join(SPAN_FORMS[1:])}; got {spec!r}")
    kind, _, argument = spec.strip().partition(":")
    kind = kind.strip().lower()
    if kind == "output" and not argument:
        return run.prompt_length, run.num_tokens
    if kind in STRUCTURE_SPANS:
        segment = structure_segment(run, kind, argument, spec)
        assert segment.tokens is not None
        return segment.tokens
    chars = char_map(run)
    chars_range = _char_range(kind, argument, spec, chars)
    tokens = chars.token_range(chars_range)
    if tokens is None:
        raise SpanError(f"span {spec!r} covers no generated token; the generated text is {_show(chars.text)}")
    return run.prompt_length + tokens[0], run.prompt_length + tokens[1]


def check_spec_syntax(spec: str) -> None:
    """SpanError (one line) when the text spec ``spec`` is malformed, checked without a run: its form is one of
    ``SPAN_FORMS``, N a whole number, ``chars:A-B`` two numbers A < B, a regex one that compiles. Whether it
    matches anything can only be known on a run (``resolve_span``)."""
    kind, _, argument = spec.strip().partition(":")
    kind = kind.strip().lower()
    if kind in ("output", "answer", "think", "boxed") and not argument:
        return
    if kind in ("sentence", "line", *STRUCTURE_SPANS):
        _index(argument, spec)
    elif kind == "regex":
        _compiled_pattern(argument, spec)
    elif kind == "chars":
        start, end = _chars_argument(argument, spec)
        if start >= end:
            raise SpanError(f"span {spec!r}: write chars:A-B with whole numbers A < B (B exclusive), e.g. chars:0-10")
    else:
        raise SpanError(f"unknown span {spec!r}; use one of: {', '.join(SPAN_FORMS)}")


def check_span(run: RunView, span: Any) -> tuple[int, int]:
    """``span`` as ``(start, end)`` token positions, checked: two whole numbers, not empty, inside the run and
    inside its generation (a traced span never reaches into the prompt). SpanError (one line) otherwise."""
    if not isinstance(span, (tuple, list)) or len(span) != 2:
        raise SpanError(f"a span is (start, end) token positions, end exclusive; got {span!r}")
    try:  # operator.index: Python and NumPy integers, never a float or a string cut to an int
        if any(isinstance(position, bool) for position in span):
            raise TypeError("a bool is no position")
        start, end = (operator.index(span[0]), operator.index(span[1]))
    except TypeError as error:
        raise SpanError(f"span positions must be whole numbers; got {span!r}") from error
    if start >= end:
        raise SpanError(f"the span {start, end} is empty (end is exclusive)")
    if start < 0 or end > run.num_tokens:
        raise SpanError(f"the span {start, end} is out of range: the run has {run.num_tokens} tokens")
    if start < run.prompt_length:
        raise SpanError(
            f"the span {start, end} reaches into the prompt; a traced span must lie in the generation "
            f"{(run.prompt_length, run.num_tokens)} (positions {run.prompt_length}…{run.num_tokens - 1})"
        )
    return start, end


def _char_range(kind: str, argument: str, spec: str, chars: CharMap) -> CharRange:
    """The character range of the generated text that ``spec`` (already split at its colon) names."""
    text = chars.text
    end = content_end(text, chars.special_tokens)
    resolvers = {
        "answer": lambda: _answer_range(text, end),
        "think": lambda: _think_range(text, end),
        "boxed": lambda: _boxed_range(text),
        "sentence": lambda: _nth(split_sentences(text[:end]), _index(argument, spec), "sentence", spec, text),
        "line": lambda: _nth(split_lines(text[:end]), _index(argument, spec), "line", spec, text),
        "regex": lambda: _regex_range(text, argument, spec),
        "chars": lambda: _given_chars(text, argument, spec),
    }
    if kind not in resolvers or (kind in ("answer", "think", "boxed") and argument):
        raise SpanError(f"unknown span {spec!r}; use one of: {', '.join(SPAN_FORMS)}")
    found = resolvers[kind]()
    if found is None:
        raise SpanError(f"span {spec!r} matches nothing: {_why_nothing(kind)}; the generated text is {_show(text)}")
    return found


def _why_nothing(kind: str) -> str:
    return {
        "answer": "no text after </think>, or the generation is blank",
        "think": f"no {THINK_OPEN}…{THINK_CLOSE} block with text inside",
        "boxed": "no complete \\boxed{…} with text inside",
        "regex": "the pattern does not occur (or matches only empty text)",
    }.get(kind, "no such text")


def _answer_range(text: str, end: int) -> CharRange | None:
    close = text.rfind(THINK_CLOSE, 0, end)
    if close >= 0:
        return strip_range(text, close + len(THINK_CLOSE), end)
    lines = split_lines(text[:end])
    if len(lines) > 1:
        return lines[-1]
    sentences = split_sentences(text[:end])
    return sentences[-1] if sentences else None


def _think_range(text: str, end: int) -> CharRange | None:
    """Inside the first ``<think>…</think>``. Without ``<think>`` (chat templates that open the block in the
    prompt) it starts at the generation's start; without ``</think>`` (cut-off reasoning) it runs to the end."""
    opened = text.find(THINK_OPEN)
    start = opened + len(THINK_OPEN) if opened >= 0 else 0
    closed = text.find(THINK_CLOSE, start)
    if opened < 0 and closed < 0:
        return None
    return strip_range(text, start, closed if closed >= 0 else end)


def _boxed_range(text: str) -> CharRange | None:
    """Inside the last ``\\boxed{…}`` whose braces close (nested braces allowed)."""
    for match in reversed(list(_BOXED.finditer(text))):
        depth = 1
        for position in range(match.end(), len(text)):
            depth += {"{": 1, "}": -1}.get(text[position], 0)
            if depth == 0:
                inside = strip_range(text, match.end(), position)
                if inside is not None:
                    return inside
                break
    return None


def _compiled_pattern(pattern: str, spec: str) -> regex.Pattern[str]:
    """``pattern`` compiled by the engine ``regex:`` spans run on; SpanError when it is empty or invalid."""
    if not pattern:
        raise SpanError(f"span {spec!r} has no pattern; write regex:PATTERN, e.g. regex:answer is (\\d+)")
    try:
        return regex.compile(pattern, flags=regex.V0)  # V0: the standard library's syntax and behaviour
    except (regex.error, ValueError, OverflowError) as error:
        raise SpanError(f"span {spec!r}: {pattern!r} is not a valid regular expression ({error})") from error


def _regex_range(text: str, pattern: str, spec: str) -> CharRange | None:
    compiled = _compiled_pattern(pattern, spec)
    try:  # concurrent: the lock is released while it searches; timeout: the search stops, nothing runs on
        match = compiled.search(text, timeout=REGEX_TIMEOUT_S, concurrent=True)
    except TimeoutError as error:
        raise SpanError(
            f"span {spec!r}: the pattern did not finish within {REGEX_TIMEOUT_S:g} s on the {len(text)}-character "
            "generation (it backtracks too much); simplify it, e.g. avoid nested repeats such as (a+)+"
        ) from error
    if match is None:
        return None
    if compiled.groups and match.group(1):
        return match.span(1)
    return match.span() if match.end() > match.start() else None


def _chars_argument(argument: str, spec: str) -> CharRange:
    """The ``A``, ``B`` of ``chars:A-B``; SpanError when the argument is not two whole numbers."""
    parsed = _CHAR_RANGE.fullmatch(argument.strip())
    if parsed is None:
        raise SpanError(f"span {spec!r}: write chars:A-B with whole numbers A < B (B exclusive), e.g. chars:0-10")
    return _whole_number(parsed[1], spec), _whole_number(parsed[2], spec)


def _given_chars(text: str, argument: str, spec: str) -> CharRange:
    start, end = _chars_argument(argument, spec)
    if not start < end <= len(text):
        raise SpanError(f"span {spec!r} needs 0 ≤ A < B ≤ {len(text)} (the generated text has {len(text)} characters)")
    return start, end


def _index(argument: str, spec: str) -> int:
    if not _INDEX.fullmatch(argument.strip()):
        raise SpanError(f"span {spec!r}: N must be a whole number (0 is the first, -1 the last)")
    return _whole_number(argument, spec)


def _whole_number(digits: str, spec: str) -> int:
    """``int(digits)``; SpanError for a number of more digits than Python converts (thousands: no text is that long)."""
    try:
        return int(digits)
    except ValueError as error:  # the interpreter's limit on int(str) digits
        raise SpanError(f"span {spec[:40]!r}…: its number has {len(digits.strip())} digits; give one that fits "
                        "the generation (a few digits)") from error


def _nth(pieces: list[CharRange], index: int, what: str, spec: str, text: str) -> CharRange | None:
    if not pieces:
        return None
    if not -len(pieces) <= index < len(pieces):
        raise SpanError(
            f"span {spec!r} is out of range: the generation has {len(pieces)} {what}(s), so N is in "
            f"0…{len(pieces) - 1} or -{len(pieces)}…-1; the generated text is {_show(text)}"
        )
    return pieces[index]


def _show(text: str) -> str:
    """``text`` quoted on one line (newlines escaped), its middle cut when it is long."""
    if len(text) > _SHOWN_CHARS:
        half = _SHOWN_CHARS // 2
        text = f"{text[:half]} […{len(text) - 2 * half} characters…] {text[-half:]}"
    return repr(text)


# --- conversation structure ------------------------------------------------------------------------


def structure_segment(run: RunView, kind: str, argument: str, spec: str) -> Segment:
    """The message, assistant turn or tool call that ``message:N``, ``turn:N`` or ``tool_call:N`` names."""
    layout = run.layout
    index = _index(argument, spec)
    if kind == "tool_call":
        pieces = layout.of_kind("tool_call")
        what = "tool call"
    else:
        pieces = [s for s in layout.of_kind("message") if kind == "message" or s.role == "assistant"]
        what = "message" if kind == "message" else "assistant turn"
    if not pieces and kind == "tool_call":  # whether or not `messages=` was given: none of them calls a tool
        raise SpanError(
            f"span {spec!r}: this run has no tool calls; trace a message (message:N) instead, or run a conversation "
            "whose assistant message carries `tool_calls`"
        )
    if not pieces:
        raise SpanError(
            f"span {spec!r}: this run has no {what}s (it was run from token ids or a plain prompt); "
            "run it with `messages=`"
        )
    if not -len(pieces) <= index < len(pieces):
        raise SpanError(
            f"span {spec!r} is out of range: the run has {len(pieces)} {what}(s), so N is in "
            f"0…{len(pieces) - 1} or -{len(pieces)}…-1"
        )
    segment = pieces[index]
    if segment.tokens is None:
        raise SpanError(f"span {spec!r}: {segment.name} has no tokens (empty, or dropped by the chat template)")
    owner = _owning_message(layout.segments, segment)
    if owner is None or owner.role != "assistant":
        role = owner.role if owner is not None else "template"
        raise SpanError(
            f"span {spec!r} is {segment.name}, a {role} message: only the model's own text (assistant turns, "
            "tool calls) can be traced; its sources are what you pick with TraceResult.by('message')"
        )
    return segment


def turn_start(run: RunView, span: tuple[int, int]) -> int | None:
    """The first token of the assistant message that holds ``span``, when that message lies in the context."""
    segments = run.layout.segments
    for segment in segments:
        tokens = segment.tokens
        if tokens is None or not (tokens[0] <= span[0] and span[1] <= tokens[1]):
            continue
        if segment.kind == "message" and segment.role == "assistant":
            start = tokens[0]
        elif segment.kind == "tool_call":  # templates that render calls after the content
            owner = _owning_message(segments, segment)
            start = min(tokens[0], owner.tokens[0]) if owner is not None and owner.tokens is not None else tokens[0]
        else:
            continue
        return start if start < run.prompt_length else None
    return None


def _owning_message(segments: Sequence[Segment], segment: Segment) -> Segment | None:
    if segment.kind == "message":
        return segment
    return next((s for s in segments if s.kind == "message" and s.index == segment.message), None)
