"""Fixtures every test directory shares, and the run's rules: where the model cache lives, and which skips CI allows.

- The built-in model's cache goes to a folder of this run (``SPANTRACE_CACHE_DIR``, set before the first test), never
  the user's ``~/.cache/spantrace``; it is built once per run, by ``builtin_first_load``, and shared by every test.
- Every skip is listed with its reason at the end of the run. Under CI (``CI`` set, as ``.ci/run`` does) a skip
  whose reason is not in ``ALLOWED_SKIPS`` fails the run, and the browser tests fail instead of skipping.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# Test helpers (tiny_models, reference) are imported as top-level modules.
sys.path.insert(0, str(Path(__file__).parent))

# The system Chromium (Debian's package, installed by scripts/test.sh), driven through Playwright;
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

# The skip reasons CI accepts (a reason is allowed when it starts with one of these): no GPU on the CI machine,
# and the read-only-folder check, which cannot work as root (root writes anyway); docs/testing.md says why.
NO_CUDA = "needs a CUDA device"
ROOT_ONLY = "documented root-only skip"
ALLOWED_SKIPS = (NO_CUDA, ROOT_ONLY)


def under_ci() -> bool:
    """Whether this run is CI's (``CI`` set to anything but empty, 0 or false), where skips are not allowed."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


# --- the model cache ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def spantrace_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An empty cache folder for this run, as ``SPANTRACE_CACHE_DIR`` (subprocesses inherit it); the old value
    comes back at the end. Nothing is built here: the first test that needs the built-in model builds it."""
    from spantrace.loading.builtin import CACHE_ENV_VAR

    cache = tmp_path_factory.mktemp("spantrace-cache")
    previous = os.environ.get(CACHE_ENV_VAR)
    os.environ[CACHE_ENV_VAR] = str(cache)
    yield cache
    if previous is None:
        os.environ.pop(CACHE_ENV_VAR, None)
    else:
        os.environ[CACHE_ENV_VAR] = previous


@dataclass(frozen=True)
class FirstLoad:
    """The built-in model as loaded into an empty cache folder: what came back, how long it took, the folder."""

    loaded: object  # spantrace.loading.hub.LoadedModel
    seconds: float
    cache: Path
    entry: Path


@pytest.fixture(scope="session")
def builtin_first_load(spantrace_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FirstLoad]:
    """The built-in model loaded once into an empty cache (slow: reads and dequantises the GGUF file).

    That cache is the run's own, so the one slow build serves every later test. If something loaded the model
    before this fixture ran (the run's cache is already finished), the first load goes to a fresh folder instead.
    """
    from spantrace.loading import builtin
    from spantrace.loading.hub import clear_memo, load_hf

    cache = spantrace_cache_dir
    with pytest.MonkeyPatch.context() as patch:
        if builtin.is_complete(builtin.cache_entry()):
            cache = tmp_path_factory.mktemp("spantrace-first-load")
            patch.setenv(builtin.CACHE_ENV_VAR, str(cache))
        clear_memo()
        start = time.perf_counter()
        loaded = load_hf()
        seconds = time.perf_counter() - start
        entry = builtin.cache_entry()
    if cache != spantrace_cache_dir:
        clear_memo()  # that model was read from the other folder; later loads read the run's cache
    yield FirstLoad(loaded, seconds, cache, entry)
    clear_memo()


@pytest.fixture(scope="session")
def tokenizer(builtin_first_load: FirstLoad):
    """The built-in model's tokenizer, read from the run's cache (its own object, not the loaded model's)."""
    from transformers import AutoTokenizer

    from spantrace.loading import builtin

    return AutoTokenizer.from_pretrained(builtin.cache_entry())


# --- the browser -------------------------------------------------------------------------------------------


def skip_or_fail(reason: str) -> None:
    """Skip with ``reason``, or fail under CI, where every test must run."""
    if under_ci():
        pytest.fail(f"CI must run this test: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium for the browser tests (skipped when Chromium or Playwright is missing; failed under CI)."""
    if not CHROMIUM.exists():
        skip_or_fail(f"no Chromium at {CHROMIUM}: run scripts/test.sh (it installs it) or apt-get install chromium")
    try:
        from playwright import sync_api
    except ImportError:
        skip_or_fail("playwright is not installed: pip install -e .[test]")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


# --- the skip summary --------------------------------------------------------------------------------------

SKIPS: Counter[str] = Counter()  # skip reason -> how many tests (or modules) it skipped


def skip_reason(report: pytest.CollectReport | pytest.TestReport) -> str:
    """The reason a skipped report gives (its ``longrepr`` is ``(path, line, "Skipped: reason")``)."""
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return text.removeprefix("Skipped: ")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        SKIPS[skip_reason(report)] += 1


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.skipped:  # a whole module skipped while collecting
        SKIPS[skip_reason(report)] += 1


def disallowed_skips() -> list[str]:
    """The skip reasons of this run that CI does not accept."""
    return [reason for reason in SKIPS if not reason.startswith(ALLOWED_SKIPS)]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if under_ci() and disallowed_skips() and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED  # a skip CI does not allow fails the run


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if not SKIPS:
        return
    terminalreporter.section("skip reasons")
    for reason, count in SKIPS.most_common():
        allowed = "allowed" if reason.startswith(ALLOWED_SKIPS) else "NOT allowed in CI"
        terminalreporter.write_line(f"{count:4d} × {reason}  [{allowed}]")
    if under_ci() and disallowed_skips():
        terminalreporter.write_line(
            f"error: CI allows only the skips starting with {' or '.join(map(repr, ALLOWED_SKIPS))}; "
            "make the tests above run (see docs/testing.md)",
            red=True,
        )
