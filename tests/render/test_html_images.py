"""The HTML report with an image, in headless Chromium: the picture loads under the report's policy (only
``data:`` images besides inline styles), the heat cells lie over it, each with its score on hover. The screenshot goes
to the test's temporary folder; ``SPANTRACE_SCREENSHOT_VISION=docs/vision.png`` saves it there too, to refresh
docs/vision.md's."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from spantrace import TraceResult
from spantrace.inputs.images import preview
from spantrace.text.layout import ImageGrid, Segment, build_layout

SCREENSHOT_ENV_VAR = "SPANTRACE_SCREENSHOT_VISION"
ROWS, COLS = 4, 6


def circle_picture() -> Image.Image:
    """A red disc in the upper right of a blue-grey picture, 300 × 200 pixels."""
    image = Image.new("RGB", (300, 200), (90, 110, 140))
    ImageDraw.Draw(image).ellipse((190, 20, 270, 100), fill=(220, 40, 40))
    return image


def circle_result() -> TraceResult:
    """user: <image 4×6> "What is red?" — the cells over the disc score highest; answer "A disc."."""
    pieces = ["<|im_start|>", "user", "\n"] + ["<img>"] * (ROWS * COLS) + ["What", " is", " red", "?", "<|im_end|>",
                                                                         "\n", "<|im_start|>", "assistant", "\n",
                                                                         "A", " disc", "."]
    special = [p.startswith("<") for p in pieces]
    text, offsets = "", []
    for piece in pieces:
        offsets.append((len(text), len(text) + len(piece)))
        text += piece
    first, last = 3, 3 + ROWS * COLS
    grid = ImageGrid(rows=ROWS, cols=COLS, size=(300, 200), input_size=(300, 200), cell=(50, 50),
                     preview=preview(circle_picture()))
    segments = [
        Segment("message", "user #0", (offsets[first][0], offsets[last + 3][1]), role="user", index=0, message=0),
        Segment("image", "image 0 (300×200)", (offsets[first][0], offsets[last - 1][1]), index=0, message=0,
                image=grid),
        Segment("message", "assistant #1", (offsets[-3][0], offsets[-1][1]), role="assistant", index=1, message=1),
    ]
    layout = build_layout(text, offsets, segments, special, source="chat")
    n, prompt = len(pieces), len(pieces) - 3
    scores = np.zeros(n, dtype=np.float32)
    heat = np.full((ROWS, COLS), 0.02, dtype=np.float32)
    heat[0:2, 4:6] = [[0.6, 0.3], [0.9, 0.4]]  # the disc: columns 4–5 (x 200–300), rows 0–1 (y 0–100)
    scores[first:last] = heat.ravel()
    scores[last + 2] = 0.5  # " red"
    return TraceResult(tokens=pieces, token_ids=list(range(300, 300 + n)), prompt_length=prompt, span=(prompt, n),
                       method="flashtrace", scores=scores, hop_scores=[scores.copy()], rho=[1.0],
                       recursive_span=(prompt, n), layout=layout, info={"model": "synthetic"})


def test_the_image_loads_and_its_cells_carry_the_scores(browser, tmp_path: Path) -> None:
    result = circle_result()
    path = tmp_path / "report.html"
    result.to_html(path)
    refused: list[str] = []
    page = browser.new_context(offline=True, viewport={"width": 1100, "height": 900}).new_page()
    page.on("console", lambda message: refused.append(message.text) if "Content Security" in message.text else None)
    page.goto(path.as_uri())
    picture = page.locator("figure.picture img")
    assert picture.evaluate("e => e.complete && e.naturalWidth") == 256  # the preview, drawn: the policy let it in
    assert refused == []
    cells = page.locator("figure.picture .cells span")
    assert cells.count() == ROWS * COLS
    hottest = cells.nth(1 * COLS + 4)  # row 1, col 4: score 0.9, the largest
    assert hottest.get_attribute("title") == "image 0 (300×200) · row 1, col 4 · #13 · score 0.9"
    box, image_box = hottest.bounding_box(), picture.bounding_box()
    # the cell sits over the disc: x 200–250 and y 50–100 of the 300 × 200 picture
    assert abs((box["x"] - image_box["x"]) / image_box["width"] - 4 / COLS) < 0.01
    assert abs((box["y"] - image_box["y"]) / image_box["height"] - 1 / ROWS) < 0.01
    colour = hottest.evaluate("e => getComputedStyle(e).backgroundColor")
    cold = cells.nth(0).evaluate("e => getComputedStyle(e).backgroundColor")
    assert colour.startswith("rgba(") and colour != cold
    assert "image 0 (300×200)" in page.locator("aside.sources").inner_text()
    screenshot = tmp_path / "vision.png"
    page.locator("div.heatmaps").screenshot(path=str(screenshot))
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get(SCREENSHOT_ENV_VAR):  # asked for: e.g. SPANTRACE_SCREENSHOT_VISION=docs/vision.png
        Path(os.environ[SCREENSHOT_ENV_VAR]).write_bytes(screenshot.read_bytes())
