"""The Rich terminal view: heat colours, rank marks, the span, the top-k table, ρ and timings."""

from __future__ import annotations

import io

from rich.console import Console

from spantrace import TraceResult
from spantrace.render.heat import heat_rgb, intensities
from spantrace.render.terminal import render_terminal


def rendered(result: TraceResult, *, color: bool, top_k: int = 3) -> str:
    stream = io.StringIO()
    console = Console(file=stream, width=100, force_terminal=color, color_system="truecolor" if color else None)
    render_terminal(result, top_k=top_k, console=console, extra_timings={"load_s": 1.5})
    return stream.getvalue()


def test_plain_view_reads_without_colour(synthetic_result: TraceResult) -> None:
    text = rendered(synthetic_result, color=False)
    assert "\x1b[" not in text
    assert "flashtrace" in text and "tiny <b>model</b>" in text
    assert "Tom has 3¹ apples" in text  # the top token carries its rank
    assert "So ⟦7.⟧<|im_end|>" in text  # the traced span, bracketed
    assert "top 3 prompt tokens" in text and "'3'" in text
    assert "ρ₀ = 0.500" in text and "ρ₁ = 0.250" in text
    assert "timings: load 1.50 s · capture 0.25 s · trace 0.50 s (hop 0 0.20 s, hop 1 0.30 s)" in text


def test_every_prompt_token_is_shown(synthetic_result: TraceResult) -> None:
    text = rendered(synthetic_result, color=False, top_k=1)
    flat = "".join(line.strip("│ ") for line in text.splitlines())
    for token in synthetic_result.tokens[: synthetic_result.prompt_length]:
        assert token.strip() in flat


def test_colour_view_paints_backgrounds(synthetic_result: TraceResult) -> None:
    text = rendered(synthetic_result, color=True)
    top = heat_rgb(1.0)
    assert f"48;2;{top[0]};{top[1]};{top[2]}" in text  # the top token's background, in true colour


def test_heat_scale() -> None:
    heat = intensities([0.0, 1.0, 2.0, 4.0])
    assert list(heat) == [0.0, 0.25, 0.5, 1.0]
    assert list(intensities([0.0, 0.0])) == [0.0, 0.0]
    assert heat_rgb(0.0) is None and heat_rgb(1.0) == (170, 0, 38)
    reds_fall = [heat_rgb(x)[2] for x in (0.1, 0.5, 0.9)]
    assert reds_fall == sorted(reds_fall, reverse=True)  # darker as the score grows


def test_show_prints_to_stdout(synthetic_result: TraceResult, capsys) -> None:
    synthetic_result.show(top_k=2)
    assert "top 2 prompt tokens" in capsys.readouterr().out


def test_a_result_loaded_with_check_false_says_so(synthetic_result: TraceResult) -> None:
    assert "self-check: skipped" not in rendered(synthetic_result, color=False)
    synthetic_result.info["self_check"] = "skipped"
    text = rendered(synthetic_result, color=False)
    assert "self-check: skipped (check=False): these scores were not verified against the model" in text
