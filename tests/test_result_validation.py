"""Saved results are checked on load (types, lengths, ranges, finiteness, version) and written as strict JSON;
the viewer's results endpoint uses the same check and answers JSON 422."""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from tiny_models import make_tiny_model

import spantrace
from spantrace import TraceResult
from spantrace.errors import ResultFormatError
from spantrace.serve import create_app


@pytest.fixture(scope="module")
def result(tokenizer) -> TraceResult:
    """A real trace with two hops on a tiny random llama (real tokenizer, no weights)."""
    model = spantrace.Model(make_tiny_model("llama", vocab_size=len(tokenizer)), tokenizer, "tiny-llama")
    run = model.run("Tom has 3 apples and buys 4 more.", output="He has 7 apples.", progress=False)
    return run.trace("output", method="ifr", hops=2)


def corrupted(result: TraceResult, change) -> dict[str, Any]:
    data = copy.deepcopy(result.to_dict())
    change(data)
    return data


def test_a_valid_result_round_trips_through_strict_json(result: TraceResult, tmp_path: Path) -> None:
    path = result.save(tmp_path / "r.json")

    def refuse(constant: str) -> None:
        raise AssertionError(f"bare {constant} in the saved JSON")

    json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)
    loaded = TraceResult.load(path)
    np.testing.assert_array_equal(loaded.scores, result.scores)
    assert loaded.span == result.span and loaded.hops == 2 and loaded.tokens == result.tokens
    assert loaded.rho == result.rho and loaded.timings == result.timings  # as written, not rounded
    assert loaded.layout == result.layout


def set_key(key: str, value: Any):
    def change(data: dict[str, Any]) -> None:
        data[key] = value

    return change


CASES = [
    ("scores", lambda d: d["scores"].pop()),
    ("scores", lambda d: d["scores"].__setitem__(0, math.nan)),
    ("scores", lambda d: d["scores"].__setitem__(1, math.inf)),
    ("scores", lambda d: d["scores"].__setitem__(1, 1e300)),  # beyond float32
    ("scores", lambda d: d["scores"].__setitem__(1, "0.5")),
    ("hop_scores[1]", lambda d: d["hop_scores"][1].append(0.0)),
    ("hop_scores[2]", lambda d: d["hop_scores"][2].__setitem__(0, math.nan)),
    ("hop_scores", set_key("hop_scores", [])),  # fewer than hop 0: negative hops
    ("rho", lambda d: d["rho"].pop()),
    ("rho", lambda d: d["rho"].__setitem__(0, math.nan)),
    ("tokens", lambda d: d["tokens"].__setitem__(0, 5)),
    ("tokens", set_key("tokens", "abc")),
    ("token_ids", lambda d: d["token_ids"].pop()),
    ("token_ids", lambda d: d["token_ids"].__setitem__(0, 1.5)),
    ("token_ids", lambda d: d["token_ids"].__setitem__(0, "7")),
    ("prompt_length", set_key("prompt_length", 0)),
    ("prompt_length", set_key("prompt_length", "x")),
    ("prompt_length", lambda d: d.__setitem__("prompt_length", len(d["tokens"]) + 1)),
    ("span", lambda d: d.__setitem__("span", [0, 2])),  # in the prompt
    ("span", lambda d: d.__setitem__("span", [d["prompt_length"], len(d["tokens"]) + 1])),
    ("span", set_key("span", [3])),
    ("recursive_span", set_key("recursive_span", [-1, 2])),
    ("method", set_key("method", 3)),
    ("timings", set_key("timings", "fast")),
    ("timings", set_key("timings", {"trace_s": math.nan})),
    ("info", set_key("info", [1, 2])),
    ("info", lambda d: d["info"].__setitem__("options", "x")),
    ("layout", lambda d: d["layout"]["offsets"].pop()),
    ("layout", lambda d: d["layout"].__setitem__("offsets", "x")),
    ("layout", lambda d: d["layout"]["offsets"].__setitem__(0, [0, 10**9])),
]


@pytest.mark.parametrize(("field_name", "change"), CASES)
def test_a_malformed_result_is_refused_naming_the_field(result: TraceResult, field_name: str, change) -> None:
    with pytest.raises(ResultFormatError, match=re.escape(f"'{field_name}'")) as raised:
        TraceResult.from_dict(corrupted(result, change))
    assert "\n" not in str(raised.value)


def test_version_and_format_are_checked(result: TraceResult) -> None:
    with pytest.raises(ResultFormatError, match="format version"):
        TraceResult.from_dict(corrupted(result, set_key("format_version", 99)))
    with pytest.raises(ResultFormatError, match="not a spantrace TraceResult"):
        TraceResult.from_dict([1, 2])  # type: ignore[arg-type]


def test_nan_in_a_file_is_refused_and_never_written(result: TraceResult, tmp_path: Path) -> None:
    text = result.to_json().replace(str(float(result.scores[0])), "NaN", 1)
    assert "NaN" in text
    with pytest.raises(ResultFormatError, match="'scores'"):
        TraceResult.from_json(text)
    broken = TraceResult(**{**result.__dict__, "scores": np.full_like(result.scores, np.nan)})
    with pytest.raises(ResultFormatError, match="non-finite"):
        broken.save(tmp_path / "nan.json")
    assert not (tmp_path / "nan.json").exists()


def test_a_binary_file_is_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "binary.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ResultFormatError, match="not a UTF-8"):
        TraceResult.load(path)


@pytest.mark.parametrize(
    ("field_name", "change"),
    [
        ("timings", set_key("timings", "fast")),
        ("tokens", lambda d: d["tokens"].__setitem__(0, 5)),
        ("scores", lambda d: d["scores"].pop()),
        ("info", set_key("info", 7)),
    ],
)
def test_the_viewer_refuses_a_malformed_result_with_json_422(result: TraceResult, field_name: str, change) -> None:
    client = TestClient(create_app(_Model()))  # type: ignore[arg-type]
    response = client.post("/api/results", json=corrupted(result, change))
    assert response.status_code == 422 and response.headers["content-type"] == "application/json"
    assert f"'{field_name}'" in response.json()["detail"]
    good = client.post("/api/results", json=result.to_dict())
    assert good.status_code == 200, good.text
    assert client.get(f"/api/traces/{good.json()['trace_id']}.html").status_code == 200


class _Adapter:
    name = "none"


class _Model:
    """The results endpoint needs no model: a stand-in with the names ``create_app`` reads (it asks whether the
    model takes images: no processor, so no)."""

    model_id = "no model"
    adapter = _Adapter()
    processor = None
