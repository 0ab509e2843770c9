"""The HTML report: escaped, self-contained, and checked in a real headless Chromium (Playwright).

The browser tests use the system Chromium through the ``browser`` fixture of tests/conftest.py (never
``playwright install``) and skip when it is missing (fail under CI). They also take the README screenshot into
the test's temporary folder; ``SPANTRACE_SCREENSHOT=docs/trace.png`` saves it there too, to refresh the README's.
"""

from __future__ import annotations

import os
import re
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest

import spantrace
from spantrace import TraceResult

# Where a test run also saves the README screenshot (only when asked: a test never rewrites a tracked file).
SCREENSHOT_ENV_VAR = "SPANTRACE_SCREENSHOT"

# The README example: the built-in model's own greedy answer, given as text so no generation is needed.
README_PROMPT = "Tom has 3 apples and buys 4 more. How many apples does he have?"
README_OUTPUT = "Tom has 3 apples and 4 more apples, so he has 3 + 4 = 7 apples.<|im_end|>"
HOSTILE_PROMPT = 'Hi <script>window.__pwned = 1</script> <img src=x onerror="window.__pwned = 2"> & bye'


# --- without a browser -----------------------------------------------------------------------------


def test_text_is_escaped_and_nothing_is_fetched(synthetic_result: TraceResult) -> None:
    html = synthetic_result.to_html()
    assert not re.search(r"<\s*script", html, re.IGNORECASE)  # the template has none; the prompt's is escaped
    assert "&lt;/" in html and "tiny &lt;b&gt;model&lt;/b&gt;" in html
    # nothing to load: the only links are to fragments of the page itself (the source panel)
    assert not re.search(r"src\s*=|href\s*=\s*\"(?!#)|https?://|@import|url\(", html)
    assert "Content-Security-Policy" in html


def test_panels_spans_and_tooltips(synthetic_result: TraceResult, tmp_path: Path) -> None:
    path = tmp_path / "sub" / "report.html"
    html = synthetic_result.to_html(path, top_k=4)
    assert path.read_text(encoding="utf-8") == html
    assert html.count('<details class="panel"') == synthetic_result.hops + 2  # combined + one per hop
    assert html.count('<span class="target">') == synthetic_result.hops + 2
    assert "ρ<sub>0</sub> = 0.500" in html and "ρ₁ = 0.250" in html
    assert html.count("<tr><td>") == 4
    assert 'title="#6 · id 106 · score 3"' in html
    for position in range(synthetic_result.num_tokens):
        assert html.count(f'data-pos="{position}"') == synthetic_result.hops + 2


def test_each_panel_max_leaves_out_template_tokens(synthetic_result: TraceResult) -> None:
    # a template token (<|im_start|> at 0) holds the largest score of every panel; its colour scale skips it,
    # so the "max" printed beside each panel must skip it too
    template = synthetic_result.template_mask
    assert template[0]
    synthetic_result.scores[0] = 50.0
    for hop_scores in synthetic_result.hop_scores:
        hop_scores[0] = 40.0
    maxima = [float(m) for m in re.findall(r'<span class="max">max ([^<]+)</span>', synthetic_result.to_html())]
    expected = [float(np.where(template, 0, synthetic_result.scores)[: synthetic_result.prompt_length].max())]
    expected += [float(np.where(template, 0, h).max()) for h in synthetic_result.hop_scores]
    assert maxima == pytest.approx(expected, rel=1e-3) and 50.0 not in maxima and 40.0 not in maxima
    # asked to include template tokens, the max counts them again
    included = re.findall(r'<span class="max">max ([^<]+)</span>', synthetic_result.to_html(include_template=True))
    assert float(included[0]) == 50.0


def test_an_unchecked_model_is_said_in_the_report(synthetic_result: TraceResult) -> None:
    assert "check=False" not in synthetic_result.to_html()
    synthetic_result.info["self_check"] = "skipped"  # what Run.trace writes for a model loaded with check=False
    assert "skipped (loaded with check=False)" in synthetic_result.to_html()


def test_template_ships_as_package_data() -> None:
    assert (files("spantrace.render") / "templates" / "report.html.j2").is_file()


# --- in Chromium -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> spantrace.Model:
    return spantrace.load()


@pytest.fixture(scope="module")
def readme_result(model: spantrace.Model) -> TraceResult:
    return model.run(README_PROMPT, output=README_OUTPUT, progress=False).trace("answer")


