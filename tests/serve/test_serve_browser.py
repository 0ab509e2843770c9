"""The viewer page in a real headless Chromium (Playwright), against uvicorn serving a tiny model.

Same browser set-up as the HTML report's tests: the system Chromium at /usr/bin/chromium, skipped
when it or Playwright is missing (the ``browser`` fixture decides when a test runs; under CI it fails instead).
"""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from viewer_cases import LIMITS, OUTPUT, PROMPT

import spantrace
from spantrace import TraceResult
from spantrace.serve import Limits, create_app

# Locator assertions wait without evaluating a string in the page (the page's CSP forbids eval, which
# makes page.wait_for_function fail whenever its predicate is not already true on the first try).
try:
    from playwright.sync_api import expect
except ImportError:  # the tests that need it take the ``browser`` fixture, which skips (or fails under CI) then
    expect = None

XSS_PROMPT = "<img src=x onerror=alert(1)> what is this?"


@pytest.fixture(scope="module")
def server(tiny_model: spantrace.Model) -> Iterator[str]:
    """The viewer on a free local port, in a background thread; yields its base URL."""
    yield from serving(tiny_model, LIMITS)


@pytest.fixture(scope="module")
def roomy_server(tiny_model: spantrace.Model) -> Iterator[str]:
    """The same with room for docs/examples/chat.json (210 tokens)."""
    yield from serving(tiny_model, dataclasses.replace(LIMITS, max_tokens=400))


