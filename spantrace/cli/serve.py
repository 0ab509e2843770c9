"""``spantrace serve``: load the model once and open the interactive viewer (``spantrace.serve``)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ..api import load
from ..errors import SpanTraceError
from .common import (
    DeviceMapOption,
    MaxMemoryOption,
    OffloadFolderOption,
    fail,
    placement_options,
    quiet_transformers,
    working,
)

EXAMPLES = "\b\nExamples:\n  spantrace serve\n  spantrace serve --model Qwen/Qwen3-0.6B --port 8080"


def serve(
    model: Annotated[str | None, typer.Option("--model", "-m", metavar="SOURCE", help="[default: built-in]")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on; only this machine by default.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
    max_tokens: Annotated[int, typer.Option(min=2, help="Most tokens (prompt + output) in one run.")] = 4096,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Longest generation a request may ask for.")] = 1024,
    max_runs: Annotated[int, typer.Option(min=1, help="Runs kept in memory (least recently used dropped).")] = 8,
    max_images: Annotated[int, typer.Option(min=0, help="Most images in one run (a model that takes images).")] = 4,
    max_image_mb: Annotated[
        float, typer.Option(min=0.01, help="Largest image file a run may send, in MiB (before base64).")
    ] = 4.0,
    dtype: Annotated[str | None, typer.Option(help="Model dtype, e.g. float32, bfloat16.")] = None,
    device: Annotated[str | None, typer.Option(help="Device, e.g. cpu or cuda.")] = None,
    device_map: DeviceMapOption = None,
    max_memory: MaxMemoryOption = None,
    offload_folder: OffloadFolderOption = None,
) -> None:
    """Open the interactive viewer: a local web page to run prompts and trace any span by selecting it.

    The model does one job at a time; requests that arrive meanwhile wait. API reference: docs/viewer.md.
    """
    import uvicorn

    from ..serve import Limits, create_app

    placement = placement_options(device_map, max_memory, offload_folder, device)
    quiet_transformers()
    try:
        with working("loading the model", sys.stderr.isatty()):
            language_model = load(model, dtype=dtype, device=device, **placement)
    except SpanTraceError as error:
        fail(str(error))
    limits = Limits(max_tokens=max_tokens, max_new_tokens=max_new_tokens, max_runs=max_runs, max_images=max_images,
                    max_image_bytes=round(max_image_mb * 2**20))
    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.echo(f"warning: listening on {host}: anyone who can reach it can run the model", err=True)
    shown_host = f"[{host}]" if ":" in host else host
    typer.echo(f"spantrace viewer for {language_model.model_id} at http://{shown_host}:{port}/ (Ctrl+C to stop)")
    uvicorn.run(create_app(language_model, limits=limits), host=host, port=port, log_level="warning")
