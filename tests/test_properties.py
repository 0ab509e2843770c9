"""Property tests (Hypothesis) for spantrace's parsers and validators: whatever the input, each gives a result or a
``SpanTraceError`` (one line), never another exception.

Covered: span specs (``spans.check_spec_syntax`` and ``spans.resolve_span`` on a small fake run), conversations and
documents (``inputs.given``), results files (``eval.results``: single lines, whole files, the writer's refusal) and
saved traces (``TraceResult.from_dict`` / ``from_json``). Arbitrary JSON is generated both from scratch and as a
valid object with one field replaced, so the checks deep inside are reached too.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from spantrace import TraceResult
from spantrace.errors import SpanTraceError
from spantrace.eval.results import ResultsFile, parse_row, read_results
from spantrace.inputs.given import ROLES, parse_conversation, parse_documents
from spantrace.spans import SPAN_FORMS, check_spec_syntax, resolve_span
from spantrace.text.layout import Layout, Segment

# fast enough for every run of the suite (the whole file in a few seconds), deterministic in CI
FAST = settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

# --- arbitrary JSON ----------------------------------------------------------------------------------

# numbers JSON can hold but Python struggles with: huge integers (no float, over the str-conversion limit), ±0, ∞
_AWKWARD_NUMBERS = st.sampled_from([10**400, -(10**400), 2**63, -1, 0, -0.0, 1e308, float("inf"), float("nan")])
_SCALARS = (
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) | _AWKWARD_NUMBERS
)
JSON = st.recursive(
    _SCALARS,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=12,
)
LEAF = st.recursive(  # a small JSON value, for one field inside a generated object (keeps generation quick)
    _SCALARS,
    lambda children: st.lists(children, max_size=2) | st.dictionaries(st.text(max_size=4), children, max_size=2),
    max_leaves=4,
)
DEEP_NESTING = "[" * 100_000  # the standard JSON decoder recurses: this exhausts the stack


def one_of_or_error(call: Any, *args: Any) -> Any:
    """``call(*args)``, or None when it raised a SpanTraceError (any other exception fails the test)."""
    try:
        return call(*args)
    except SpanTraceError as error:
        assert "\n" not in str(error).strip(), f"not one line: {error}"
        return None


# --- span specs on a small fake run --------------------------------------------------------------------


class CharTokenizer:
    """One character per token (id = its code point): decoding is exact; no offset mapping (``is_fast`` False)."""

    all_special_tokens: list[str] = []

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i) for i in ids)


@dataclass
class FakeRun:
    """What span resolution reads of a run (``protocols.RunView``): a user message, then the assistant's answer."""

    prompt: str
    generation: str
    model: Any = field(default_factory=lambda: SimpleNamespace(tokenizer=CharTokenizer()))

    def __post_init__(self) -> None:
        text = self.prompt + self.generation
        self.token_ids = [ord(c) for c in text]
        self.tokens = list(text)
        self.prompt_length = len(self.prompt)
        user = Segment("message", "user #0", (0, self.prompt_length), (0, self.prompt_length), "user", 0, 0)
        answer_tokens = (self.prompt_length, len(text)) if self.generation else None
        answer = Segment("message", "assistant #1", (self.prompt_length, len(text)), answer_tokens, "assistant", 1, 1)
        self.layout = Layout(text, [(k, k + 1) for k in range(len(text))], [user, answer], [False] * len(text))

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


_KINDS = [form.split(":")[0] for form in SPAN_FORMS[1:]]
SPEC = st.one_of(
    st.text(max_size=30),
    st.builds(lambda kind, sep, argument: kind + sep + argument, st.sampled_from(_KINDS + ["", "Chars", " line"]),
              st.sampled_from([":", "", " : "]), st.text(alphabet="0123456789-+ ,()[]\\.*a٣", max_size=12)),
    st.builds(lambda kind, n: f"{kind}:{n}", st.sampled_from(_KINDS), st.integers() | _AWKWARD_NUMBERS),
    st.builds(lambda a, b: f"chars:{a}-{b}", st.integers(min_value=0), st.integers(min_value=0)),
    st.builds(lambda pattern: "regex:" + pattern, st.text(alphabet="ab()+*?|[]^$\\{},.1", max_size=12)),
)
GENERATED = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40) | st.sampled_from(
    ["The answer is 7.", "<think>so 3 + 4</think> 7", "First line.\nSecond line. \\boxed{7}", "  \n ", ""]
)