def serving(tiny_model: spantrace.Model, limits: Limits) -> Iterator[str]:
    import uvicorn
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(create_app(tiny_model, limits=limits), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def page(browser, server: str):
    yield from open_page(browser, server)


@pytest.fixture
def roomy_page(browser, roomy_server: str):
    yield from open_page(browser, roomy_server)


def open_page(browser, server: str):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(15_000)
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.dialogs = dialogs
    page.goto(server)
    page.wait_for_selector("#method option[value='flashtrace']", state="attached")
    yield page
    context.close()


def run_prompt(page, prompt: str, output: str) -> None:
    page.fill("#prompt", prompt)
    page.fill("#output", output)
    with page.expect_response(lambda r: r.url.endswith("/trace")):  # a run is traced at once ("answer")
        page.click("#run-button")
    page.wait_for_selector("#top li")


def shown(page, selector: str) -> list[int]:
    return page.locator(selector).evaluate_all("els => els.map(e => Number(e.dataset.index))")


def test_select_a_span_by_mouse_switch_hops_and_export(page, tiny_model: spantrace.Model, tmp_path: Path) -> None:
    run_prompt(page, PROMPT, OUTPUT)
    run = tiny_model.run(PROMPT, output=OUTPUT, progress=False)
    generation = shown(page, "#generation-tokens .t")
    assert shown(page, "#prompt-tokens .t") == list(range(run.prompt_length))
    assert generation == list(range(run.prompt_length, run.num_tokens))
    # drag from the 3rd to the 6th generated token
    start, last = run.prompt_length + 2, run.prompt_length + 5
    first_box = page.locator(f"#generation-tokens .t[data-index='{start}']").bounding_box()
    last_box = page.locator(f"#generation-tokens .t[data-index='{last}']").bounding_box()
    with page.expect_response(lambda r: r.url.endswith("/trace")) as traced:
        page.mouse.move(first_box["x"] + 1, first_box["y"] + first_box["height"] / 2)
        page.mouse.down()
        page.mouse.move(last_box["x"] + last_box["width"] / 2, last_box["y"] + last_box["height"] / 2, steps=5)
        page.mouse.move(last_box["x"] + last_box["width"] - 1, last_box["y"] + last_box["height"] / 2)
        page.mouse.up()
    assert json.loads(traced.value.request.post_data)["span"] == [start, last + 1]
    expect(page.locator("#span")).to_have_value(f"{start}-{last + 1}")
    assert shown(page, ".t.in-span") == list(range(start, last + 1))
    # scores appear: the prompt is coloured, and the top list is the library's
    expected = run.trace((start, last + 1), hops=1)
    coloured = page.locator("#prompt-tokens .t").evaluate_all("els => els.filter(e => e.style.backgroundColor).length")
    assert coloured > 0
    top_tokens = page.locator("#top li span:first-child").all_text_contents()
    assert top_tokens == [json.dumps(t.token) for t in expected.top(10)]
    # one view per hop: switch to hop 1 (sinks dotted), then back with the keyboard
    tabs = page.locator("#views [role=tab]")
    assert tabs.all_text_contents()[0] == "Combined" and tabs.count() == 3
    assert "ρ₀" in tabs.nth(1).text_content() and "ρ₁" in tabs.nth(2).text_content()
    tabs.nth(2).click()
    assert tabs.nth(2).get_attribute("aria-selected") == "true" and "Hop 1" in page.text_content("#view-note")
    assert page.locator("#generation-tokens .t.sink").count() > 0
    page.keyboard.press("ArrowLeft")
    assert tabs.nth(1).get_attribute("aria-selected") == "true" and "Hop 0" in page.text_content("#view-note")
    # export the current trace as JSON and as the CLI's HTML report
    with page.expect_download() as download:
        page.click("#export-json")
    exported = TraceResult.from_json(Path(download.value.path()).read_text(encoding="utf-8"))
    assert exported.span == (start, last + 1) and exported.hops == 1
    with page.expect_download() as download:
        page.click("#export-html")
    assert Path(download.value.path()).read_text(encoding="utf-8") == exported.to_html()


def test_keyboard_only_trace(page) -> None:
    run_prompt(page, PROMPT, OUTPUT)
    page.focus("#span")
    page.fill("#span", "output")
    page.select_option("#method", "ifr")
    page.fill("#hops", "0")
    with page.expect_response(lambda r: r.url.endswith("/trace")):
        page.press("#hops", "Enter")
    expect(page.locator("#views [role=tab]")).to_have_count(2)  # combined + hop 0
    assert page.text_content("#timings").startswith("ifr, 0 hop(s)")
    page.fill("#span", "no-such-span")
    page.press("#span", "Enter")
    page.wait_for_selector("#error:not([hidden])")
    assert "unknown span" in page.text_content("#error")


def test_markup_in_the_prompt_is_shown_as_text(page) -> None:
    run_prompt(page, XSS_PROMPT, "It is an image tag.")
    shown_text = page.text_content("#prompt-tokens")
    assert XSS_PROMPT in shown_text
    assert page.locator("#prompt-tokens img, main img").count() == 0
    page.wait_for_timeout(200)
    assert page.dialogs == []


def test_open_a_conversation_and_pick_a_source(page, tmp_path: Path) -> None:
    chat = tmp_path / "chat.json"
    chat.write_text(json.dumps({"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Lisbon?"},
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "weather", "arguments": {}}}]},
        {"role": "tool", "content": "Rain all day."},
        {"role": "assistant", "content": "It will rain."},
    ]}), encoding="utf-8")
    with page.expect_response(lambda r: r.url.endswith("/trace")):
        page.set_input_files("#open-conversation", str(chat))
    page.wait_for_selector("#sources li")
    assert page.is_checked("#conversation")
    traced = page.locator("#generation-tokens .t.in-span").all_text_contents()
    assert "".join(traced) == "It will rain."  # the given last turn, traced as message:-1
    names = page.locator("#sources .source-name").all_text_contents()
    assert sorted(names) == ["assistant #2", "system #0", "tool #3 (weather)", "user #1"]
    assert page.locator("#prompt-tokens .t.template").count() > 0  # role headers, <|im_start|>, … greyed
    page.locator("#sources button").first.click()
    assert page.locator(".tokens .t.in-source").count() > 0
    page.select_option("#by", "tool_result")
    expect(page.locator("#sources .source-name")).to_have_text(["tool #3 (weather)"])


# --- the page's state follows the run (issue 27, point 8) ----------------------------------------------

SECOND_PROMPT = "The sky is blue. Grass is green. Snow is white. What colour is the sky?"


def drag_over(page, start: int, last: int) -> None:
    """Select generated tokens ``start``…``last`` with the mouse (which traces them)."""
    first_box = page.locator(f"#generation-tokens .t[data-index='{start}']").bounding_box()
    last_box = page.locator(f"#generation-tokens .t[data-index='{last}']").bounding_box()
    page.mouse.move(first_box["x"] + 1, first_box["y"] + first_box["height"] / 2)
    page.mouse.down()
    page.mouse.move(last_box["x"] + last_box["width"] / 2, last_box["y"] + last_box["height"] / 2, steps=5)
    page.mouse.move(last_box["x"] + last_box["width"] - 1, last_box["y"] + last_box["height"] / 2)
    page.mouse.up()