def open_report(browser, result: TraceResult, path: Path):
    """``result``'s report opened offline; fails if the page asks for anything but its own file."""
    result.to_html(path)
    page = browser.new_context(offline=True, viewport={"width": 1000, "height": 900}).new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(path.as_uri())
    assert requested == [path.as_uri()]
    return page


def prompt_tokens_shown(page, panel: int = 0) -> list[str]:
    selector = f"details.panel >> nth={panel}"
    return page.locator(selector).locator(".tokens.prompt .t").evaluate_all("els => els.map(e => e.textContent)")


def test_report_shows_every_prompt_token(browser, readme_result: TraceResult, tmp_path: Path) -> None:
    page = open_report(browser, readme_result, tmp_path / "trace.html")
    prompt = readme_result.tokens[: readme_result.prompt_length]
    for panel in range(readme_result.hops + 2):
        assert [text.replace("↵", "") for text in prompt_tokens_shown(page, panel)] == prompt
    assert page.locator("details.panel >> nth=0").locator(".tokens.prompt").is_visible()
    top = readme_result.top(1)[0]
    token = page.locator(f"details.panel >> nth=0 >> .t[data-pos='{top.position}']")
    token.hover()
    title = token.get_attribute("title")
    assert f"id {readme_result.token_ids[top.position]}" in title and f"score {top.score:.4g}" in title
    assert token.evaluate("e => getComputedStyle(e).backgroundColor") != "rgba(0, 0, 0, 0)"
    start, end = readme_result.span
    outlined = page.locator("details.panel >> nth=0 >> .target .t").evaluate_all("els => els.map(e => e.dataset.pos)")
    assert outlined == [str(p) for p in range(start, end)]
    # the README screenshot (the report body; timings and versions below it are left out, so reruns match)
    screenshot = tmp_path / "trace.png"
    page.mouse.move(0, 0)  # no hover outline in the picture
    page.locator(".report").screenshot(path=str(screenshot))
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get(SCREENSHOT_ENV_VAR):  # asked for: e.g. SPANTRACE_SCREENSHOT=docs/trace.png
        Path(os.environ[SCREENSHOT_ENV_VAR]).write_bytes(screenshot.read_bytes())
    page.close()


def test_script_in_the_prompt_is_text_and_never_runs(browser, model: spantrace.Model, tmp_path: Path) -> None:
    result = model.run(HOSTILE_PROMPT, output="Hello!", progress=False).trace("output", hops=0)
    page = open_report(browser, result, tmp_path / "hostile.html")
    assert page.evaluate("window.__pwned") is None
    assert page.locator("script").count() == 0 and page.locator("main img").count() == 0
    shown = page.locator("details.panel >> nth=0 >> .tokens.prompt").text_content()
    assert '<script>window.__pwned = 1</script> <img src=x onerror="window.__pwned = 2"> & bye' in shown
    assert [text.replace("↵", "") for text in prompt_tokens_shown(page)] == result.tokens[: result.prompt_length]
    page.close()


def test_source_panel_outlines_a_source_and_toggles_colours(browser, readme_result: TraceResult, tmp_path: Path):
    page = open_report(browser, readme_result, tmp_path / "sources.html")
    sources = readme_result.by("sentence")
    assert page.locator("aside.sources a.src").count() == len(sources)
    best = sources[0]
    token = page.locator(f"details.panel >> nth=0 >> .t[data-pos='{best.positions[0]}']")
    other = page.locator(f"details.panel >> nth=0 >> .t[data-pos='{sources[1].positions[0]}']")
    assert token.evaluate("e => getComputedStyle(e).outlineStyle") == "none"
    page.locator("aside.sources a.row-1").click()  # a link to #src-1: CSS :target outlines the source's tokens
    assert page.evaluate("location.hash") == "#src-1"
    assert token.evaluate("e => getComputedStyle(e).outlineStyle") == "solid"
    assert other.evaluate("e => getComputedStyle(e).outlineStyle") == "none"
    background = token.evaluate("e => getComputedStyle(e).backgroundColor")
    page.locator("label[for=view-sources]").click()  # every token now takes its source's colour
    pooled = [t.evaluate("e => getComputedStyle(e).backgroundColor") for t in page.locator(
        f"details.panel >> nth=0 >> .g{best.rank}").all()]
    assert len(set(pooled)) == 1 and pooled[0] != background
    template = page.locator("details.panel >> nth=0 >> .t.template >> nth=0")
    assert template.evaluate("e => getComputedStyle(e).backgroundColor") == "rgba(0, 0, 0, 0)"
    page.close()
