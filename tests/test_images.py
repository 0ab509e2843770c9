"""Images as sources on a hand-made result (no model): the layout's image segments, ``by("image")``,
``image_map``, ``to_pandas`` and the JSON round trip, with the checks a malformed image layout meets."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spantrace import TraceResult
from spantrace.errors import GroupingError, ResultFormatError
from spantrace.text.layout import ImageGrid, Segment, build_layout

PIXEL = "data:image/png;base64,iVBORw0KGgo="  # a preview only has to look like a PNG data URI here


def image_result() -> TraceResult:
    """user: <image 2×3> "Count the dots." <image 1×2> / assistant: "Four." — scores 1..N on the prompt."""
    pieces: list[tuple[str, bool]] = [("<|im_start|>", True), ("user", False), ("\n", False)]
    pieces += [("<img>", True)] * 6 + [("Count", False), (" the", False), (" dots", False), (".", False)]
    pieces += [("<img>", True)] * 2 + [("<|im_end|>", True), ("\n", False), ("<|im_start|>", True),
                                       ("assistant", False), ("\n", False), ("Four", False), (".", False)]
    text, offsets = "", []
    for piece, _ in pieces:
        offsets.append((len(text), len(text) + len(piece)))
        text += piece
    first = offsets[3][0]
    user = Segment("message", "user #0", (first, offsets[14][1]), role="user", index=0, message=0)
    grid_a = ImageGrid(rows=2, cols=3, size=(90, 60), input_size=(84, 56), cell=(28, 28), preview=PIXEL)
    grid_b = ImageGrid(rows=1, cols=2, size=(40, 20), input_size=(56, 28), cell=(28, 28))
    image_a = Segment("image", "image 0 (90×60)", (offsets[3][0], offsets[8][1]), index=0, message=0, image=grid_a)
    image_b = Segment("image", "image 1 (40×20)", (offsets[13][0], offsets[14][1]), index=1, message=0, image=grid_b)
    answer = Segment("message", "assistant #1", (offsets[20][0], offsets[21][1]), role="assistant", index=1, message=1)
    layout = build_layout(text, offsets, [user, image_a, image_b, answer], [s for _, s in pieces], source="chat")
    n, prompt = len(pieces), 20
    scores = np.where(np.arange(n) < prompt, np.arange(1, n + 1), 0).astype(np.float32)
    return TraceResult(
        tokens=[p for p, _ in pieces], token_ids=list(range(200, 200 + n)), prompt_length=prompt, span=(20, 22),
        method="flashtrace", scores=scores, hop_scores=[scores.copy()], rho=[1.0],
        recursive_span=(20, 22),
        layout=layout,
    )


def test_image_tokens_are_sources_not_template() -> None:
    result = image_result()
    template = result.template_mask
    assert not template[3:9].any() and not template[13:15].any()  # the image token is special, but a source
    assert template[0] and template[15]  # the other special tokens stay template
    assert [s.tokens for s in result.layout.of_kind("image")] == [(3, 9), (13, 15)]
    assert "image" in result.groupings()


def test_by_image_one_row_per_image_with_score_and_share() -> None:
    result = image_result()
    table = result.by("image")
    assert [row.name for row in table] == ["image 0 (90×60)", "image 1 (40×20)"]  # 4 + … + 9 > 14 + 15
    assert table[0].tokens == (3, 9) and table[0].score == pytest.approx(39)
    assert table[1].tokens == (13, 15) and table[1].score == pytest.approx(14 + 15)
    assert table[0].share == pytest.approx(39 / table.total)


def test_image_map_is_row_major_and_sums_to_the_image_score() -> None:
    result = image_result()
    grid = result.image_map(0)
    np.testing.assert_array_equal(grid, [[4, 5, 6], [7, 8, 9]])
    assert grid.sum() == pytest.approx(next(r for r in result.by("image") if r.tokens == (3, 9)).score)
    np.testing.assert_array_equal(result.image_map(1), [[14, 15]])
    with pytest.raises(GroupingError, match=r"2 image\(s\), 0..1"):
        result.image_map(2)


def test_text_groupings_leave_the_image_tokens_out() -> None:
    words = image_result().by("word")
    images = set(range(3, 9)) | set(range(13, 15))
    assert all(not set(row.positions) & images for row in words)
    assert {row.name for row in words} >= {"Count", "dots"}


def test_no_image_is_a_one_line_error() -> None:
    result = image_result()
    plain = TraceResult(**{**result.__dict__, "layout": None})
    with pytest.raises(GroupingError, match="no image"):
        plain.by("image")
    with pytest.raises(GroupingError, match="has no images"):
        plain.image_map(0)


def test_token_records_give_each_image_token_its_cell() -> None:
    records = image_result().token_records()  # the rows of to_pandas
    assert [r["image_row"] for r in records[3:9]] == [0, 0, 0, 1, 1, 1]
    assert [r["image_col"] for r in records[3:9]] == [0, 1, 2, 0, 1, 2]
    assert [r["image"] for r in records[13:15]] == [1, 1]
    assert records[9]["image"] is None and records[9]["image_row"] is None


def test_json_round_trip_keeps_the_grid_and_sizes() -> None:
    result = image_result()
    back = TraceResult.from_json(result.to_json())
    assert back.layout == result.layout
    assert back.layout.of_kind("image")[0].image.preview == PIXEL
    np.testing.assert_array_equal(back.image_map(0), result.image_map(0))


def _tampered(change) -> str:
    data = json.loads(image_result().to_json())
    change(next(s for s in data["layout"]["segments"] if s["kind"] == "image")["image"])
    return json.dumps(data)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda image: image.update(rows=3), "rows × cols matching its 6 tokens"),
        (lambda image: image.update(cols=0), "malformed"),
        (lambda image: image.update(size=[90]), "malformed"),
        (lambda image: image.update(preview="javascript:alert(1)"), "malformed"),
    ],
)
def test_a_malformed_image_layout_is_refused(change, message: str) -> None:
    with pytest.raises(ResultFormatError, match=message):
        TraceResult.from_json(_tampered(change))


def test_html_draws_each_image_with_its_cells() -> None:
    html = image_result().to_html()
    assert html.count('<figure class="picture">') == 2
    assert f'<img src="{PIXEL}"' in html  # image 0 has a preview; image 1 only its grid
    assert "img-src data:" in html and "script" not in html.lower()
    assert "grid-template-columns:repeat(3,1fr);grid-template-rows:repeat(2,1fr)" in html
    assert 'title="image 0 (90×60) · row 1, col 2 · #8 · score 9"' in html
    assert html.count("· row ") == 6 + 2


def test_a_report_without_images_keeps_its_policy(tmp_path) -> None:
    plain = TraceResult(**{**image_result().__dict__, "layout": None})
    html = plain.to_html()
    assert "default-src 'none'; style-src 'unsafe-inline'\"" in html and "<figure" not in html


def test_terminal_prints_a_block_grid_per_image() -> None:
    import io

    from rich.console import Console

    from spantrace.render.terminal import render_terminal

    stream = io.StringIO()
    render_terminal(image_result(), console=Console(file=stream, width=100, force_terminal=False, color_system=None))
    text = stream.getvalue()
    assert "image 0 (90×60) · 2×3 tokens" in text and "image 1 (40×20) · 1×2 tokens" in text
    # scores over the largest image score (15), in five shades: image 0 holds 4..9, image 1 14 and 15
    lines = [line.strip("│ ") for line in text.splitlines() if set(line) & set("░▒▓█")]
    assert lines[:3] == ["░░░░▒▒", "▒▒▒▒▓▓", "████"]
