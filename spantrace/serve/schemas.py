"""What the viewer's JSON API accepts: request bodies with their fixed bounds, and the server's limits.

Bounds that never change (a span spec's length, the number of hops) live in the models, so FastAPI
answers 422 before any work starts; the limits a server is started with (``Limits``) are checked by
the routes, which answer 413 when an input is too big.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from ..groups import GROUPINGS
from ..methods.hops import MAX_HOPS, RECURSIVE_SPANS

MAX_SPEC_CHARS = 1_000
MAX_TOP_K = 200

SpanSpec = Annotated[str, StringConstraints(min_length=1, max_length=MAX_SPEC_CHARS)]
Recursive = Annotated[str, Field(pattern="^(" + "|".join(RECURSIVE_SPANS) + ")$")]
Grouping = Annotated[str, Field(pattern="^(" + "|".join(GROUPINGS) + ")$")]


@dataclass(frozen=True)
class Limits:
    """What one server accepts: sizes of requests and runs, and how many runs and traces it keeps."""

    max_body_bytes: int = 8 * 2**20  # a saved TraceResult of a few thousand tokens fits
    max_prompt_chars: int = 50_000  # prompt and output, each
    max_tokens: int = 4_096  # prompt + generation of one run
    max_new_tokens: int = 1_024
    max_runs: int = 8  # runs kept (each holds the residual stream of its forward pass); LRU
    max_traces: int = 64  # traces kept for export; LRU
    max_images: int = 4  # images in one run request
    max_image_bytes: int = 4 * 2**20  # one image's encoded file (the data URI's base64 decoded)
    max_image_pixels: int = 4096 * 4096  # one image's width × height, read from its header before decoding

    def body_bytes(self, *, images: bool) -> int:
        """The largest request body taken: ``max_body_bytes``, or, for a model that takes images, more when a run
        with its images at their limits needs it (each image as base64, 4 characters per 3 bytes, and room for
        the prompt and output as UTF-8)."""
        if not images or not self.max_images:
            return self.max_body_bytes
        pictures = self.max_images * -(-self.max_image_bytes // 3) * 4
        return max(self.max_body_bytes, pictures + 8 * self.max_prompt_chars + 2**16)


class RunRequest(BaseModel):
    """``POST /api/runs``: a prompt or a conversation (``messages``, with ``tools``), maybe ``documents``, and the
    output to trace (generated greedily when left out; a conversation's last assistant message is the output).
    Images are data URIs (``serve.images``): ``images`` beside ``prompt`` (shown before its text, in one user
    message), or ``{"type": "image", "image": "data:..."}`` parts in ``messages``."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = None
    images: list[Any] | None = None  # data URIs; anything else is answered 400 by the route (never opened)
    messages: list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    documents: list[str | dict[str, Any]] | None = None
    output: str | None = None
    chat: bool = True
    max_new_tokens: int | None = Field(default=None, ge=1)  # None: 256, or the server's cap if lower


class TraceRequest(BaseModel):
    """``POST /api/runs/{run_id}/trace``: a span of the generation and how to trace it."""

    model_config = ConfigDict(extra="forbid")

    span: tuple[int, int] | SpanSpec = "answer"
    method: Annotated[str, StringConstraints(min_length=1, max_length=100)] = "flashtrace"
    hops: int = Field(default=1, ge=0, le=MAX_HOPS)
    recursive: Recursive = RECURSIVE_SPANS[0]
    stop_tokens: bool = False
    top_k: int = Field(default=10, ge=1, le=MAX_TOP_K)
    by: Grouping | None = None  # the sources' grouping; None: documents, else messages, else sentences
