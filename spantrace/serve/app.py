"""The viewer's web app: a JSON API over ``Model.run`` and ``Run.trace``, and the static page that uses it.

    app = create_app(spantrace.load())          # uvicorn.run(app) — or `spantrace serve`

Routes (every error is JSON ``{"detail": "..."}`` with a 4xx status; reference: docs/viewer.md):

    GET    /                                  the page
    GET    /api/info                          model, limits, colour ramp, span forms
    GET    /api/methods                       {"methods": [{"name", "description", "cost"}], "default"}
    GET    /api/status                        what the model is doing now, for the progress line
    POST   /api/runs                          {"prompt" | "messages", "images"?, "tools"?, "documents"?, "output"?,
                                               "chat"?, "max_new_tokens"?} → a run (images: data URIs only)
    GET    /api/runs/{run_id}                 the run again
    DELETE /api/runs/{run_id}                 drop it
    POST   /api/runs/{run_id}/trace           {"span", "method"?, "hops"?, "recursive"?, "by"?, ...} → a trace
                                              (with its template mask and its sources)
    GET    /api/traces/{trace_id}/sources?by=G  the trace's sources by another grouping
    POST   /api/results                       a saved TraceResult's JSON (the file's content) → a trace
    GET    /api/traces/{trace_id}.json|.html  download a trace as JSON or as the CLI's HTML report

A run keeps the residual stream of its one forward pass, so every trace of it is cheap; the server
keeps the ``Limits.max_runs`` most recently used runs. The model does one job at a time: requests
that arrive meanwhile wait in ``ModelQueue`` (``GET /api/status`` reports it).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import Body, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from ..api import Model, Run
from ..errors import InputError, SpanTraceError
from ..groups import GROUPINGS
from ..methods.hops import MAX_HOPS, RECURSIVE_SPANS
from ..methods.registry import describe_methods
from ..render.heat import DARK_FROM, VISIBLE_FROM, heat_rgb
from ..render.html import MAX_SOURCES_SHOWN, default_grouping
from ..render.picture import image_views
from ..result import TraceResult
from ..spans import SPAN_FORMS
from ..text.tokens import SPECIAL_TOKEN
from ..version import __version__
from .images import FORMATS, conversation_text, images_refusal, pictured
from .schemas import MAX_SPEC_CHARS, Limits, RunRequest, TraceRequest
from .store import LruStore, ModelQueue

STATIC = Path(str(files("spantrace.serve") / "static"))
DEFAULT_METHOD = "flashtrace"
DEFAULT_MAX_NEW_TOKENS = 256
# The page loads only its own files and talks only to this server; nothing inline runs.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True)
class StoredRun:
    run: Run
    text: str  # the generated text, decoded once
    timings: dict[str, float]


def create_app(model: Model, *, limits: Limits | None = None) -> FastAPI:
    """The viewer for ``model``: the page at ``/`` and the JSON API under ``/api``."""
    limits = limits or Limits()
    runs: LruStore[StoredRun] = LruStore(limits.max_runs)
    traces: LruStore[TraceResult] = LruStore(limits.max_traces)
    queue = ModelQueue()
    no_images = images_refusal(model)  # None when the model takes images

    app = FastAPI(title="spantrace viewer", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url="/api/openapi.json")  # the interactive docs would load scripts from a CDN
    app.state.limits, app.state.runs, app.state.traces, app.state.queue = limits, runs, traces, queue
    app.add_middleware(BodyLimit, max_bytes=limits.body_bytes(images=no_images is None))

    @app.middleware("http")
    async def _security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.exception_handler(SpanTraceError)
    async def _user_error(request: Request, error: SpanTraceError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _describe_validation(error)}, status_code=422)

    # --- the page and what it needs to know ----------------------------------------------------------

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return {
            "model": model.model_id,
            "architecture": model.adapter.name,
            "version": __version__,
            "limits": {
                "max_prompt_chars": limits.max_prompt_chars,
                "max_tokens": limits.max_tokens,
                "max_new_tokens": limits.max_new_tokens,
                "max_runs": limits.max_runs,
                "max_hops": MAX_HOPS,
                "max_images": limits.max_images,
                "max_image_bytes": limits.max_image_bytes,
                "max_image_pixels": limits.max_image_pixels,
            },
            # whether the run form shows its image picker; why not, in one line
            "images": {"accepted": no_images is None, "why_not": no_images,
                       "types": sorted({f"image/{kind}" for kind in FORMATS} - {"image/jpg"})},
            "span_forms": list(SPAN_FORMS),
            "recursive": list(RECURSIVE_SPANS),
            "colours": _colour_ramp(),
            "special_token_pattern": SPECIAL_TOKEN.pattern,  # shown dimmed, as in the HTML report
        }

    @app.get("/api/methods")
    def methods() -> dict[str, Any]:
        described = [{"name": m.name, "description": m.description, "cost": m.cost} for m in describe_methods()]
        return {"methods": described, "default": DEFAULT_METHOD}

    @app.get("/api/status")
    async def status() -> dict[str, Any]:  # async: answers at once even while every worker thread waits
        return queue.status()

    # --- runs ------------------------------------------------------------------------------------------

    @app.post("/api/runs")
    def create_run(request: RunRequest) -> dict[str, Any]:
        conversation = conversation_text(request.messages, request.tools, request.documents)  # images' data left out
        for name, text in (("prompt", request.prompt), ("output", request.output), ("conversation", conversation)):
            if text is not None and len(text) > limits.max_prompt_chars:
                raise HTTPException(413, f"the {name} has {len(text)} characters; this server takes at most "
                                         f"{limits.max_prompt_chars}")
        max_new_tokens = request.max_new_tokens or min(DEFAULT_MAX_NEW_TOKENS, limits.max_new_tokens)
        if request.prompt is None and request.messages is None:
            raise InputError("give a prompt, or a conversation as messages")
        prompt, messages = pictured(request, model, limits)  # images decoded here, before the model's queue
        timings: dict[str, float] = {}
        with queue.job("run", "reading the prompt") as job:
            prepared = model.prepare(prompt, messages=messages, tools=request.tools,
                                     documents=request.documents, output=request.output, chat=request.chat)
            prompt_tokens = len(prepared.ids)
            generating = prepared.output_ids is None  # no output given, and no assistant turn to trace as given
            if generating and max_new_tokens > limits.max_new_tokens:
                raise HTTPException(422, f"max_new_tokens is at most {limits.max_new_tokens} on this server; "
                                         f"got {max_new_tokens}")
            if generating:
                _check_length(prompt_tokens, max_new_tokens, limits, generating=True)
                job.stage = f"generating up to {max_new_tokens} tokens, then one forward pass"
            else:
                _check_length(prompt_tokens, len(prepared.output_ids), limits, generating=False)
                job.stage = f"one forward pass over {prompt_tokens + len(prepared.output_ids)} tokens"
            started = time.perf_counter()
            run = model.run(prepared=prepared, max_new_tokens=max_new_tokens, progress=False)
            if generating:  # the run's time less its forward pass
                timings["generate_s"] = time.perf_counter() - started - run.capture_seconds
            timings["capture_s"] = run.capture_seconds
            stored = StoredRun(run, run.generated_text, timings)
        return _run_payload(runs.add(stored), stored)

    @app.get("/api/runs/{run_id}")
    def get_run(run_id: str) -> dict[str, Any]:
        return _run_payload(run_id, _find(runs, run_id, "run"))

    @app.delete("/api/runs/{run_id}")
    def delete_run(run_id: str) -> dict[str, Any]:
        if not runs.drop(run_id):
            raise HTTPException(404, _missing("run", run_id))
        return {"deleted": run_id}

    # --- traces ----------------------------------------------------------------------------------------

    @app.post("/api/runs/{run_id}/trace")
    def trace(run_id: str, request: TraceRequest) -> dict[str, Any]:
        run = _find(runs, run_id, "run").run
        span = tuple(request.span) if isinstance(request.span, tuple) else request.span
        with queue.job("trace", f"tracing with {request.method}, {request.hops} hop(s)"):
            result = run.trace(
                span, method=request.method, hops=request.hops, recursive=request.recursive,
                stop_tokens=request.stop_tokens,
            )
        return _trace_payload(result, traces.add(result), run_id, request.top_k, request.by)

    @app.get("/api/traces/{trace_id}/sources")
    def sources(trace_id: str, by: Annotated[str, Query(pattern="^(" + "|".join(GROUPINGS) + ")$")]) -> dict:
        """A stored trace's sources by another grouping (no new trace: the scores are pooled again)."""
        return _sources_payload(_find(traces, trace_id, "trace"), by)

    @app.post("/api/results")
    def load_result(data: Annotated[dict[str, Any], Body()], top_k: int = 10) -> dict[str, Any]:
        result = TraceResult.from_dict(data)  # every field checked (result.check_result_data): 422 when not
        return _trace_payload(result, traces.add(result), None, max(1, min(top_k, 200)))

    @app.get("/api/traces/{trace_id}.json")
    def export_json(trace_id: str) -> JSONResponse:
        result = _find(traces, trace_id, "trace")
        return JSONResponse(result.to_dict(), headers=_attachment(f"spantrace-{trace_id}.json"))

    @app.get("/api/traces/{trace_id}.html")
    def export_html(trace_id: str) -> Response:
        result = _find(traces, trace_id, "trace")
        return Response(result.to_html(), media_type="text/html; charset=utf-8",
                        headers=_attachment(f"spantrace-{trace_id}.html"))

    return app