@FAST
@given(spec=SPEC)
@example(spec="sentence:" + "9" * 5000)  # more digits than int() converts
@example(spec="chars:0-" + "9" * 5000)
@example(spec="regex:(a+)+$")
def test_a_span_spec_is_checked_or_refused_in_one_line(spec: str) -> None:
    one_of_or_error(check_spec_syntax, spec)


@FAST
@given(prompt=st.text(min_size=1, max_size=12), generation=GENERATED, spec=SPEC)
@example(prompt="Q?", generation="aaaa", spec="line:" + "9" * 5000)
def test_a_span_spec_resolves_inside_the_generation_or_is_refused(prompt: str, generation: str, spec: str) -> None:
    run = FakeRun(prompt, generation)
    span = one_of_or_error(resolve_span, run, spec)
    if span is not None:
        assert run.prompt_length <= span[0] < span[1] <= run.num_tokens
    if one_of_or_error(check_spec_syntax, spec) is None and _refused(check_spec_syntax, spec):
        assert span is None, f"{spec!r} is refused by the syntax check but resolved to {span}"


@FAST
@given(prompt=st.text(min_size=1, max_size=8), generation=GENERATED.filter(bool),
       span=st.one_of(JSON, st.tuples(st.integers(), st.integers()), st.lists(st.integers(), max_size=3),
                      st.tuples(st.booleans(), st.integers()), st.just((np.int64(1), np.int64(3)))))
def test_any_value_as_a_span_is_positions_or_refused(prompt: str, generation: str, span: Any) -> None:
    run = FakeRun(prompt, generation)
    resolved = one_of_or_error(resolve_span, run, span)
    if resolved is not None:
        assert run.prompt_length <= resolved[0] < resolved[1] <= run.num_tokens


def _refused(call: Any, *args: Any) -> bool:
    try:
        call(*args)
    except SpanTraceError:
        return True
    return False


# --- conversations and documents -----------------------------------------------------------------------

_TOOL_CALL = st.fixed_dictionaries(
    {"function": st.fixed_dictionaries({"name": LEAF | st.text(min_size=1, max_size=8)}, optional={"arguments": LEAF})},
    optional={"id": LEAF, "type": LEAF},
)
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(ROLES) | LEAF},
    optional={"content": LEAF | st.text(max_size=20) | st.lists(st.fixed_dictionaries({"type": LEAF, "text": LEAF})),
              "tool_calls": LEAF | st.lists(_TOOL_CALL | LEAF, max_size=3),
              "tool_call_id": LEAF, "name": LEAF},
)
CONVERSATION = st.one_of(
    JSON,
    st.lists(MESSAGE | LEAF, max_size=4),
    st.fixed_dictionaries({"messages": st.lists(MESSAGE, max_size=5) | LEAF},
                          optional={"tools": LEAF | st.lists(LEAF, max_size=3), "documents": LEAF}),
)


@FAST
@given(conversation=CONVERSATION)
@example(conversation=[{"role": "assistant", "content": "x", "tool_calls": 5}])  # not a list of calls
@example(conversation=[{"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f"}}]},
                       {"role": "tool", "content": "rain"}])
def test_a_conversation_is_parsed_or_refused_in_one_line(conversation: Any) -> None:
    parsed = one_of_or_error(parse_conversation, conversation)
    if parsed is not None:
        messages, tools = parsed
        assert messages and all(m.role in ROLES and isinstance(m.content, str) for m in messages)
        assert tools is None or isinstance(tools, list)


@FAST
@given(documents=JSON | st.lists(st.text(max_size=10) | st.fixed_dictionaries({"text": LEAF}, optional={"name": LEAF})))
def test_documents_are_parsed_or_refused_in_one_line(documents: Any) -> None:
    parsed = one_of_or_error(parse_documents, documents)
    if parsed is not None:
        assert all(isinstance(d.text, str) and d.text.strip() for d in parsed)


# --- results files -------------------------------------------------------------------------------------

ROW = st.fixed_dictionaries({"task": st.text(max_size=6), "sample_id": st.text(max_size=6),
                             "method": st.text(max_size=6), "config": st.text(max_size=6)}, optional={"x": LEAF})
ROW_LINE = ROW.map(lambda row: json.dumps(row, sort_keys=True).encode())
LINE = st.one_of(st.binary(max_size=40), ROW_LINE, JSON.map(lambda v: json.dumps(v).encode()),
                 st.sampled_from([DEEP_NESTING.encode(), b"1" * 5000, b'{"task": ', b"\xff\xfe", b"NaN"]))