def test_a_second_run_traces_its_own_answer(page, tiny_model: spantrace.Model, tmp_path: Path) -> None:
    # run 1: a given output, then a span dragged over it (token positions of run 1)
    run_prompt(page, PROMPT, OUTPUT)
    first = tiny_model.run(PROMPT, output=OUTPUT, progress=False)
    with page.expect_response(lambda r: r.url.endswith("/trace")):
        drag_over(page, first.prompt_length + 1, first.prompt_length + 3)
    expect(page.locator("#span")).to_have_value(f"{first.prompt_length + 1}-{first.prompt_length + 4}")
    # run 2: another prompt, the Output box emptied: the model generates, and "answer" of run 2 is traced,
    # not run 1's positions, and not run 1's output
    page.fill("#prompt", SECOND_PROMPT)
    page.fill("#output", "")
    page.fill("#max-new-tokens", "6")
    with page.expect_response(lambda r: r.url.endswith("/api/runs")) as made:
        with page.expect_response(lambda r: r.url.endswith("/trace")) as traced:
            page.click("#run-button")
    assert "output" not in json.loads(made.value.request.post_data)
    assert json.loads(traced.value.request.post_data)["span"] == "answer"
    payload = traced.value.json()
    page.wait_for_selector("#top li")
    second = tiny_model.run(SECOND_PROMPT, max_new_tokens=6, progress=False)
    expected = second.trace("answer", hops=1)
    assert shown(page, "#prompt-tokens .t") == list(range(second.prompt_length))
    assert shown(page, ".t.in-span") == list(range(*expected.span))
    expect(page.locator("#span")).to_have_value("answer")
    expect(page.locator("#span-resolved")).to_have_text(f"→ tokens {expected.span[0]}-{expected.span[1]}")
    assert page.input_value("#output") == ""  # the generated answer is not kept as the next run's output
    top_tokens = page.locator("#top li span:first-child").all_text_contents()
    assert top_tokens == [json.dumps(t.token) for t in expected.top(10)]
    names = page.locator("#sources .source-name").all_text_contents()
    assert names == [row.name for row in expected.by("sentence").top(len(names))] and len(names) >= 3
    # source bars: |score| over the largest |score|, so they differ as the scores do
    rows = payload["sources"]["rows"]
    widths = page.locator("#sources .source-bar").evaluate_all(
        "els => els.map(e => e.getBoundingClientRect().width / e.parentElement.getBoundingClientRect().width)")
    best = max(abs(row["score"]) for row in rows)
    assert widths == pytest.approx([abs(row["score"]) / best for row in rows], abs=0.01)
    assert max(widths) - min(widths) > 0.05
    page.screenshot(path=str(tmp_path / "second-run.png"), full_page=True)
    # the HTML report of this trace: each panel's "max" leaves out the greyed template tokens, as its colours do
    with page.expect_download() as download:
        page.click("#export-html")
    saved = tmp_path / "report.html"  # the download has no extension: named .html, Chromium renders it
    download.value.save_as(saved)
    report = page.context.new_page()
    report.goto(saved.as_uri())
    maxima = [float(text.split()[1]) for text in report.locator("summary .max").all_text_contents()]
    report.close()
    greyed = expected.template_mask
    wanted = [np.where(greyed, 0, expected.scores)[: expected.prompt_length].max()]
    wanted += [np.where(greyed, 0, hop).max() for hop in expected.hop_scores]
    assert maxima == pytest.approx([float(w) for w in wanted], rel=1e-3)
    # run 3: a span that does not resolve on the new run: the error shows, and no panel of run 2 stays
    page.fill("#span", "regex:no such words here")
    page.fill("#prompt", PROMPT)
    page.fill("#output", OUTPUT)
    with page.expect_response(lambda r: r.url.endswith("/trace")):
        page.click("#run-button")
    page.wait_for_selector("#error:not([hidden])")
    for panel in ("#top li", "#sources li", "#views [role=tab]"):
        assert page.locator(panel).count() == 0, panel
    assert shown(page, "#prompt-tokens .t") == list(range(first.prompt_length))
    page.screenshot(path=str(tmp_path / "failed-third-trace.png"), full_page=True)