# --- helpers -------------------------------------------------------------------------------------------


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``max_bytes`` with 413, whether declared or streamed."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await JSONResponse({"detail": self._message()}, status_code=413)(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(413, self._message())  # FastAPI passes it on while it reads the body
            return message

        await self.app(scope, limited_receive, send)

    def _message(self) -> str:
        return f"the request body is larger than this server's limit of {self.max_bytes} bytes"


def _find(store: LruStore, item_id: str, what: str) -> Any:
    try:
        return store.get(item_id)
    except KeyError:
        raise HTTPException(404, _missing(what, item_id)) from None


def _missing(what: str, item_id: str) -> str:
    return (f"no {what} {item_id!r}: it was never made, was deleted, or was dropped to make room for newer ones "
            f"(the server keeps the most recent few); make it again")


def _check_length(prompt_tokens: int, generated_tokens: int, limits: Limits, *, generating: bool) -> None:
    total = prompt_tokens + generated_tokens
    if total > limits.max_tokens:
        what = "max_new_tokens" if generating else "output tokens"
        raise HTTPException(413, f"the run would have {total} tokens ({prompt_tokens} prompt + {generated_tokens} "
                                 f"{what}); this server takes at most {limits.max_tokens} (--max-tokens)")


def _run_payload(run_id: str, stored: StoredRun) -> dict[str, Any]:
    run = stored.run
    return {
        "run_id": run_id,
        "model": run.model.model_id,
        "tokens": list(run.tokens),
        "token_ids": list(run.token_ids),
        "prompt_length": run.prompt_length,
        "num_tokens": run.num_tokens,
        "text": stored.text,
        "timings": dict(stored.timings),
    }


