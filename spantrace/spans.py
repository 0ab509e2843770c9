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

Characters → tokens. The generated text is ``tokenizer.decode(generated ids)``; each generated token
carries a character range ``[start, end)`` of it (``CharMap``), built one of two ways:

- ``"offsets"``: when the fast tokenizer re-encodes that text into exactly the run's generated ids, its
  offset mapping gives the ranges;
- ``"decode"``: otherwise (the ids do not round-trip, or the tokenizer has no offsets), the ranges come
  from decoding growing prefixes of the run's own ids: ``decode(ids[:k])`` for k = 0…M.

Either way a character whose bytes are split over several byte-level tokens belongs to every token that
carries one of its bytes. A character range selects every token whose range overlaps it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import SpanError

if TYPE_CHECKING:
    from .api import Run
    from .inputs import Segment

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

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
# Piece boundaries: an ``end`` match belongs to the piece before it, a ``cut`` match to no piece.
_SENTENCE_END = re.compile(r"(?P<end>[.!?]+(?=\s|$))|(?P<cut>\n|</?think>)")
_LINE_END = re.compile(r"(?P<cut>\n|</?think>)")
_BOXED = re.compile(r"\\boxed\s*\{")
_INDEX = re.compile(r"[+-]?\d+")
_CHAR_RANGE = re.compile(r"(\d+)\s*-\s*(\d+)")
_SHOWN_CHARS = 600  # how much generated text an error message shows (head and tail)

CharRange = tuple[int, int]  # [start, end) in characters of the generated text


@dataclass(frozen=True)
class CharMap:
    """The generated text and the character range each generated token carries.

    text: ``decode(generated ids)``. starts, ends: [M] per generated token, ``[start, end)`` in ``text``.
    source: ``"offsets"`` (the tokenizer's offset mapping) or ``"decode"`` (decoded prefixes of the ids).
    special_tokens: the tokenizer's special token strings (stripped from the end of text spans).
    """

    text: str
    starts: list[int]
    ends: list[int]
    source: str
    special_tokens: tuple[str, ...] = ()

    def token_range(self, chars: CharRange) -> tuple[int, int] | None:
        """``(first, last + 1)`` of the generated tokens overlapping ``chars``, or None when none does."""
        start, end = chars
        hits = [k for k, (a, b) in enumerate(zip(self.starts, self.ends, strict=True)) if a < end and b > start]
        return (hits[0], hits[-1] + 1) if hits else None


# --- the character map -----------------------------------------------------------------------------


def build_char_map(tokenizer: Any, ids: Sequence[int]) -> CharMap:
    """The ``CharMap`` of the generated token ``ids`` (offsets when they round-trip, else decoded prefixes)."""
    ids = [int(i) for i in ids]
    text = tokenizer.decode(ids)
    special = tuple(sorted(set(getattr(tokenizer, "all_special_tokens", []) or []), key=len, reverse=True))
    offsets = _exact_offsets(tokenizer, text, ids)
    if offsets is not None:
        return CharMap(text, [a for a, _ in offsets], [b for _, b in offsets], "offsets", special)
    starts, ends = _decoded_ranges(tokenizer, ids, text)
    return CharMap(text, starts, ends, "decode", special)


def char_map(run: Run) -> CharMap:
    """The ``CharMap`` of ``run``'s generated tokens."""
    tokenizer = run.model.tokenizer
    if tokenizer is None:
        raise SpanError("text spans need the model's tokenizer; give (start, end) token positions instead")
    return build_char_map(tokenizer, run.token_ids[run.prompt_length :])


def _exact_offsets(tokenizer: Any, text: str, ids: list[int]) -> list[CharRange] | None:
    """The fast tokenizer's offsets for ``text`` if re-encoding it gives exactly ``ids``, else None."""
    if not getattr(tokenizer, "is_fast", False):
        return None
    try:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except (NotImplementedError, ValueError, TypeError):
        return None
    if [int(i) for i in encoded["input_ids"]] != ids:
        return None
    offsets = [(int(a), int(b)) for a, b in encoded["offset_mapping"]]
    if not all(0 <= a <= b <= len(text) for a, b in offsets):
        return None
    return offsets


def _decoded_ranges(tokenizer: Any, ids: list[int], text: str) -> tuple[list[int], list[int]]:
    """Per-token ``[start, end)`` from decoding growing prefixes of ``ids`` (O(M²) decoding work).

    ``complete[k]``: characters of ``text`` fully produced by the first k tokens (the prefix decodes to
    them, then maybe to a replacement character where a multi-byte character is cut). Token k starts
    at ``complete[k]`` and ends at ``complete[k + 1]``, plus the cut character when there is one.
    """
    complete: list[int] = []
    cut: list[bool] = []  # the first k tokens end inside a character
    done = 0
    for k in range(len(ids) + 1):
        prefix = tokenizer.decode(ids[:k]) if k else ""
        shared = _common_prefix_length(prefix, text)
        done = max(done, shared)  # keep it monotone whatever the tokenizer's clean-up does
        complete.append(done)
        cut.append(len(prefix) > shared and done < len(text))
    starts = complete[:-1]
    ends = [max(complete[k + 1] + int(cut[k + 1]), starts[k]) for k in range(len(ids))]
    return starts, ends


