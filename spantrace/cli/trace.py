"""``spantrace trace``: trace a span of the model's output back to the prompt tokens it rests on."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from ..api import DEFAULT_CHUNK_SIZE, load
from ..errors import InputError, SpanTraceError
from ..groups import GROUPINGS
from ..inputs import parse_conversation
from ..methods.hops import MAX_HOPS, RECURSIVE_SPANS
from ..spans import SPAN_FORMS
from .common import (
    DeviceMapOption,
    MaxMemoryOption,
    OffloadFolderOption,
    check_method,
    fail,
    json_option,
    placement_options,
    quiet_transformers,
    text_option,
    working,
)

DEFAULT_MAX_NEW_TOKENS = 256
Recursive = Enum("Recursive", {name: name for name in RECURSIVE_SPANS}, type=str)  # --recursive choices
# --span as token positions: START,END, or the same in parentheses or brackets ("(40, 52)", "[40, 52]")
_POSITIONS = re.compile(r"\s*(?:\(\s*(?P<a>[^()]*?)\s*\)|\[\s*(?P<b>[^\[\]]*?)\s*\]|(?P<c>[^()\[\]:]*,[^()\[\]:]*))\s*")
_WHOLE = re.compile(r"[+-]?\d+")


EXAMPLES = """\b
Examples:
  spantrace trace --prompt "Tom has 3 apples and buys 4 more. How many apples does he have?" \\
      --span answer --html trace.html
  spantrace trace --prompt-file question.txt --output-file reasoning.txt \\
      --span boxed --hops 2 --json trace.json
  spantrace trace --messages chat.json --by message --html trace.html
  spantrace trace --model ./qwen2.5-vl --image photo.png --prompt "What is on the table?" --by image
  spantrace trace --prompt "Where is the Eiffel tower?" --documents docs.json --by document
