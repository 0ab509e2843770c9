"""The viewer's JSON API through FastAPI's test client, on a tiny random model with the real tokenizer."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner
from viewer_cases import LIMITS, OUTPUT, PROMPT

import spantrace
from spantrace import TraceResult
from spantrace.methods.registry import list_methods
from spantrace.serve import create_app
from spantrace.serve.store import LruStore, ModelQueue


@pytest.fixture
def client(tiny_model: spantrace.Model) -> TestClient:
    return TestClient(create_app(tiny_model, limits=LIMITS))


def create_run(client: TestClient, prompt: str = PROMPT, **body) -> dict:
    response = client.post("/api/runs", json={"prompt": prompt, "output": OUTPUT, **body})
    assert response.status_code == 200, response.text
    return response.json()


def assert_same_trace(payload: dict, expected: TraceResult) -> None:
    assert tuple(payload["span"]) == expected.span and payload["method"] == expected.method
    np.testing.assert_allclose(payload["scores"], expected.scores, rtol=1e-5, atol=1e-7)
    assert len(payload["hop_scores"]) == len(expected.hop_scores)
    for served, direct in zip(payload["hop_scores"], expected.hop_scores, strict=True):
        np.testing.assert_allclose(served, direct, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(payload["rho"], expected.rho, rtol=1e-5, atol=1e-7)


# --- happy paths -------------------------------------------------------------------------------------


def test_page_and_its_files_are_served_with_a_strict_policy(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/static/viewer.js"' in page.text and "http" not in page.text.replace("http-equiv", "")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    for name, kind in (("viewer.js", "javascript"), ("viewer.css", "text/css")):
        response = client.get(f"/static/{name}")
        assert response.status_code == 200 and kind in response.headers["content-type"]
    assert "innerHTML" not in client.get("/static/viewer.js").text  # text only ever goes in as textContent


def test_methods_info_and_status(client: TestClient) -> None:
    methods = client.get("/api/methods").json()
    assert [m["name"] for m in methods["methods"]] == list_methods() and methods["default"] == "flashtrace"
    assert all(m["description"] for m in methods["methods"])
    info = client.get("/api/info").json()
    assert info["model"] == "tiny-llama" and info["limits"]["max_tokens"] == LIMITS.max_tokens
    assert info["colours"]["stops"][0] == [0.0, [255, 255, 255]] and len(info["colours"]["stops"]) == 21
    assert client.get("/api/status").json() == {"busy": False, "job": None, "waiting": 0}


def test_run_and_trace_equal_the_library(client: TestClient, tiny_model: spantrace.Model) -> None:
    created = create_run(client)
    direct = tiny_model.run(PROMPT, output=OUTPUT, progress=False)
    assert created["tokens"] == direct.tokens and created["token_ids"] == direct.token_ids
    assert created["prompt_length"] == direct.prompt_length and created["num_tokens"] == direct.num_tokens
    assert created["text"] == direct.generated_text
    run_id, start = created["run_id"], created["prompt_length"]
    cases = (([start + 2, start + 6], "flashtrace", 2), ("answer", "ifr", 1), ("output", "rollout", 0))
    for span, method, hops in cases:
        response = client.post(f"/api/runs/{run_id}/trace", json={"span": span, "method": method, "hops": hops})
        assert response.status_code == 200, response.text
        payload = response.json()
        assert {"scores", "hop_scores", "rho", "timings", "trace_id"} <= payload.keys()
        assert payload["run_id"] == run_id and payload["hops"] == hops and "trace_s" in payload["timings"]
        expected = direct.trace(tuple(span) if isinstance(span, list) else span, method=method, hops=hops)
        assert_same_trace(payload, expected)
        assert [t["position"] for t in payload["top"]] == [t.position for t in expected.top(10)]
    assert client.get(f"/api/runs/{run_id}").json()["tokens"] == direct.tokens


def test_a_run_without_output_generates(client: TestClient) -> None:
    response = client.post("/api/runs", json={"prompt": PROMPT, "max_new_tokens": 5})
    assert response.status_code == 200, response.text
    created = response.json()
    assert created["num_tokens"] == created["prompt_length"] + 5  # the tiny model never says EOS
    assert created["text"] and created["timings"]["generate_s"] > 0
    trace = client.post(f"/api/runs/{created['run_id']}/trace", json={"span": "output"}).json()
    assert trace["span"] == [created["prompt_length"], created["num_tokens"]]


def test_delete_then_404(client: TestClient) -> None:
    run_id = create_run(client)["run_id"]
    assert client.delete(f"/api/runs/{run_id}").json() == {"deleted": run_id}
    for response in (
        client.get(f"/api/runs/{run_id}"),
        client.delete(f"/api/runs/{run_id}"),
        client.post(f"/api/runs/{run_id}/trace", json={"span": "output"}),
    ):
        assert response.status_code == 404 and "no run" in response.json()["detail"]


def test_runs_are_kept_least_recently_used_first(client: TestClient) -> None:
    first, second, third = (create_run(client, f"{PROMPT} ({i})")["run_id"] for i in range(3))
    assert client.get(f"/api/runs/{first}").status_code == 200  # now the most recently used
    fourth = create_run(client, f"{PROMPT} (4)")["run_id"]
    assert client.get(f"/api/runs/{second}").status_code == 404  # the least recently used went
    for kept in (first, third, fourth):
        assert client.get(f"/api/runs/{kept}").status_code == 200


def test_export_and_load_a_trace(client: TestClient) -> None:
    run_id = create_run(client)["run_id"]
    traced = client.post(f"/api/runs/{run_id}/trace", json={"span": "answer", "hops": 2}).json()
    exported = client.get(f"/api/traces/{traced['trace_id']}.json")
    assert exported.status_code == 200 and "attachment" in exported.headers["content-disposition"]
    result = TraceResult.from_dict(exported.json())
    np.testing.assert_array_equal(result.scores, np.asarray(traced["scores"], dtype=np.float32))
    html = client.get(f"/api/traces/{traced['trace_id']}.html")
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert html.text == result.to_html()  # the same report the CLI writes
    loaded = client.post("/api/results", json=exported.json())
    assert loaded.status_code == 200, loaded.text
    loaded = loaded.json()
    assert loaded["run_id"] is None and loaded["trace_id"] != traced["trace_id"]
    for key in ("tokens", "prompt_length", "span", "scores", "hop_scores", "rho", "top"):
        assert loaded[key] == traced[key], key
    assert client.get(f"/api/traces/{loaded['trace_id']}.json").json() == exported.json()


# --- errors ------------------------------------------------------------------------------------------


def trace_errors(prompt_length: int) -> list[tuple[dict, int, str]]:
    """(trace request body, status, words of the message) for every way to get a trace wrong."""
    return [
        ({"span": [0, 3]}, 422, "reaches into the prompt"),
        ({"span": [prompt_length + 3, prompt_length + 3]}, 422, "is empty"),
        ({"span": [prompt_length, 10_000]}, 422, "out of range"),
        ({"span": [1, 2, 3]}, 422, "span: give [start, end]"),
        ({"span": "no-such-span"}, 422, "unknown span"),
        ({"span": "regex:zebra"}, 422, "zebra"),
        ({"span": "x" * 5000}, 422, "span: give"),
        ({"span": "output", "method": "magic"}, 422, "unknown method 'magic'"),
        ({"span": "output", "hops": -1}, 422, "hops"),
        ({"span": "output", "hops": 99}, 422, "hops"),
        ({"span": "output", "recursive": "everything"}, 422, "recursive"),
        ({"span": "output", "colour": "red"}, 422, "colour"),
    ]


def test_every_bad_trace_is_a_clear_4xx(client: TestClient) -> None:
    created = create_run(client)
    for body, status, words in trace_errors(created["prompt_length"]):
        response = client.post(f"/api/runs/{created['run_id']}/trace", json=body)
        assert response.status_code == status, (body, response.text)
        assert words in response.json()["detail"], (body, response.json())


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"prompt": "   "}, 422, "the prompt is empty"),
        ({"output": "hi"}, 422, "give a prompt, or a conversation as messages"),
        ({"prompt": "hi", "output": ""}, 422, "the output is empty"),
        ({"prompt": "x" * 2_001}, 413, "at most 2000"),
        ({"prompt": "hi", "output": "y" * 2_001}, 413, "at most 2000"),
        ({"prompt": "apples " * 175, "output": "ok"}, 413, "at most 200 (--max-tokens)"),
        ({"prompt": "apples " * 160, "max_new_tokens": 16}, 413, "max_new_tokens"),
        ({"prompt": "hi", "max_new_tokens": 17}, 422, "max_new_tokens is at most 16"),
        ({"prompt": "hi", "max_new_tokens": 0}, 422, "max_new_tokens"),
        ({"prompt": ["not", "text"]}, 422, "prompt"),
    ],
)
def test_every_bad_run_is_a_clear_4xx(client: TestClient, body: dict, status: int, words: str) -> None:
    response = client.post("/api/runs", json=body)
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]


def test_oversized_and_malformed_bodies(client: TestClient) -> None:
    too_big = b'{"prompt": "' + b"x" * LIMITS.max_body_bytes + b'"}'
    response = client.post("/api/runs", content=too_big, headers={"content-type": "application/json"})
    assert response.status_code == 413 and "larger than" in response.json()["detail"]
    streamed = client.post("/api/runs", content=iter([too_big[:40_000], too_big[40_000:]]),
                           headers={"content-type": "application/json"})  # no Content-Length: counted as it comes
    assert streamed.status_code == 413 and "larger than" in streamed.json()["detail"]
    broken = client.post("/api/runs", content=b'{"prompt": ', headers={"content-type": "application/json"})
    assert broken.status_code == 422 and isinstance(broken.json()["detail"], str)
    # a file that is not JSON, opened as a saved trace: one line that says what is wrong and where
    for route in ("/api/results", "/api/runs"):
        garbled = client.post(route, content=b'{"tokens": nope}', headers={"content-type": "application/json"})
        assert garbled.status_code == 422
        assert garbled.json()["detail"] == ("the request body is not valid JSON (Expecting value at character 11); "
                                            "send one JSON object")
    for bad_result in ({"format": "something else"}, {**_result_dict(), "scores": [1.0]}):
        response = client.post("/api/results", json=bad_result)
        assert response.status_code == 422 and "TraceResult" in response.json()["detail"]
    assert client.get("/api/traces/nope.json").status_code == 404
    assert client.get("/api/runs/nope").json()["detail"].startswith("no run 'nope'")


def _result_dict() -> dict:
    n = 6
    return TraceResult(tokens=list("abcdef"), token_ids=list(range(n)), prompt_length=3, span=(4, 6), method="x",
                       scores=np.zeros(n, np.float32), hop_scores=[np.zeros(n, np.float32)], rho=[0.0],
                       recursive_span=(3, 6)).to_dict()


# --- one job at a time -------------------------------------------------------------------------------


def test_concurrent_requests_wait_and_all_get_the_right_answer(client: TestClient, tiny_model, monkeypatch) -> None:
    shared = create_run(client)
    on_model = {"now": 0, "most": 0}  # how many calls are inside the model at once
    guard = threading.Lock()

    def one_at_a_time(method):
        def counted(*args, **kwargs):
            with guard:
                on_model["now"] += 1
                on_model["most"] = max(on_model["most"], on_model["now"])
            try:
                time.sleep(0.01)  # widen the window an overlap would need
                return method(*args, **kwargs)
            finally:
                with guard:
                    on_model["now"] -= 1

        return counted

    for owner, name in ((spantrace.Model, "encode_prompt"), (spantrace.Model, "run"), (spantrace.Run, "trace")):
        monkeypatch.setattr(owner, name, one_at_a_time(getattr(owner, name)))
    start = shared["prompt_length"]
    runs = [(f"{PROMPT} Case {i}.", None) for i in range(2)]
    traces = [([start + 1, start + 5], "flashtrace", 2), ("answer", "ifr", 1), ("output", "attention-mean", 1),
              ([start, start + 3], "flashtrace", 0)]
    gate = threading.Barrier(len(runs) + len(traces))

    def make_run(prompt: str, _) -> tuple[str, dict]:
        gate.wait()
        created = create_run(client, prompt)
        traced = client.post(f"/api/runs/{created['run_id']}/trace", json={"span": "answer"})
        return prompt, traced.json()

    def trace(span, method: str, hops: int) -> dict:
        gate.wait()
        body = {"span": span, "method": method, "hops": hops}
        response = client.post(f"/api/runs/{shared['run_id']}/trace", json=body)
        assert response.status_code == 200, response.text
        return response.json()

    with ThreadPoolExecutor(max_workers=len(runs) + len(traces)) as pool:
        made = [pool.submit(make_run, *r) for r in runs]
        traced = [pool.submit(trace, *t) for t in traces]
        made, traced = [f.result(timeout=60) for f in made], [f.result(timeout=60) for f in traced]
    assert on_model["most"] == 1  # the requests waited for each other

    direct = tiny_model.run(PROMPT, output=OUTPUT, progress=False)
    for (span, method, hops), payload in zip(traces, traced, strict=True):
        assert_same_trace(payload, direct.trace(tuple(span) if isinstance(span, list) else span, method=method,
                                                hops=hops))
    for prompt, payload in made:
        assert_same_trace(payload, tiny_model.run(prompt, output=OUTPUT, progress=False).trace("answer"))
    assert client.get("/api/status").json()["busy"] is False


def test_the_queue_reports_the_job_and_who_waits(client: TestClient) -> None:
    queue: ModelQueue = client.app.state.queue
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with queue.job("trace", "tracing with flashtrace, 1 hop(s)"):
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(10)
    waiter = threading.Thread(target=lambda: client.post("/api/runs", json={"prompt": PROMPT, "output": OUTPUT}))
    waiter.start()
    deadline = time.monotonic() + 10
    while client.get("/api/status").json()["waiting"] < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    status = client.get("/api/status").json()  # answered at once although the model is busy
    assert status["busy"] and status["waiting"] == 1
    assert status["job"]["kind"] == "trace" and status["job"]["stage"].startswith("tracing")
    release.set()
    holder.join(10)
    waiter.join(30)
    assert client.get("/api/status").json() == {"busy": False, "job": None, "waiting": 0}


def test_lru_store() -> None:
    store: LruStore[str] = LruStore(2)
    a, b = store.add("a"), store.add("b")
    assert store.get(a) == "a"
    c = store.add("c")
    assert b not in store and a in store and c in store and len(store) == 2
    assert store.drop(a) and not store.drop(a)
    with pytest.raises(KeyError):
        store.get(a)


# --- the command -------------------------------------------------------------------------------------


def test_serve_command_binds_localhost_by_default(monkeypatch, tiny_model) -> None:
    import uvicorn

    from spantrace.cli import app
    from spantrace.cli import serve as serve_command

    calls: list[dict] = []
    monkeypatch.setattr(serve_command, "load", lambda *args, **kwargs: tiny_model)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append({"app": app, **kwargs}))
    result = CliRunner().invoke(app, ["serve", "--max-tokens", "300"])
    assert result.exit_code == 0, result.output
    assert calls[0]["host"] == "127.0.0.1" and calls[0]["port"] == 8000
    assert calls[0]["app"].state.limits.max_tokens == 300
    assert "http://127.0.0.1:8000/" in result.output and "warning" not in result.output
    result = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "--port", "9001"])
    assert result.exit_code == 0 and "warning: listening on 0.0.0.0" in result.output
    assert calls[1]["host"] == "0.0.0.0" and calls[1]["port"] == 9001
    result = CliRunner().invoke(app, ["serve", "--max-images", "2", "--max-image-mb", "0.5"])
    assert result.exit_code == 0, result.output
    assert calls[2]["app"].state.limits.max_images == 2
    assert calls[2]["app"].state.limits.max_image_bytes == 2**19


# --- conversations and sources -----------------------------------------------------------------------

CHAT = [
    {"role": "user", "content": "Weather in Lisbon?"},
    {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "weather", "arguments": {}}}]},
    {"role": "tool", "content": "Rain all day."},
    {"role": "assistant", "content": "It will rain."},
]


def test_a_conversation_run_has_sources(client: TestClient, tiny_model: spantrace.Model) -> None:
    response = client.post("/api/runs", json={"messages": CHAT})
    assert response.status_code == 200, response.text
    run_id = response.json()["run_id"]
    payload = client.post(f"/api/runs/{run_id}/trace", json={"span": "message:-1", "hops": 0, "by": "message"})
    assert payload.status_code == 200, payload.text
    payload = payload.json()
    expected = tiny_model.run(messages=CHAT, progress=False).trace("message:-1", hops=0)
    assert_same_trace(payload, expected)
    assert payload["template"] == expected.layout.template
    rows = payload["sources"]["rows"]
    assert [(r["name"], r["positions"]) for r in rows] == [(r.name, list(r.positions)) for r in expected.by("message")]
    assert "tool_result" in payload["sources"]["groupings"] and payload["sources"]["grouping"] == "message"
    regrouped = client.get(f"/api/traces/{payload['trace_id']}/sources", params={"by": "tool_result"}).json()
    assert [r["name"] for r in regrouped["rows"]] == ["tool #2 (weather)"]
    missing = client.get(f"/api/traces/{payload['trace_id']}/sources", params={"by": "document"})
    assert missing.status_code == 422 and "no document boundaries" in missing.json()["detail"]
    assert client.get(f"/api/traces/{payload['trace_id']}/sources", params={"by": "nope"}).status_code == 422


def test_bad_conversations_are_one_line_errors(client: TestClient) -> None:
    bad = client.post("/api/runs", json={"messages": [{"role": "robot", "content": "hi"}]})
    assert bad.status_code == 422 and "unknown role 'robot'" in bad.json()["detail"]
    nothing = client.post("/api/runs", json={"output": "x"})
    assert nothing.status_code == 422 and "give a prompt" in nothing.json()["detail"]