def _common_prefix_length(a: str, b: str) -> int:
    limit = min(len(a), len(b))
    for i in range(limit):
        if a[i] != b[i]:
            return i
    return limit


# --- splitting text --------------------------------------------------------------------------------


def split_sentences(text: str) -> list[CharRange]:
    """Character ranges of the sentences of ``text`` (rule in the module docstring), stripped, non-blank."""
    return _pieces(text, _SENTENCE_END)


def split_lines(text: str) -> list[CharRange]:
    """Character ranges of the non-blank lines of ``text``, stripped."""
    return _pieces(text, _LINE_END)


def _pieces(text: str, boundary: re.Pattern[str]) -> list[CharRange]:
    pieces, begin = [], 0
    for match in boundary.finditer(text):
        pieces.append((begin, match.start() if match.lastgroup == "cut" else match.end()))
        begin = match.end()
    pieces.append((begin, len(text)))
    return [piece for piece in (_strip(text, a, b) for a, b in pieces) if piece is not None]


def _strip(text: str, start: int, end: int) -> CharRange | None:
    """``[start, end)`` without surrounding whitespace; None when nothing is left."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return (start, end) if start < end else None


def content_end(text: str, special_tokens: Sequence[str]) -> int:
    """Where ``text`` ends once trailing whitespace and special tokens (``<|im_end|>``, EOS) are cut off."""
    end = len(text)
    while True:
        while end and text[end - 1].isspace():
            end -= 1
        token = next((t for t in special_tokens if 0 < len(t) <= end and text.startswith(t, end - len(t))), None)
        if token is None:
            return end
        end -= len(token)


# --- resolving specs -------------------------------------------------------------------------------


def resolve_span(run: Run, spec: str | tuple[int, int] | Sequence[int]) -> tuple[int, int]:
    """The ``(start, end)`` token positions (end exclusive) of ``spec`` in ``run`` (forms: module docstring).

    Raises SpanError when the spec is malformed or matches nothing; the message shows the generated text.
    """
    if isinstance(spec, (tuple, list)):
        if len(spec) != 2:
            raise SpanError(f"a span is (start, end) token positions, end exclusive; got {spec!r}")
        try:
            return int(spec[0]), int(spec[1])
        except (TypeError, ValueError) as error:
            raise SpanError(f"span positions must be whole numbers; got {spec!r}") from error
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
        return _strip(text, close + len(THINK_CLOSE), end)
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
    return _strip(text, start, closed if closed >= 0 else end)


def _boxed_range(text: str) -> CharRange | None:
    """Inside the last ``\\boxed{…}`` whose braces close (nested braces allowed)."""
    for match in reversed(list(_BOXED.finditer(text))):
        depth = 1
        for position in range(match.end(), len(text)):
            depth += {"{": 1, "}": -1}.get(text[position], 0)
            if depth == 0:
                inside = _strip(text, match.end(), position)
                if inside is not None:
                    return inside
                break
    return None


def _regex_range(text: str, pattern: str, spec: str) -> CharRange | None:
    if not pattern:
        raise SpanError(f"span {spec!r} has no pattern; write regex:PATTERN, e.g. regex:answer is (\\d+)")
    try:
        compiled = re.compile(pattern)
    except re.error as error:
        raise SpanError(f"span {spec!r}: {pattern!r} is not a valid regular expression ({error})") from error
    match = compiled.search(text)
    if match is None:
        return None
    if compiled.groups and match.group(1):
        return match.span(1)
    return match.span() if match.end() > match.start() else None


def _given_chars(text: str, argument: str, spec: str) -> CharRange:
    parsed = _CHAR_RANGE.fullmatch(argument.strip())
    if parsed is None:
        raise SpanError(f"span {spec!r}: write chars:A-B with whole numbers A < B (B exclusive), e.g. chars:0-10")
    start, end = int(parsed[1]), int(parsed[2])
    if not start < end <= len(text):
        raise SpanError(f"span {spec!r} needs 0 ≤ A < B ≤ {len(text)} (the generated text has {len(text)} characters)")
    return start, end


def _index(argument: str, spec: str) -> int:
    if not _INDEX.fullmatch(argument.strip()):
        raise SpanError(f"span {spec!r}: N must be a whole number (0 is the first, -1 the last)")
    return int(argument)


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


def structure_segment(run: Run, kind: str, argument: str, spec: str) -> Segment:
    """The message, assistant turn or tool call that ``message:N``, ``turn:N`` or ``tool_call:N`` names."""
    layout = run.layout
    index = _index(argument, spec)
    if kind == "tool_call":
        pieces = layout.of_kind("tool_call")
        what = "tool call"
    else:
        pieces = [s for s in layout.of_kind("message") if kind == "message" or s.role == "assistant"]
        what = "message" if kind == "message" else "assistant turn"
    if not pieces:
        where = "it was run from token ids or a plain prompt" if kind != "tool_call" else "it has none"
        raise SpanError(f"span {spec!r}: this run has no {what}s ({where}); run it with `messages=`")
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


def turn_start(run: Run, span: tuple[int, int]) -> int | None:
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
