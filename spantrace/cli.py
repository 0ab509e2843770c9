"""The ``spantrace`` command line: a thin shell that parses options, calls the library and shows the result.

    spantrace trace --prompt "Tom has 3 apples and buys 4 more. How many?" --span answer --html trace.html
    spantrace methods
    spantrace models
    spantrace eval --task niah_single -n 20 --out results.jsonl
    spantrace report results.jsonl
    spantrace serve                      # the interactive viewer at http://127.0.0.1:8000/

Every error a person can fix (a bad option, a span that matches nothing, a model that does not load)
is one line on stderr and exit code 2; progress bars go to stderr, the report to stdout.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from typer.core import TyperGroup

from .api import DEFAULT_CHUNK_SIZE, load
from .architectures.catalog import NOTES, REFUSED
from .architectures.registry import supported_architectures
from .errors import InputError, SpanTraceError
from .groups import GROUPINGS
from .loading import builtin
from .methods.hops import RECURSIVE_SPANS
from .methods.registry import available_methods, describe_methods, list_methods
from .spans import SPAN_FORMS

USAGE_ERROR = 2  # exit code of every error the user can fix (Click's own usage errors use it too)
DEFAULT_MAX_NEW_TOKENS = 256
# Click's base error class, wherever this Typer keeps Click (recent versions vendor it).
_CLICK_ERROR = next(cls for cls in typer.BadParameter.__mro__ if cls.__name__ == "ClickException")
Recursive = Enum("Recursive", {name: name for name in RECURSIVE_SPANS}, type=str)  # --recursive choices


def _check_method(name: str) -> str:
    if name not in available_methods():
        raise typer.BadParameter(f"unknown method {name!r}; choose from {', '.join(available_methods())}")
    return name


class _OneLineErrors(TyperGroup):
    """Report usage errors as one line on stderr (exit code 2) instead of Click's usage box."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except _CLICK_ERROR as error:  # bad options (exit code 2), unreadable files
            context = getattr(error, "ctx", None)
            hint = f" (see '{context.command_path} --help')" if context is not None else ""
            typer.echo(f"Error: {_one_line(error.format_message())}{hint}", err=True)
            sys.exit(error.exit_code)
        except typer.Abort:
            typer.echo("Aborted.", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=_OneLineErrors,
    name="spantrace",
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # Click's compact help; the examples keep their lines (\b)
)


@app.callback(invoke_without_command=True)
def _root(context: typer.Context) -> None:
    """Explain what a language model's generated text rests on (FlashTrace span attribution).

    \b
    Example:
      spantrace trace --prompt "What is 17 + 25?" --span answer --html trace.html
    """
    if context.invoked_subcommand is None:
        typer.echo(context.get_help())


TRACE_EXAMPLES = """\b
Examples:
  spantrace trace --prompt "Tom has 3 apples and buys 4 more. How many apples does he have?" \\
      --span answer --html trace.html
  spantrace trace --prompt-file question.txt --output-file reasoning.txt \\
      --span boxed --hops 2 --json trace.json
  spantrace trace --messages chat.json --by message --html trace.html
  spantrace trace --prompt "Where is the Eiffel tower?" --documents docs.json --by document
"""


