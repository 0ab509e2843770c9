"""TraceResult.by: pooled source scores over groupings, on hand-made results (no model)."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from spantrace import GroupingError, TraceResult
from spantrace.text.layout import Segment, build_layout

# A two-message context and a generated answer; "<s>", "|" and "\n" between messages are template.
PIECES = [
    ("<s>", "t"), ("user", "t"), ("\n", "t"),
    ("Tom", "u"), (" has", "u"), (" 3", "u"), (" apples", "u"), (".", "u"), (" He", "u"), (" eats", "u"),
    (" one", "u"), (".", "u"), ("\n\n", "u"), ("Then", "u"), (" more", "u"), ("|", "t"),
    ("Docs", "d"), (" say", "d"), (" 7", "d"), ("|", "t"),
    ("So", "a"), (" 2", "a"),
]  # fmt: skip
PROMPT_LENGTH = 20


def make_result(scores: np.ndarray | None = None) -> TraceResult:
    tokens = [t for t, _ in PIECES]
    text = "".join(tokens)
    offsets, position = [], 0
    for token in tokens:
        offsets.append((position, position + len(token)))
        position += len(token)

    def chars(owner: str) -> tuple[int, int]:
        mine = [offsets[i] for i, (_, o) in enumerate(PIECES) if o == owner]
        return mine[0][0], mine[-1][1]

    segments = [
        Segment("message", "user #0", chars("u"), role="user", index=0, message=0),
        Segment("message", "tool #1 (search)", chars("d"), role="tool", index=1, message=1),
        Segment("message", "assistant #2", chars("a"), role="assistant", index=2, message=2),
    ]
    special = [t == "<s>" for t in tokens]
    layout = build_layout(text, offsets, segments, special, source="chat")
    n = len(tokens)
    if scores is None:
        scores = np.linspace(1.0, 2.0, n).astype(np.float32)
        scores[0] = 10.0  # the template's BOS would lead a token ranking
    scores = scores * (np.arange(n) < PROMPT_LENGTH)
    hop0 = np.full(n, 0.5, dtype=np.float32)
    return TraceResult(
        tokens=tokens, token_ids=list(range(n)), prompt_length=PROMPT_LENGTH, span=(20, 22), method="flashtrace",
        scores=scores.astype(np.float32), hop_scores=[hop0, hop0 * 2], rho=[0.5, 0.1], recursive_span=(20, 22),
        layout=layout,
    )  # fmt: skip


@pytest.fixture
def result() -> TraceResult:
    return make_result()


def test_template_tokens_are_marked_and_left_out_of_top(result: TraceResult) -> None:
    template = [t for t, m in zip(result.tokens, result.template_mask, strict=True) if m]
    assert template == ["<s>", "user", "\n", "|", "|"]
    assert result.top(1)[0].token != "<s>"
    assert result.top(1, include_template=True)[0].token == "<s>"
    assert result.template_score == pytest.approx(float(result.scores[[0, 1, 2, 15, 19]].sum()))
    assert 0 < result.template_share < 1


@pytest.mark.parametrize("grouping", ["token", "word", "sentence", "line", "paragraph", "message", "tool_result"])
def test_pooled_scores_add_up(result: TraceResult, grouping: str) -> None:
    table = result.by(grouping)
    considered = result.scores[:PROMPT_LENGTH][~result.template_mask[:PROMPT_LENGTH]]
    assert sum(row.score for row in table) + table.outside_score == pytest.approx(float(considered.sum()))
    assert table.template_score == pytest.approx(result.template_score)
    assert [row.rank for row in table] == list(range(1, len(table) + 1))
    assert all(a.score >= b.score for a, b in zip(table, table[1:], strict=False))
    positions = [p for row in table for p in row.positions]
    assert len(positions) == len(set(positions))  # every token in at most one group
    assert all(p < PROMPT_LENGTH and not result.template_mask[p] for p in positions)
    with_template = result.by(grouping, include_template=True)
    assert with_template.total >= table.total


def test_groupings_split_the_text_where_expected(result: TraceResult) -> None:
    names = {row.name for row in result.by("sentence")}
    assert names == {"Tom has 3 apples.", "He eats one.", "Then more", "Docs say 7"}
    assert {row.name for row in result.by("paragraph")} == {"Tom has 3 apples. He eats one.", "Then more",
                                                             "Docs say 7"}
    assert {row.name for row in result.by("message")} == {"user #0", "tool #1 (search)"}  # not the answer
    tool = result.by("tool_result")
    assert [row.name for row in tool] == ["tool #1 (search)"] and tool[0].tokens == (16, 19)
    assert tool[0].hop_scores == pytest.approx((1.5, 3.0))
    words = result.by("word")
    assert "apples" in {row.name for row in words} and "." in {row.name for row in words}


def test_shares_and_top(result: TraceResult) -> None:
    table = result.by("message")
    assert sum(row.share for row in table) == pytest.approx(1.0)
    assert len(table.top(1)) == 1 and table.top(1)[0] == table[0]
    assert "user #0" in str(table) and "<table>" in table._repr_html_()


def test_custom_groups_by_chars_and_tokens(result: TraceResult) -> None:
    text = result.layout.text
    start = text.index("Tom")
    table = result.by([{"name": "first", "chars": (start, start + 3)}, {"name": "docs", "tokens": (16, 19)}])
    assert {row.name: row.positions for row in table} == {"first": (3,), "docs": (16, 17, 18)}
    assert table.grouping == "custom"


@pytest.mark.parametrize(
    ("grouping", "message"),
    [
        ("document", "no document boundaries"),
        ("tool_call", "no tool call boundaries"),
        ("chapter", "unknown grouping 'chapter'"),
        ([{"name": "x"}], "either \"chars\""),
        ([{"name": "x", "chars": (5, 2)}], "must satisfy"),
        ([], "a grouping is a name"),
    ],
)
def test_bad_groupings_give_one_line(result: TraceResult, grouping, message: str) -> None:
    with pytest.raises(GroupingError, match=message) as error:
        result.by(grouping)
    assert "\n" not in str(error.value)


def test_groups_survive_json(result: TraceResult) -> None:
    loaded = TraceResult.from_json(result.to_json())
    assert loaded.layout == result.layout
    assert [(r.name, r.score) for r in loaded.by("message")] == [(r.name, r.score) for r in result.by("message")]


def test_old_json_without_layout_still_groups_by_text(result: TraceResult) -> None:
    data = result.to_dict()
    del data["layout"]
    loaded = TraceResult.from_dict(data)
    assert loaded.layout.source == "tokens" and "sentence" in loaded.groupings()
    assert loaded.by("token")[0].score == pytest.approx(max(float(s) for s in loaded.prompt_scores[1:]))
    with pytest.raises(GroupingError, match="traced from token ids"):
        loaded.by("message")


def test_to_pandas_when_installed(result: TraceResult, monkeypatch) -> None:
    made = {}

    class DataFrame:
        @staticmethod
        def from_records(records):
            made["records"] = records
            return records

    monkeypatch.setitem(sys.modules, "pandas", types.SimpleNamespace(DataFrame=DataFrame))
    rows = result.to_pandas()
    assert len(rows) == result.num_tokens
    assert rows[3]["token"] == "Tom" and rows[3]["message"] == 0
    assert rows[0]["is_template"] and not rows[3]["is_template"] and rows[16]["message"] == 1
    assert set(rows[0]) >= {"position", "token", "token_id", "score", "hop0", "hop1", "char_start", "document"}
    assert rows[21]["in_span"] and not rows[21]["is_prompt"]
    sources = result.by("message").to_pandas()
    assert sources[0]["name"] == "user #0" and "share" in sources[0]


def test_to_pandas_says_how_to_get_it(result: TraceResult, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas now fails
    with pytest.raises(ImportError, match="pip install pandas"):
        result.to_pandas()
    with pytest.raises(ImportError, match="pip install pandas"):
        result.by("message").to_pandas()


def test_notebook_view_is_the_report_in_a_frame(result: TraceResult) -> None:
    html = result._repr_html_()
    assert html.startswith("<iframe sandbox srcdoc=") and "&lt;!doctype html&gt;" in html.lower()