def test_an_opened_conversation_resets_positions_and_output(roomy_page, tmp_path: Path) -> None:
    page = roomy_page
    run_prompt(page, PROMPT, OUTPUT)
    page.fill("#span", "3-5")  # positions typed for run 1
    with page.expect_response(lambda r: r.url.endswith("/trace")):
        page.press("#span", "Enter")
    chat = Path(__file__).resolve().parents[2] / "docs" / "examples" / "chat.json"
    with page.expect_response(lambda r: r.url.endswith("/trace")) as traced:
        page.set_input_files("#open-conversation", str(chat))
    sent = json.loads(traced.value.request.post_data)["span"]
    messages = json.loads(chat.read_text(encoding="utf-8"))
    messages = messages["messages"] if isinstance(messages, dict) else messages
    assert sent == ("message:-1" if messages[-1]["role"] == "assistant" else "answer")
    assert page.input_value("#output") == ""
    page.wait_for_selector("#sources li")


def test_an_opened_trace_then_a_run_traces_the_new_answer(page, tmp_path: Path) -> None:
    run_prompt(page, PROMPT, OUTPUT)
    with page.expect_download() as download:
        page.click("#export-json")
    saved = tmp_path / "trace.json"
    download.value.save_as(saved)
    span = TraceResult.load(saved).span
    with page.expect_response(lambda r: r.url.endswith("/api/results")):
        page.set_input_files("#open-result", str(saved))
    expect(page.locator("#span")).to_have_value(f"{span[0]}-{span[1]}")  # the saved trace's positions
    assert page.input_value("#output") == "" and page.is_disabled("#trace-button")
    page.fill("#output", "Seven.")
    with page.expect_response(lambda r: r.url.endswith("/trace")) as traced:
        page.click("#run-button")
    assert json.loads(traced.value.request.post_data)["span"] == "answer"  # not the saved trace's positions
    page.wait_for_selector("#top li")
    assert "".join(page.locator("#generation-tokens .t.in-span").all_text_contents()) == "Seven."


def test_an_opened_result_with_images_draws_them_with_a_score_per_cell(page, tmp_path: Path) -> None:
    from PIL import Image
    from test_images import image_result  # tests/test_images.py: two images, 2×3 and 1×2 tokens

    from spantrace.inputs.images import preview

    data = image_result().to_dict()
    first = next(s for s in data["layout"]["segments"] if s["kind"] == "image")
    first["image"]["preview"] = preview(Image.new("RGB", (90, 60), (30, 120, 200)))
    saved = tmp_path / "images.json"
    saved.write_text(json.dumps(data), encoding="utf-8")
    with page.expect_response(lambda r: r.url.endswith("/api/results")):
        page.set_input_files("#open-result", str(saved))
    expect(page.locator("#pictures figure.picture")).to_have_count(2)
    assert page.locator("#pictures img").evaluate("e => e.complete && e.naturalWidth") == 90  # the page's CSP let it in
    cells = page.locator("#pictures figure.picture").first.locator(".cells span")
    assert cells.count() == 6
    assert cells.nth(5).get_attribute("title") == "image 0 (90×60) · row 1, col 2 · #8 · score 9.000"
    hottest, coldest = (cells.nth(k).evaluate("e => getComputedStyle(e).opacity") for k in (5, 0))
    assert float(hottest) > float(coldest)


# --- an image picked in the run form (issue 26): a tiny LLaVA served ----------------------------------------

IMAGE_QUESTION, IMAGE_ANSWER = "What is in the picture?", "A grey square."


@pytest.fixture(scope="module")
def vlm_server(llava: spantrace.Model) -> Iterator[str]:
    yield from serving(llava, LIMITS)


@pytest.fixture
def vlm_page(browser, vlm_server: str):
    yield from open_page(browser, vlm_server)


def test_a_text_only_model_shows_no_image_picker(page) -> None:
    expect(page.locator("#model-line")).to_contain_text("tiny-llama")
    expect(page.locator("#image-picker")).to_be_hidden()