def _sources_payload(result: TraceResult, by: str | None) -> dict[str, Any]:
    """The context's sources (``TraceResult.by``), each with its token positions, for the source panel."""
    grouping = by or default_grouping(result)
    table = result.by(grouping).top(MAX_SOURCES_SHOWN)
    return {
        "grouping": table.grouping,
        "groupings": result.groupings(),
        "rows": [
            {"rank": r.rank, "name": r.name, "kind": r.kind, "tokens": list(r.tokens), "positions": list(r.positions),
             "score": r.score, "share": r.share}
            for r in table
        ],
        "outside": table.outside_score / table.total if table.total > 0 else 0.0,
        "template_share": result.template_share,
    }


def _trace_payload(
    result: TraceResult, trace_id: str, run_id: str | None, top_k: int, by: str | None = None
) -> dict[str, Any]:
    data = result.to_dict()
    keys = ("tokens", "prompt_length", "span", "method", "scores", "hop_scores", "rho", "recursive_span", "timings")
    return {
        "trace_id": trace_id,
        "run_id": run_id,
        **{key: data[key] for key in keys},
        "hops": result.hops,
        "top": [{"position": t.position, "token": t.token, "score": t.score} for t in result.top(top_k)],
        "model": result.info.get("model", ""),
        "options": result.info.get("options", {}),
        "notes": result.info.get("notes", []),
        "template": [bool(t) for t in result.layout.template],  # greyed, and left out of the colour scale
        "sources": _sources_payload(result, by),
        "images": _images_payload(result),
    }


def _images_payload(result: TraceResult) -> list[dict[str, Any]]:
    """Each image of the context with its tokens' cells (``render.picture``), for the page to draw on it."""
    return [
        {**{key: getattr(image, key) for key in ("name", "rows", "cols", "preview", "width", "height", "score",
                                                   "share")},
         "cells": [asdict(cell) for cell in image.cells]}
        for image in image_views(result)
    ]


def _attachment(filename: str) -> dict[str, str]:
    return {"Content-Disposition": f'attachment; filename="{filename}"'}


def _colour_ramp() -> dict[str, Any]:
    """The HTML report's colour scale, sampled for the page: ``stops`` are ``[intensity, [r, g, b]]``."""
    stops = [[round(x, 3), list(heat_rgb(x) or (255, 255, 255))] for x in np.linspace(0.0, 1.0, 21)]
    return {"stops": stops, "dark_from": DARK_FROM, "visible_from": VISIBLE_FROM}


def _describe_validation(error: RequestValidationError) -> str:
    """Pydantic's errors as one line: ``hops: Input should be less than or equal to 16; ...``."""
    parts = []
    for problem in error.errors():
        if problem.get("type") == "json_invalid":  # loc is ("body", character offset): say it in words
            offset = problem.get("loc", ("body", 0))[-1]
            reason = (problem.get("ctx") or {}).get("error", "malformed")
            parts.append(f"the request body is not valid JSON ({reason} at character {offset}); send one JSON object")
            continue
        where = ".".join(str(part) for part in problem.get("loc", ()) if part != "body")
        if where.startswith("span."):  # one message for both forms, not one per branch of the union
            parts.append(f"span: give [start, end] token positions (end exclusive) or a span spec "
                         f"({', '.join(SPAN_FORMS[1:])}) of at most {MAX_SPEC_CHARS} characters")
            continue
        parts.append(f"{where}: {problem.get('msg', 'invalid')}" if where else str(problem.get("msg", "invalid")))
    return "; ".join(dict.fromkeys(parts)) or "invalid request"