@app.command(epilog=TRACE_EXAMPLES)
def trace(
    prompt: Annotated[
        str | None,
        typer.Option("--prompt", "-p", metavar="TEXT", help="The prompt (wrapped in the model's chat template)."),
    ] = None,
    prompt_file: Annotated[
        Path | None,
        typer.Option(metavar="PATH", help="Read the prompt from this UTF-8 file instead.", exists=True, dir_okay=False),
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
            help="What to trace: " + ", ".join(SPAN_FORMS[1:]) + ". [default: answer; message:-1 with --messages]",
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
        str, typer.Option(callback=_check_method, metavar="NAME", help="Attribution method (see `spantrace methods`).")
    ] = "flashtrace",
    hops: Annotated[int, typer.Option(min=0, help="Recursive hops through the reasoning.")] = 1,
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
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Trace a span of the model's output back to the prompt tokens it rests on.

    Prints the prompt coloured by score, the top-k tokens, the ρ of each hop and timings; writes an
    HTML report with --html and the result (read it with spantrace.TraceResult.load) with --json.
    """
    if messages_file is not None and (prompt is not None or prompt_file is not None):
        raise typer.BadParameter("give a prompt or a conversation, not both", param_hint="'--messages'")
    prompt_text = _text_option(prompt, prompt_file, "--prompt", required=messages_file is None)
    output_text = _text_option(output, output_file, "--output", required=False)
    conversation = _json_option(messages_file, "--messages") if messages_file is not None else None
    documents = _json_option(documents_file, "--documents") if documents_file is not None else None
    if by is not None and by not in GROUPINGS:
        raise typer.BadParameter(f"unknown grouping {by!r}; choose from {', '.join(GROUPINGS)}", param_hint="'--by'")
    progress = not quiet and sys.stderr.isatty()
    _quiet_transformers()
    try:
        with _working("loading the model", progress):
            started = time.perf_counter()
            language_model = load(model, dtype=dtype, device=device)
            load_seconds = time.perf_counter() - started
        messages, tools = None, None
        if conversation is not None:
            messages, tools, documents = _conversation_parts(conversation, documents)
        started = time.perf_counter()
        run = language_model.run(
            prompt_text,
            messages=messages,
            tools=tools,
            documents=documents,
            documents_message=documents_message,
            output=output_text,
            chat=chat,
            max_new_tokens=max_new_tokens,
            progress=progress,
        )
        generate_seconds = time.perf_counter() - started - run.capture_seconds
        if span is None:
            span = "message:-1" if messages is not None else "answer"
        with _working("tracing", progress):
            result = run.trace(
                span,
                method=method,
                hops=hops,
                recursive=recursive.value,
                stop_tokens=stop_tokens,
                chunk_size=chunk_size,
            )
        if by is not None:
            result.by(by)  # fails here, before anything is printed, when the result has no such boundaries
    except SpanTraceError as error:
        _fail(str(error))
    from .render.terminal import render_terminal

    extra_timings = {"load_s": load_seconds}
    given_turn = bool(messages) and isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant"
    if output_text is None and not given_turn:
        extra_timings["generate_s"] = generate_seconds
    render_terminal(
        result, top_k=top_k, console=Console(), extra_timings=extra_timings, by=by, include_template=include_template
    )
    try:
        if html is not None:
            result.to_html(html, top_k=top_k, by=by, include_template=include_template)
            typer.echo(f"wrote {html}")
        if json_path is not None:
            result.save(json_path)
            typer.echo(f"wrote {json_path}")
    except OSError as error:
        _fail(f"could not write {error.filename}: {error.strerror}", code=1)


@app.command(epilog="\b\nExample:\n  spantrace methods")
def methods() -> None:
    """List the registered attribution methods, one line each, with their cost class."""
    described = describe_methods()
    name_width = max(len(info.name) for info in described)
    cost_width = max(len(info.cost) for info in described)
    for info in described:
        typer.echo(f"{info.name:<{name_width}}  {info.cost:<{cost_width}}  {info.description}")


@app.command(epilog="\b\nExample:\n  spantrace models")
def models() -> None:
    """List the built-in model and the architectures --model accepts."""
    try:
        builtin.find_builtin_gguf()
        state = "installed"
        if builtin.is_complete(builtin.cache_entry()):
            state += ", cached"
    except SpanTraceError:
        state = f"not installed: {builtin.INSTALL_LINE}"
    typer.echo(f"built-in model:\n  {builtin.DEFAULT_MODEL}  SmolLM2-135M-Instruct (the default; {state})")
    table = Table(title="supported architectures (config.model_type)", show_lines=False, expand=False)
    for column in ("model_type", "checkpoints", "handled exactly"):
        table.add_column(column, overflow="fold")
    for model_type in supported_architectures():
        note = NOTES.get(model_type)
        table.add_row(model_type, note.checkpoints if note else "(registered)", note.details if note else "")
    console = Console(width=max(100, Console().width))
    console.print(table)
    console.print("refused (each load of such a model says why):")
    for model_type, reason in sorted(REFUSED.items()):
        console.print(f"  {model_type}: {reason}", highlight=False)
    console.print(
        "--model takes a Hugging Face hub id, a folder saved with save_pretrained, or a .gguf file. "
        "Every model is self-checked at load; add an architecture with spantrace.register_adapter "
        "(docs/adding-an-architecture.md).",
        highlight=False,
    )


EVAL_EXAMPLES = """\b
Examples:
  spantrace eval --task niah_single -n 20 --length 1024 --methods flashtrace,ifr,occlusion --out results.jsonl
  spantrace eval --task gsm8k -n 200 --methods flashtrace,ifr --ray --workers 8 --out gsm8k.jsonl
  spantrace report results.jsonl --markdown results.md
"""


@app.command(name="eval", epilog=EVAL_EXAMPLES)
def eval_(
    task: Annotated[str, typer.Option(metavar="NAME", help="niah_single, niah_mq_q2/4, niah_mv_v2/4, vt_h<H>_c<C>, "
                                      "gsm8k, morehopqa, hotpotqa, docs_needle (docs_needle_d<N>: N documents; "
                                      "docs_needle_matched[_d<N>]: documents of equal word counts).")],
    out: Annotated[Path, typer.Option(dir_okay=False, metavar="PATH", help="JSONL results file (resumed if present).")],
    methods: Annotated[
        str, typer.Option(metavar="A,B", help="Comma-separated methods, or 'all' for every registered one.")
    ] = "flashtrace,ifr",
    samples: Annotated[int, typer.Option("-n", "--samples", min=1, help="How many samples.")] = 10,
    length: Annotated[int, typer.Option(min=16, help="Prompt length in tokens (RULER tasks).")] = 1024,
    seed: Annotated[int, typer.Option(help="Seed of the generated tasks.")] = 42,
    steps: Annotated[int, typer.Option(min=1, help="Deletion steps K.")] = 20,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Longest answer.")] = 64,
    span: Annotated[str, typer.Option(metavar="SPEC", help="The traced span of each answer.")] = "output",
    hops: Annotated[int, typer.Option(min=0, help="Recursive hops.")] = 1,
    scope: Annotated[str, typer.Option(help="Ranked tokens: 'user' (the user's text) or 'prompt' (all).")] = "user",
    stop_tokens: Annotated[str, typer.Option(help="'keep' or 'drop' punctuation-only tokens from ranking.")] = "keep",
    measures: Annotated[
        str, typer.Option(help="'all', 'token' (deletion/insertion curves, Recovery) or 'source' (per sentence or "
                          "document: hotpotqa, docs_needle; these tasks add a 'random' baseline row).")
    ] = "all",
    haystack: Annotated[str | None, typer.Option(help="RULER haystack: essay or noise.")] = None,
    data_path: Annotated[
        Path | None, typer.Option(metavar="PATH", help="A task data file instead of the bundled one.")
    ] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", metavar="SOURCE", help="[default: built-in]")] = None,
    device: Annotated[str | None, typer.Option(help="Device, e.g. cpu or cuda.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    ray: Annotated[bool, typer.Option("--ray", help="Run samples as Ray tasks (a local cluster by default).")] = False,
    ray_address: Annotated[
        str | None, typer.Option(metavar="ADDRESS", help="Join this Ray cluster instead ('auto', 'ray://…'); "
                                 "implies --ray.")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Ray workers, one model each [default: every CPU of the cluster].")
    ] = None,
) -> None:
    """Score attribution methods for faithfulness (RISE, MAS, insertion AUC, Recovery@10%) on a task.

    Writes one JSONL row per (sample, method) as it goes; run it again to resume after a crash.
    With --ray each worker loads the model once and takes whole samples; the rows are the same.
    """
    from functools import partial

    from .eval.distributed import run_eval_ray
    from .eval.runner import EvalConfig, ResultsFile, run_eval

    names = tuple(name.strip() for name in methods.split(",") if name.strip())
    if names == ("all",):
        names = tuple(list_methods())
    for name in names:
        _check_method(name)
    _quiet_transformers()
    progress = not quiet and sys.stderr.isatty()
    try:
        config = EvalConfig(task=task, methods=names, n=samples, length=length, seed=seed, steps=steps,
                            max_new_tokens=max_new_tokens, span=span, hops=hops, scope=scope, stop_tokens=stop_tokens,
                            haystack=haystack, data_path=str(data_path) if data_path else None, measures=measures)
        names = config.row_methods
        done = len(ResultsFile(out).done()) if out.exists() else 0
        distributed = ray or ray_address is not None
        if not distributed:
            with _working("loading the model", progress):
                language_model = load(model, device=device)
        count = TextColumn("{task.completed}/{task.total}")
        columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), count, TimeElapsedColumn())
        with Progress(*columns, console=Console(stderr=True), disable=not progress) as bar:
            rows = bar.add_task(f"eval {task}", total=samples * len(names), completed=min(done, samples * len(names)))
            if distributed:
                gpus = 1.0 if device is not None and device.startswith("cuda") else 0.0
                run_eval_ray(partial(load, model, device=device), config, out, address=ray_address, workers=workers,
                             gpus_per_worker=gpus, on_row=lambda _: bar.advance(rows))
            else:
                run_eval(language_model, config, out, on_row=lambda _: bar.advance(rows))
    except SpanTraceError as error:
        _fail(str(error))
    typer.echo(f"wrote {out}")


@app.command(epilog=EVAL_EXAMPLES)
def report(
    results: Annotated[
        list[Path], typer.Argument(metavar="RESULTS...", exists=True, dir_okay=False, help="JSONL files from eval.")
    ],
    markdown: Annotated[Path | None, typer.Option(dir_okay=False, metavar="PATH", help="Also write it here.")] = None,
    html: Annotated[
        Path | None, typer.Option(dir_okay=False, metavar="PATH", help="Write a self-contained HTML report.")
    ] = None,
    plots: Annotated[
        Path | None, typer.Option(file_okay=False, metavar="DIR", help="Write the figures here as PNG files.")
    ] = None,
) -> None:
    """Summarise eval results: mean ± s.e. per task and method, FlashTrace's paired sign tests, and figures."""
    from .eval.report import html_report, load_rows, markdown_report

    try:
        rows = [row for path in results for row in load_rows(path)]
        text = markdown_report(rows)
        figures = _report_figures(rows) if html is not None or plots is not None else {}
    except SpanTraceError as error:
        _fail(str(error))
    typer.echo(text)
    if markdown is not None:
        markdown.write_text(text + "\n", encoding="utf-8")
    if plots is not None:
        plots.mkdir(parents=True, exist_ok=True)
        for name, png in figures.items():
            (plots / f"{name}.png").write_bytes(png)
    if html is not None:
        titles = {"metrics": "Each metric per task and method (mean ± s.e.)",
                  "rise_vs_length": "RISE against the length of the generation, in length bins"}
        html.write_text(html_report(rows, {titles[name]: png for name, png in figures.items()}), encoding="utf-8")


def _report_figures(rows: list[dict[str, Any]]) -> dict[str, bytes]:
    from .eval.plots import metric_bars, metric_vs_length
    from .eval.report import complete_samples

    rows, _ = complete_samples(rows)  # the figures show the samples the tables show
    figures = {"metrics": metric_bars(rows)}
    if any(row.get("rise") is not None for row in rows):  # source-only runs have no RISE
        figures["rise_vs_length"] = metric_vs_length(rows)
    return figures


@app.command(epilog="\b\nExamples:\n  spantrace serve\n  spantrace serve --model Qwen/Qwen3-0.6B --port 8080")
def serve(
    model: Annotated[str | None, typer.Option("--model", "-m", metavar="SOURCE", help="[default: built-in]")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on; only this machine by default.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
    max_tokens: Annotated[int, typer.Option(min=2, help="Most tokens (prompt + output) in one run.")] = 4096,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Longest generation a request may ask for.")] = 1024,
    max_runs: Annotated[int, typer.Option(min=1, help="Runs kept in memory (least recently used dropped).")] = 8,
    dtype: Annotated[str | None, typer.Option(help="Model dtype, e.g. float32, bfloat16.")] = None,
    device: Annotated[str | None, typer.Option(help="Device, e.g. cpu or cuda.")] = None,
) -> None:
    """Open the interactive viewer: a local web page to run prompts and trace any span by selecting it.

    The model does one job at a time; requests that arrive meanwhile wait. API reference: docs/viewer.md.
    """
    import uvicorn

    from .serve import Limits, create_app

    _quiet_transformers()
    try:
        with _working("loading the model", sys.stderr.isatty()):
            language_model = load(model, dtype=dtype, device=device)
    except SpanTraceError as error:
        _fail(str(error))
    limits = Limits(max_tokens=max_tokens, max_new_tokens=max_new_tokens, max_runs=max_runs)
    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.echo(f"warning: listening on {host}: anyone who can reach it can run the model", err=True)
    shown_host = f"[{host}]" if ":" in host else host
    typer.echo(f"spantrace viewer for {language_model.model_id} at http://{shown_host}:{port}/ (Ctrl+C to stop)")
    uvicorn.run(create_app(language_model, limits=limits), host=host, port=port, log_level="warning")


# --- helpers -----------------------------------------------------------------------------------------


def _text_option(text: str | None, path: Path | None, name: str, *, required: bool) -> str | None:
    """The text of ``name`` or of ``name-file``; UsageError unless exactly one is given (or none, if optional)."""
    if text is not None and path is not None:
        raise typer.BadParameter("give one of them, not both", param_hint=f"'{name}' / '{name}-file'")
    if path is not None:
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            message = f"could not read {path} as UTF-8 text ({error})"
            raise typer.BadParameter(message, param_hint=f"'{name}-file'") from error
    if text is None and required:
        raise typer.BadParameter(f"give {name} TEXT or {name}-file PATH", param_hint=f"'{name}'")
    return text


def _json_option(path: Path, name: str) -> Any:
    """The JSON in ``path``; UsageError (one line) when it is not readable JSON."""
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        message = f"could not read {path} as JSON ({_one_line(str(error))})"
        raise typer.BadParameter(message, param_hint=f"'{name}'") from error


def _conversation_parts(data: Any, documents: Any) -> tuple[list[Any], Any, Any]:
    """``--messages`` JSON: a list of messages, or an object with ``messages`` (and ``tools``, ``documents``)."""
    if isinstance(data, dict):
        if "messages" not in data:
            raise InputError('a conversation object needs a "messages" list (and may have "tools", "documents")')
        if documents is not None and data.get("documents") is not None:
            raise InputError("documents are given twice: in --messages and with --documents; keep one")
        return data["messages"], data.get("tools"), documents if documents is not None else data.get("documents")
    if not isinstance(data, list):
        raise InputError('--messages must hold a JSON list of messages or {"messages": [...], "tools": [...]}')
    return data, None, documents


@contextmanager
def _working(what: str, enabled: bool) -> Iterator[None]:
    """An open-ended progress bar on stderr while the block runs (hidden when ``enabled`` is False)."""
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True, disable=not enabled) as bar:
        bar.add_task(what, total=None)
        yield


def _quiet_transformers() -> None:
    """Hide transformers' own weight-loading bar and warnings: the CLI shows its own progress."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


def _fail(message: str, *, code: int = USAGE_ERROR) -> NoReturn:
    typer.echo(f"Error: {_one_line(message)}", err=True)
    raise typer.Exit(code)


def _one_line(message: str) -> str:
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


def main() -> None:
    """The console-script entry point."""
    app()