def test_an_image_picked_in_the_form_is_traced_and_drawn_with_its_cells(vlm_page, llava: spantrace.Model,
                                                                       tmp_path: Path) -> None:
    from PIL import Image, ImageDraw
    from test_vision_end_to_end import picture

    page = vlm_page
    expect(page.locator("#image-picker")).to_be_visible()
    expect(page.locator("#images-hint")).to_contain_text("up to 4")
    picture().save(tmp_path / "noise.png")
    disc = Image.new("RGB", (120, 80), (240, 240, 240))
    ImageDraw.Draw(disc).ellipse((30, 10, 90, 70), fill=(200, 30, 30))
    disc.save(tmp_path / "disc.jpg")
    page.set_input_files("#images", [str(tmp_path / "disc.jpg"), str(tmp_path / "noise.png")])
    expect(page.locator("#thumbs li")).to_have_count(2)
    assert page.locator("#thumbs img").evaluate_all("els => els.map(e => e.alt)") == ["disc.jpg", "noise.png"]
    # a file that is no image is left out, in one line
    (tmp_path / "notes.txt").write_text("not a picture", encoding="utf-8")
    page.set_input_files("#images", str(tmp_path / "notes.txt"))
    expect(page.locator("#error")).to_have_text("notes.txt is not a PNG, JPEG, WebP or GIF image")
    expect(page.locator("#thumbs li")).to_have_count(2)
    page.screenshot(path=str(tmp_path / "picked.png"))
    # the first one goes again, by keyboard: its remove button, then the focus moves to the next one
    page.focus("#thumbs li:first-child .remove")
    page.keyboard.press("Enter")
    expect(page.locator("#thumbs li")).to_have_count(1)
    assert page.evaluate("document.activeElement.getAttribute('aria-label')") == "Remove noise.png"
    page.fill("#prompt", IMAGE_QUESTION)
    page.fill("#output", IMAGE_ANSWER)
    with page.expect_response(lambda r: r.url.endswith("/api/runs")) as made:
        with page.expect_response(lambda r: r.url.endswith("/trace")):
            page.click("#run-button")
    sent = json.loads(made.value.request.post_data)
    assert sent["prompt"] == IMAGE_QUESTION and len(sent["images"]) == 1
    assert sent["images"][0].startswith("data:image/png;base64,")
    # the picture with its 4 × 4 token cells over it, each the library's score
    expected = llava.run(messages=[{"role": "user", "content": [{"type": "image", "image": picture()},
                                                                 {"type": "text", "text": IMAGE_QUESTION}]}],
                         output=IMAGE_ANSWER, progress=False).trace("answer")
    grid = expected.image_map(0)
    start = expected.by("image")[0].tokens[0]
    expect(page.locator("#pictures figure.picture")).to_have_count(1)
    assert page.locator("#pictures img").evaluate("e => e.complete && e.naturalWidth") > 0  # the CSP let it in
    cells = page.locator("#pictures .cells span")
    assert cells.count() == 16
    cells.nth(6).hover()  # row 1, col 2
    readout = page.locator("#pictures .cell-readout")
    expect(readout).to_contain_text(f"row 1, col 2 · #{start + 6} · score ")
    assert float(readout.text_content().split("score ")[1]) == pytest.approx(float(grid[1, 2]), rel=1e-2, abs=1e-3)
    hottest = int(np.argmax(grid.ravel()))
    colours = cells.evaluate_all("els => els.map(e => getComputedStyle(e).backgroundColor)")
    assert colours[hottest] != "rgba(0, 0, 0, 0)"  # the top cell is coloured
    # the keyboard reads the cells too: focus the grid, the arrows move on from the cell last read
    page.mouse.move(0, 0)
    page.focus("#pictures .cells")
    page.keyboard.press("ArrowRight")
    expect(readout).to_contain_text(f"row 1, col 3 · #{start + 7}")
    page.keyboard.press("ArrowRight")  # the last column: it stays
    page.keyboard.press("ArrowDown")
    expect(readout).to_contain_text(f"row 2, col 3 · #{start + 11}")
    cells.nth(hottest).hover()
    page.screenshot(path=str(tmp_path / "image-run.png"), full_page=True)
    # a new run without the image, whose trace fails: the old picture and its cells are gone all the same
    page.click("#thumbs .remove")
    expect(page.locator("#thumbs li")).to_have_count(0)
    page.fill("#span", "regex:no such words here")
    with page.expect_response(lambda r: r.url.endswith("/api/runs")) as made:
        with page.expect_response(lambda r: r.url.endswith("/trace")):
            page.click("#run-button")
    assert "images" not in json.loads(made.value.request.post_data)
    page.wait_for_selector("#error:not([hidden])")
    expect(page.locator("#pictures")).to_be_hidden()
    assert page.locator("#pictures figure").count() == 0
