"""Make the README's screenshots of the viewer from a real trace on the built-in model.

    .venv/bin/python scripts/viewer_screenshot.py        # writes docs/viewer.png and docs/viewer-hops.png

It serves the viewer on a free local port, lets the built-in model answer the README's prompt in
the page, traces the answer (the default span) with one hop and saves the page in headless Chromium
(/usr/bin/chromium, as the browser tests use).
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import uvicorn
from playwright.sync_api import sync_playwright

import spantrace
from spantrace.serve import create_app

DOCS = Path(__file__).resolve().parents[1] / "docs"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
PROMPT = "Tom has 3 apples and buys 4 more. How many apples does he have now?"
MAX_NEW_TOKENS = 60


def serve_in_background(app) -> tuple[str, uvicorn.Server]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server


def main() -> None:
    url, server = serve_in_background(create_app(spantrace.load()))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 860}, device_scale_factor=1)
        page.set_default_timeout(120_000)
        page.goto(url)
        page.wait_for_selector("#method option[value='flashtrace']", state="attached")
        page.fill("#prompt", PROMPT)
        page.fill("#max-new-tokens", str(MAX_NEW_TOKENS))
        with page.expect_response(lambda response: response.url.endswith("/trace")):
            page.click("#run-button")
        page.wait_for_selector("#top li")
        page.mouse.move(0, 0)
        DOCS.mkdir(exist_ok=True)
        page.screenshot(path=str(DOCS / "viewer.png"), full_page=True)
        page.locator("#views [role=tab]").nth(2).click()  # hop 1: the reasoning's own sources
        page.mouse.move(0, 0)
        page.screenshot(path=str(DOCS / "viewer-hops.png"), full_page=True)
        browser.close()
    server.should_exit = True
    print(f"wrote {DOCS / 'viewer.png'} and {DOCS / 'viewer-hops.png'}")


if __name__ == "__main__":
    main()