"""


def trace(
    prompt: Annotated[
        str | None,
        typer.Option("--prompt", "-p", metavar="TEXT", help="The prompt (wrapped in the model's chat template)."),
    ] = None,
    prompt_file: Annotated[
        Path | None,
        typer.Option(metavar="PATH", help="Read the prompt from this UTF-8 file instead.", exists=True, dir_okay=False),
    ] = None,
    image_files: Annotated[
        list[Path] | None,
        typer.Option(
            "--image", metavar="PATH", exists=True, dir_okay=False,
            help="An image the prompt shows, before its text (repeat for several; needs a model with a processor).",
        ),
    ] = None,
    messages_file: Annotated[
        Path | None,
        typer.Option(
            "--messages",
            metavar="PATH",
            help='A conversation to trace instead of a prompt: a JSON list of {"role": ..., "content": ...}, or '
            '{"messages": [...], "tools": [...], "documents": [...]}. A last assistant message is traced as given.',
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    documents_file: Annotated[
        Path | None,
        typer.Option(
            "--documents",
            metavar="PATH",
            help='Documents to place before the prompt: a JSON list of strings or {"name": ..., "text": ...}.',
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    documents_message: Annotated[
        int | None,
        typer.Option(
            metavar="INDEX",
            help="With --messages: the user or system message (its index; negative from the end) that the "
            "documents open [default: the last user message].",
        ),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(
            "--output", "-o", metavar="TEXT", help="The model's output to trace; generated greedily when left out."
        ),
    ] = None,
    output_file: Annotated[
        Path | None,
        typer.Option(metavar="PATH", help="Read the output from this UTF-8 file instead.", exists=True, dir_okay=False),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            metavar="SOURCE",
            help="A hub id, a model folder or a .gguf file. [default: the built-in model]",
        ),
    ] = None,
    span: Annotated[
        str | None,
        typer.Option(
            "--span",
            "-s",
            metavar="SPEC",
            help="What to trace: token positions START,END (end exclusive; also \"(START, END)\"), or "
            + ", ".join(SPAN_FORMS[1:])
            + ". [default: answer; message:-1 with --messages]",
        ),
    ] = None,
    by: Annotated[
        str | None,
        typer.Option(
            "--by",
            metavar="GROUPING",
            help="Also list the top sources by " + ", ".join(GROUPINGS) + " (the HTML report's source panel too).",
        ),
    ] = None,
    include_template: Annotated[
        bool,
        typer.Option(help="Keep chat-template and special tokens in the colour scale, top tokens and sources."),
    ] = False,
    method: Annotated[
        str, typer.Option(callback=check_method, metavar="NAME", help="Attribution method (see `spantrace methods`).")
    ] = "flashtrace",
    hops: Annotated[
        int, typer.Option(min=0, max=MAX_HOPS, help=f"Recursive hops through the reasoning (at most {MAX_HOPS}).")
    ] = 1,
    recursive: Annotated[
        Recursive,
        typer.Option(
            help="Sinks of hops ≥ 1: the generation up to the span end, the reasoning before the span, or the "
            "generation plus every earlier assistant turn of a conversation."
        ),
    ] = Recursive[RECURSIVE_SPANS[0]],
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="How many top prompt tokens to list.")] = 10,
    html: Annotated[
        Path | None, typer.Option("--html", dir_okay=False, metavar="PATH", help="Write the HTML report here.")
    ] = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", dir_okay=False, metavar="PATH", help="Write the result as JSON.")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Longest generation.")] = DEFAULT_MAX_NEW_TOKENS,
    chat: Annotated[bool, typer.Option(help="Wrap the prompt in the model's chat template.")] = True,
    stop_tokens: Annotated[bool, typer.Option(help="Soft-delete punctuation and whitespace tokens.")] = False,
    chunk_size: Annotated[int, typer.Option(min=1, help="Sinks scored at a time (memory only).")] = DEFAULT_CHUNK_SIZE,
    dtype: Annotated[str | None, typer.Option(help="Model dtype, e.g. float32, bfloat16.")] = None,
    device: Annotated[str | None, typer.Option(help="Device, e.g. cpu or cuda.")] = None,
    device_map: DeviceMapOption = None,
    max_memory: MaxMemoryOption = None,
    offload_folder: OffloadFolderOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    allow_long: Annotated[
        bool, typer.Option("--allow-long", help="Trace an input longer than the model's trained context (warned).")
    ] = False,
) -> None:
    """Trace a span of the model's output back to the prompt tokens it rests on.

    Prints the prompt coloured by score, the top-k tokens, the ρ of each hop and timings; writes an
    HTML report with --html and the result (read it with spantrace.TraceResult.load) with --json.
    """
    if messages_file is not None and (prompt is not None or prompt_file is not None):
        raise typer.BadParameter("give a prompt or a conversation, not both", param_hint="'--messages'")
    prompt_text = text_option(prompt, prompt_file, "--prompt", required=messages_file is None)
    output_text = text_option(output, output_file, "--output", required=False)
    if image_files and prompt_text is None:
        raise typer.BadParameter("--image goes with --prompt; in --messages give image parts", param_hint="'--image'")
    conversation = json_option(messages_file, "--messages") if messages_file is not None else None
    if conversation is not None:  # image paths in the file are relative to the file
        conversation = images_relative_to(conversation, messages_file.parent)  # type: ignore[union-attr]
    documents = json_option(documents_file, "--documents") if documents_file is not None else None
    if span is not None:
        span_argument(span)  # malformed positions fail here, before the model loads
    placement = placement_options(device_map, max_memory, offload_folder, device)
    if by is not None and by not in GROUPINGS:
        raise typer.BadParameter(f"unknown grouping {by!r}; choose from {', '.join(GROUPINGS)}", param_hint="'--by'")
    progress = not quiet and sys.stderr.isatty()
    quiet_transformers()
    try:
        with working("loading the model", progress):
            started = time.perf_counter()
            language_model = load(model, dtype=dtype, device=device, **placement)
            load_seconds = time.perf_counter() - started
        messages, tools = None, None
        if conversation is not None:
            messages, tools, documents = conversation_parts(conversation, documents)
        if image_files:  # the prompt as one user message: the images, then its text
            pictures = [{"type": "image", "image": str(path)} for path in image_files]
            content = [*pictures, {"type": "text", "text": prompt_text}]
            messages, prompt_text = [{"role": "user", "content": content}], None
        started = time.perf_counter()
        prepared = language_model.prepare(
            prompt_text,
            messages=messages,
            tools=tools,
            documents=documents,
            documents_message=documents_message,
            output=output_text,
            chat=chat,
            allow_long=allow_long,
        )
        run = language_model.run(
            prepared=prepared, max_new_tokens=max_new_tokens, progress=progress, allow_long=allow_long
        )
        generate_seconds = time.perf_counter() - started - run.capture_seconds
        if span is None:
            span = "message:-1" if conversation is not None else "answer"
        with working("tracing", progress):
            result = run.trace(
                span_argument(span),
                method=method,
                hops=hops,
                recursive=recursive.value,
                stop_tokens=stop_tokens,
                chunk_size=chunk_size,
            )
        if by is not None:
            result.by(by)  # fails here, before anything is printed, when the result has no such boundaries
    except SpanTraceError as error:
        fail(str(error))
    from ..render.terminal import render_terminal

    extra_timings = {"load_s": load_seconds}
    if prepared.output_ids is None:  # generated here: neither given nor a conversation's last assistant turn
        extra_timings["generate_s"] = generate_seconds
    render_terminal(
        result, top_k=top_k, console=Console(), extra_timings=extra_timings, by=by, include_template=include_template
    )
    for warning in result.info.get("warnings", []):  # e.g. an input past the trained context (--allow-long)
        typer.echo(f"warning: {warning}", err=True)
    try:
        if html is not None:
            result.to_html(html, top_k=top_k, by=by, include_template=include_template)
            typer.echo(f"wrote {html}")
        if json_path is not None:
            result.save(json_path)
            typer.echo(f"wrote {json_path}")
    except OSError as error:
        fail(f"could not write {error.filename}: {error.strerror}", code=1)


def images_relative_to(data: Any, folder: Path) -> Any:
    """``--messages`` JSON with each image part's relative path read from ``folder`` (the file's own)."""
    messages = data.get("messages") if isinstance(data, Mapping) else data
    if not isinstance(messages, list):
        return data  # parse_conversation says what is wrong
    for message in messages:
        parts = message.get("content") if isinstance(message, Mapping) else None
        for part in parts if isinstance(parts, list) else ():
            if isinstance(part, dict) and part.get("type") == "image" and isinstance(part.get("image"), str):
                part["image"] = str(folder / part["image"])  # an absolute path stays as it is
    return data


def conversation_parts(data: Any, documents: Any) -> tuple[Any, Any, Any]:
    """``--messages`` JSON (checked by ``spantrace.inputs.parse_conversation``: a list of messages, or an object
    with ``messages`` and ``tools``) as the messages, tools and documents for ``Model.prepare``; the object may
    hold ``documents`` too, unless ``--documents`` gives them."""
    _, tools = parse_conversation(data)  # a one-line InputError when it is no conversation
    if not isinstance(data, Mapping):
        return data, tools, documents
    if documents is not None and data.get("documents") is not None:
        raise InputError("documents are given twice: in --messages and with --documents; keep one")
    return data["messages"], tools, documents if documents is not None else data.get("documents")


def span_argument(text: str) -> str | tuple[int, int]:
    """``--span`` as ``Run.trace`` takes it: token positions ``(start, end)`` when the text is two whole numbers
    (``40,52``, ``(40, 52)`` or ``[40, 52]``), else the span spec itself (``answer``, ``regex:…``, …)."""
    found = _POSITIONS.fullmatch(text)
    if found is None:
        return text
    parts = [part.strip() for part in (found["a"] or found["b"] or found["c"] or "").split(",")]
    if len(parts) != 2 or not all(_WHOLE.fullmatch(part) for part in parts):
        raise typer.BadParameter(
            f"{text!r}: token positions are two whole numbers START,END (end exclusive), e.g. 40,52 or \"(40, 52)\"",
            param_hint="'--span'",
        )
    return int(parts[0]), int(parts[1])
