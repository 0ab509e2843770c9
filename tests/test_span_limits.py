"""Bounded work: a regex span that backtracks without end is refused within its time limit (API and viewer,
which stays responsive); hops and integrated-gradients steps have one limit each; NumPy integers are taken
wherever ints are; ``by`` refuses infinite ranges with one line."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from tiny_models import make_tiny_model

import spantrace
from spantrace.errors import GroupingError, InputError, SpanError, SpanTraceError
from spantrace.methods.hops import MAX_HOPS
from spantrace.methods.integrated_gradients import MAX_STEPS, IntegratedGradients
from spantrace.serve import create_app
from spantrace.spans import REGEX_TIMEOUT_S, resolve_span

CATASTROPHIC = "regex:(a+)+$"
# (a+)+$ tries split after split of the a's before it fails at the "!": hours with the standard library's
# engine, many seconds (it grows with the cube of the length) with the regex package's
LONG_OUTPUT = "a" * 3000 + "!"
OUTPUT = "He has 7 apples."


@pytest.fixture(scope="module")
def model(tokenizer) -> spantrace.Model:
    tiny = make_tiny_model("llama", vocab_size=len(tokenizer), max_position_embeddings=1024)
    return spantrace.Model(tiny, tokenizer, "tiny-llama")


@pytest.fixture(scope="module")
def run(model: spantrace.Model) -> spantrace.Run:
    return model.run("Tom has 3 apples and buys 4 more.", output=OUTPUT, progress=False)


def test_a_catastrophic_regex_is_refused_within_its_limit(model: spantrace.Model) -> None:
    long_run = model.run("Say a lot of a.", output=LONG_OUTPUT, progress=False)
    started = time.monotonic()
    with pytest.raises(SpanError, match="did not finish within") as raised:
        long_run.trace(CATASTROPHIC)
    # bounded: without the limit this pattern runs for hours; the margin absorbs a loaded machine's trace time
    assert time.monotonic() - started < REGEX_TIMEOUT_S + 10
    assert "\n" not in str(raised.value)
    start, end = resolve_span(long_run, "regex:a+$|!")  # a fine pattern still works
    assert long_run.prompt_length <= start < end <= long_run.num_tokens


@pytest.fixture
def server(model: spantrace.Model) -> Iterator[str]:
    """The viewer on a free local port, served by uvicorn in a background thread."""
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(model), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_the_viewer_refuses_it_and_answers_meanwhile(server: str) -> None:
    with httpx.Client(base_url=server, timeout=30) as client:
        run_id = client.post("/api/runs", json={"prompt": "Say a lot of a.", "output": LONG_OUTPUT}).json()["run_id"]
        answers: dict[str, httpx.Response] = {}

        def bad_trace() -> None:
            answers["trace"] = client.post(f"/api/runs/{run_id}/trace", json={"span": CATASTROPHIC})

        started = time.monotonic()
        worker = threading.Thread(target=bad_trace)
        worker.start()
        waits = []  # how long each status request took while the trace (and its pattern) ran
        while worker.is_alive():
            asked = time.monotonic()
            assert client.get("/api/status").status_code == 200
            waits.append(time.monotonic() - asked)
            time.sleep(0.02)
        assert time.monotonic() - started < REGEX_TIMEOUT_S + 10
    assert len(waits) > 5 and max(waits) < REGEX_TIMEOUT_S / 2, f"the server stalled while the pattern ran: {waits}"
    assert answers["trace"].status_code == 422 and "did not finish within" in answers["trace"].json()["detail"]


def test_hops_are_bounded_and_numpy_integers_are_ints(run: spantrace.Run) -> None:
    with pytest.raises(SpanTraceError, match=f"hops must be a whole number 0..{MAX_HOPS}"):
        run.trace("output", method="attention-last", hops=MAX_HOPS + 1)
    for bad in (True, 1.0, "1", -1):
        with pytest.raises(SpanTraceError, match="hops"):
            run.trace("output", method="attention-last", hops=bad)
    with pytest.raises(SpanTraceError, match="chunk_size"):
        run.trace("output", method="attention-last", chunk_size=0)
    start, end = np.int64(run.prompt_length), np.int64(run.num_tokens)
    given = run.trace((start, end), method="attention-last", hops=np.int64(2), chunk_size=np.int32(4))
    plain = run.trace((int(start), int(end)), method="attention-last", hops=2, chunk_size=4)
    assert given.hops == 2 and type(given.span[0]) is int
    np.testing.assert_array_equal(given.scores, plain.scores)
    with pytest.raises(SpanError, match="whole numbers"):
        run.trace((float(start), float(end)), method="attention-last")


def test_integrated_gradients_steps_are_bounded() -> None:
    started = time.monotonic()
    for bad in (10**9, MAX_STEPS + 1, 0, 2.5, True):
        with pytest.raises(SpanTraceError, match=f"steps in 1..{MAX_STEPS}"):
            IntegratedGradients(steps=bad)
    assert time.monotonic() - started < 1
    assert IntegratedGradients(steps=np.int64(8)).steps == 8 and IntegratedGradients(steps=MAX_STEPS).steps == MAX_STEPS


def test_prompt_length_takes_numpy_integers(model: spantrace.Model, run: spantrace.Run) -> None:
    ids = list(run.token_ids)
    again = model.run(input_ids=ids, prompt_length=np.int64(run.prompt_length), progress=False)
    assert again.prompt_length == run.prompt_length and type(again.prompt_length) is int
    for bad in ("x", 2.0):
        with pytest.raises(InputError, match="prompt_length must be a whole number"):
            model.run(input_ids=ids, prompt_length=bad, progress=False)


def test_by_refuses_infinite_ranges(run: spantrace.Run) -> None:
    result = run.trace("output", method="attention-last", hops=0)
    for chars in ((0, float("inf")), (float("-inf"), 3), (0, float("nan"))):
        with pytest.raises(GroupingError, match="two whole numbers"):
            result.by([{"name": "x", "chars": chars}])
    with pytest.raises(GroupingError, match="must satisfy"):
        result.by([{"name": "x", "tokens": (0, 10**30)}])
