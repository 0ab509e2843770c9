import sys
from pathlib import Path

import pytest

# Test helpers (tiny_models, reference) are imported as top-level modules.
sys.path.insert(0, str(Path(__file__).parent))

# The system Chromium (Debian's package, installed by scripts/test.sh as root), driven through Playwright;
# these flags keep it from reaching for the network, which is closed here.
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="session")
def tokenizer():
    """The built-in model's tokenizer (no model weights loaded when its cache is complete)."""
    from transformers import AutoTokenizer

    from spantrace.loading import builtin

    entry = builtin.cache_entry()
    if builtin.is_complete(entry):
        return AutoTokenizer.from_pretrained(entry)
    return builtin.load_builtin()[1]


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium for the browser tests (skipped when Chromium or Playwright is missing)."""
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium (scripts/test.sh does it as root)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[test])")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
