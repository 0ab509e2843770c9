"""``spantrace eval``: score attribution methods for faithfulness on a task, one JSONL row per (sample, method)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from ..api import load
from ..errors import SpanTraceError
from ..methods.registry import list_methods
from .common import (
    DeviceMapOption,
    MaxMemoryOption,
    OffloadFolderOption,
    check_method,
    fail,
    placement_options,
    quiet_transformers,
    working,
)


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
    device_map: DeviceMapOption = None,
    max_memory: MaxMemoryOption = None,
    offload_folder: OffloadFolderOption = None,
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

    Writes one JSONL row per (sample, method) as it goes; run it again to resume after a crash. An --out
    that is not a results file is refused untouched, and so is a second run on a file that one is writing.
    With --ray each worker loads the model once and takes whole samples; the rows are the same.
    """
    from functools import partial

    from ..eval.distributed import run_eval_ray
    from ..eval.runner import EvalConfig, open_results, run_eval

    names = tuple(dict.fromkeys(name.strip() for name in methods.split(",") if name.strip()))  # once each, in order
    if names == ("all",):
        names = tuple(list_methods())
    if not names:
        fail(f"--methods names no method ({methods!r}); give e.g. flashtrace,ifr or 'all'")
    for name in names:
        check_method(name)
    placement = placement_options(device_map, max_memory, offload_folder, device)
    quiet_transformers()
    progress = not quiet and sys.stderr.isatty()
    try:
        # Every setting, the span's syntax and the results file (locked, checked) before the model loads.
        config = EvalConfig(task=task, methods=names, n=samples, length=length, seed=seed, steps=steps,
                            max_new_tokens=max_new_tokens, span=span, hops=hops, scope=scope, stop_tokens=stop_tokens,
                            haystack=haystack, data_path=str(data_path) if data_path else None, measures=measures)
        names = config.row_methods
        with open_results(config, out) as results:
            done = len(results.done())
            distributed = ray or ray_address is not None
            if not distributed:
                with working("loading the model", progress):
                    language_model = load(model, device=device, **placement)
            count = TextColumn("{task.completed}/{task.total}")
            columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), count, TimeElapsedColumn())
            with Progress(*columns, console=Console(stderr=True), disable=not progress) as bar:
                total = samples * len(names)
                rows = bar.add_task(f"eval {task}", total=total, completed=min(done, total))
                if distributed:
                    gpus = 1.0 if device is not None and device.startswith("cuda") else 0.0
                    run_eval_ray(partial(load, model, device=device, **placement), config, results, address=ray_address,
                                 workers=workers, gpus_per_worker=gpus, on_row=lambda _: bar.advance(rows))
                else:
                    run_eval(language_model, config, results, on_row=lambda _: bar.advance(rows))
    except SpanTraceError as error:
        fail(str(error))
    if not out.exists():  # no row was written (and the file removed again): never claim a file that is not there
        typer.echo(f"no rows were written, so {out} was not created", err=True)
        return
    typer.echo(f"wrote {out}")