FILE = st.lists(LINE, max_size=6).flatmap(
    lambda lines: st.sampled_from([b"\n", b"\r\n"]).map(lambda end: end.join(lines))
    | st.just(b"".join(line + b"\n" for line in lines))
)


@FAST
@given(line=LINE)
@example(line=DEEP_NESTING.encode())
@example(line=b"1" * 5000)
def test_a_results_line_is_a_row_or_a_reason(line: bytes) -> None:
    row = parse_row(line)
    assert isinstance(row, str) or all(isinstance(row[key], str) for key in ("task", "sample_id", "method", "config"))


@FAST
@given(data=FILE)
def test_a_results_file_is_read_or_refused_and_a_refused_file_is_untouched(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "results.jsonl"
        path.write_bytes(data)
        loaded = one_of_or_error(read_results, path)
        if loaded is not None:
            assert all(isinstance(row, dict) for row in loaded.rows)
        try:
            with ResultsFile(path) as results:
                assert all(isinstance(row["sample_id"], str) for row in results.rows)
        except SpanTraceError:
            assert path.read_bytes() == data  # refused: left byte for byte as it was


# --- saved traces --------------------------------------------------------------------------------------


def _valid_result() -> dict[str, Any]:
    tokens = ["<|im_start|>", "user", "\n", "Tom", " has", " 3", ".", "<|im_end|>", "So", " 7", "."]
    n, rng = len(tokens), np.random.default_rng(0)
    scores = np.where(np.arange(n) < 8, rng.random(n), 0).astype(np.float32)
    return TraceResult(tokens=tokens, token_ids=list(range(n)), prompt_length=8, span=(8, 11), method="flashtrace",
                       scores=scores, hop_scores=[scores, scores / 2], rho=[0.5, 0.25], recursive_span=(8, 11),
                       timings={"trace_s": 0.1}, info={"model": "m", "notes": []}).to_dict()


VALID = _valid_result()
_FIELDS = sorted(VALID) + ["rows", "row_positions"]
_LAYOUT_FIELDS = sorted(VALID["layout"])


def _replaced(key: str, value: Any) -> dict[str, Any]:
    return {**VALID, key: value}


def _replaced_in_layout(key: str, value: Any) -> dict[str, Any]:
    return {**VALID, "layout": {**VALID["layout"], key: value}}


def _replaced_in_segment(key: str, value: Any) -> dict[str, Any]:
    segment = {"kind": "message", "name": "user #0", "chars": [0, 4], "tokens": [0, 3], "role": "user", "index": 0,
               "message": 0}
    return {**VALID, "layout": {**VALID["layout"], "segments": [{**segment, key: value}]}}


SAVED = st.one_of(
    JSON,
    st.builds(_replaced, st.sampled_from(_FIELDS), JSON),
    st.builds(_replaced, st.sampled_from(["scores", "rho", "span", "token_ids"]), st.lists(_SCALARS, max_size=12)),
    st.builds(_replaced_in_layout, st.sampled_from(_LAYOUT_FIELDS), JSON),
    st.builds(_replaced_in_segment, st.sampled_from(["kind", "name", "chars", "tokens", "role", "index", "message"]),
              LEAF),
)


@FAST
@given(data=SAVED)
@example(data=_replaced("scores", [10**400] * len(VALID["tokens"])))  # an integer too large for a float
@example(data=_replaced("timings", {"trace_s": 10**400}))
@example(data=_replaced("span", [8, 10**400]))
def test_a_saved_trace_is_loaded_or_refused_in_one_line(data: Any) -> None:
    result = one_of_or_error(TraceResult.from_dict, data)
    if result is not None:  # what is accepted is usable: strict JSON that loads back the same, and its views
        again = TraceResult.from_json(result.to_json())
        assert again.to_dict() == result.to_dict()
        result.top(3)
        result.by("sentence")


@FAST
@given(text=JSON.map(json.dumps) | st.text(max_size=40))
@example(text=DEEP_NESTING)
@example(text="1" * 5000)
def test_a_saved_trace_file_is_loaded_or_refused_in_one_line(text: str) -> None:
    one_of_or_error(TraceResult.from_json, text)


def test_the_valid_result_these_tests_start_from_loads() -> None:
    # the mutations above start from a result that loads, so each refusal is due to the field replaced
    assert TraceResult.from_dict(VALID).span == (8, 11)
    with pytest.raises(SpanTraceError):
        TraceResult.from_dict(_replaced("scores", [1.0]))
