"""Trace time and peak memory against one forward pass, on the built-in model or a random 8B-shaped one.

    .venv/bin/python benchmarks/bench_trace.py --lengths 1000 2000 4000 --out benchmarks/results/trace.json

On a GPU, a random-weight model shaped like Llama-3-8B or Qwen3-8B (built on the meta device, no download,
no network; bfloat16; random seeded token ids, as there is no tokenizer):

    python benchmarks/bench_trace.py --shape qwen3-8b --device cuda --lengths 1000 2000 4000 8000 16000 \\
        --jobs forward flashtrace --out benchmarks/results/trace-qwen3-8b.json

Each (length, job) runs in a fresh process so its peak memory is its own: peak RSS always, and on CUDA
``torch.cuda.max_memory_allocated`` (weights included). The sequence is text from the public-domain haystack
bundled with spantrace (or random ids when the model has no tokenizer): the first 3/4 is the prompt, the
rest the "generation" (``--prompt-share``); the traced span is its last 32 tokens (``--span-tokens``), with
one recursive hop over the whole generation (the paper's default, T ∪ O; ``--hops``). The results go to
``--out`` (JSON) and a log–log plot of time and peak memory against tokens to ``--plot`` (default: ``--out``
with ``.png``).

Jobs: ``forward`` (one sdpa forward pass with logits) and any registered method (``spantrace methods``);
``--budget`` stops a job that runs longer and records it as over budget. Token-wise IFR costs one exact
row per span token, so over a long span it can be timed on its last ``--ifr-rows`` rows and scaled up
(hop 0 only, ``--hops 0``): its rows are independent, so the time is linear in their number. The 4k-target
comparison of docs/performance.md:

    .venv/bin/python benchmarks/bench_trace.py --lengths 4608 --prompt-share 0.111 --span-tokens 4096 \
        --hops 0 --ifr-rows 64 --jobs forward flashtrace ifr --out benchmarks/results/trace_4k_target.json

The job ``paired`` times the forward pass and FlashTrace in the same process, back to back, best of
``--repeats``: trace alone (hop 0 + hops, on a captured run) and end to end (capture + trace), each over one
forward pass, beside the ratio the arithmetic allows (multiply-adds of the trace over those of the forward
pass). The long-reasoning case (the answer's last 32 tokens traced back through the whole generation):

    .venv/bin/python benchmarks/bench_trace.py --lengths 1000 2000 4000 8000 --prompt-share 0.125 \
        --jobs paired --out benchmarks/results/trace_long_reasoning.json

This file is the command (options, one process per job, the table); ``trace_cases.py`` builds the models and
tokens, ``trace_timing.py`` times one job, ``bench_plots.py`` draws the figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

from bench_plots import paired_figure, trace_figure
from trace_cases import DEFAULT_WORKLOAD, DTYPES, SHAPES, Setup, Workload
from trace_timing import measure, ratios

JOBS = ("forward", "flashtrace", "ifr")  # --smoke runs these


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1000, 2000, 4000])
    parser.add_argument(
        "--jobs",
        nargs="+",
        default=["forward", "flashtrace"],
        choices=("forward", "paired", *method_names()),
        metavar="JOB",
        help="forward, paired (forward and flashtrace in one process), or any method of `spantrace methods`",
    )
    parser.add_argument("--model", default=None, help="model source (default: the built-in model)")
    parser.add_argument(
        "--shape",
        default="builtin",
        choices=("builtin", *SHAPES),
        help="builtin: --model (or the built-in model); else a random-weight model of that shape (no download)",
    )
    parser.add_argument("--device", default=None, help="cuda, cpu, cuda:1… (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", default=None, choices=DTYPES, help="default: the model's (bfloat16 for shapes)")
    parser.add_argument("--layers", type=int, default=None, help=argparse.SUPPRESS)  # scaled-down --shape
    parser.add_argument("--hidden", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/trace.json"))
    parser.add_argument("--plot", type=Path, default=None, help="PNG of time and memory (default: --out with .png)")
    parser.add_argument(
        "--smoke", action="store_true", help="a tiny random model (or a 2-layer --shape) at 64 and 128 tokens, all jobs"
    )
    parser.add_argument("--one", nargs=2, metavar=("JOB", "LENGTH"), help=argparse.SUPPRESS)
    parser.add_argument("--prompt-share", type=float, default=0.75, help="prompt / total tokens (rest: generation)")
    parser.add_argument("--span-tokens", type=int, default=32, help="traced span: the last this many tokens")
    parser.add_argument("--hops", type=int, default=1, help="recursive hops")
    parser.add_argument("--ifr-rows", type=int, default=None, help="time IFR on this many span rows, scale up")
    parser.add_argument("--budget", type=float, default=None, help="seconds a job may take (default: no limit)")
    parser.add_argument("--repeats", type=int, default=2, help="paired job: best of this many runs of each")
    args = parser.parse_args(argv)
    if args.ifr_rows is not None and args.hops != 0:
        parser.error("--ifr-rows scales hop 0 only: use it with --hops 0")
    if not 0 < args.prompt_share < 1 or args.span_tokens < 1 or args.hops < 0:
        parser.error("--prompt-share must lie in (0, 1), --span-tokens be ≥ 1 and --hops ≥ 0")
    if args.repeats < 1:
        parser.error("--repeats must be ≥ 1")
    workload = Workload(args.prompt_share, args.span_tokens, args.hops, args.ifr_rows, args.repeats)
    if args.smoke:
        args.lengths, args.jobs = [64, 128], list(JOBS)
        if args.shape == "builtin":
            args.model = "tiny"
        else:
            args.layers, args.hidden = args.layers or 2, args.hidden or 256
    setup = Setup(args.model, args.shape, args.device, args.dtype, args.layers, args.hidden)
    if args.one:  # child process
        print(json.dumps(measure(args.one[0], int(args.one[1]), setup, workload)))
        return []
    rows = run_all(args.lengths, args.jobs, setup, workload, args.budget)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.machine(), "processor": platform.processor(), "python": platform.python_version()}
    done = [row for row in rows if "error" not in row]
    meta.update({key: done[0][key] for key in ("model", "device", "dtype", "gpu") if done and key in done[0]})
    meta.update(shape=args.shape, jobs=args.jobs, lengths=args.lengths, budget_seconds=args.budget,
                workload=workload._asdict())
    summary = ratios(rows)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows, "ratios": summary}, indent=2))
    print(f"wrote {args.out}")
    plot_path = args.plot or args.out.with_suffix(".png")
    title = f"{meta.get('model', args.shape)} on {meta.get('gpu') or meta.get('device', '?')}"
    plotter = paired_figure if rows and all(row["job"] == "paired" for row in rows) else trace_figure
    if plotter(rows, plot_path, title):
        print(f"wrote {plot_path}")
    else:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
    return rows


def method_names() -> list[str]:
    from spantrace.methods.registry import list_methods

    return list_methods()


def run_all(
    lengths: list[int],
    jobs: list[str],
    setup: Setup,
    workload: Workload = DEFAULT_WORKLOAD,
    budget: float | None = None,
) -> list[dict]:
    """Every (length, job) in its own process, with a progress bar; prints the table as rows come in.

    A job still running after ``budget`` seconds is stopped and recorded as over budget."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(highlight=False, soft_wrap=True)
    rows: list[dict] = []
    header = f"{'tokens':>7} {'job':>11} {'seconds':>9} {'× forward':>10} {'× flashtrace':>13} {'peak RSS GiB':>13}"
    console.print(header + f" {'peak GPU GiB':>13}")
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("bench", total=len(lengths) * len(jobs))
        for length in lengths:
            seconds: dict[str, float] = {}
            for job in jobs:
                progress.update(task, description=f"{job} × {length} tokens")
                command = [sys.executable, __file__, "--one", job, str(length), *setup.argv(), *workload.argv()]
                try:
                    done = subprocess.run(command, capture_output=True, text=True, timeout=budget)
                except subprocess.TimeoutExpired:
                    progress.advance(task)
                    row = {"job": job, "tokens": length, "error": f"over the {budget:g} s budget", "over_budget": True}
                    console.print(f"{length:>7} {job:>11}   over the {budget:g} s budget")
                    rows.append(row)
                    continue
                progress.advance(task)
                if done.returncode != 0:
                    row = {"job": job, "tokens": length, "error": done.stderr.strip().splitlines()[-1:]}
                    console.print(f"{length:>7} {job:>11}   failed: {row['error']}")
                    rows.append(row)
                    continue
                row = json.loads(done.stdout.strip().splitlines()[-1])
                rows.append(row)
                if job == "paired":
                    console.print(
                        f"{length:>7} {job:>11}   forward {row['forward_seconds']:.2f} s, "
                        f"trace {row['trace_seconds']:.2f} s ({row['trace/forward']:.2f}×), "
                        f"end to end {row['end_to_end_seconds']:.2f} s "
                        f"({row['end_to_end/forward']:.2f}×), arithmetic limit "
                        f"{'n/a' if row['limit'] is None else format(row['limit'], '.2f') + '×'}, "
                        f"peak RSS {row['peak_rss_gib']:.2f} GiB"
                    )
                    continue
                seconds[job] = row["seconds"]
                cells = [
                    f"{row['seconds'] / seconds[base]:.2f}" if base in seconds and job in jobs_over else "-"
                    for base, jobs_over in (("forward", jobs), ("flashtrace", ("ifr",)))
                ]
                gpu = f"{row['peak_gpu_gib']:.2f}" if "peak_gpu_gib" in row else "-"
                console.print(
                    f"{length:>7} {job:>11} {row['seconds']:>9.2f} {cells[0]:>10} {cells[1]:>13} "
                    f"{row['peak_rss_gib']:>13.2f} {gpu:>13}"
                    + (f"  (hop 0 scaled from {row['timed_rows']} of {row['span_rows']} rows)" if "extrapolated" in row
                       else "")
                )
    summary = ratios(rows)
    if summary:
        console.print(f"\n{'tokens':>7} {'ratio':>19} {'time':>7} {'hops':>7} {'memory':>7}")
        for entry in summary:
            for pair in ("flashtrace/forward", "ifr/flashtrace"):
                if f"{pair}_seconds" in entry:
                    time_ratio, memory_ratio = entry[f"{pair}_seconds"], entry[f"{pair}_memory"]
                    hops = f"{entry[f'{pair}_hop_seconds']:.2f}" if f"{pair}_hop_seconds" in entry else "-"
                    console.print(f"{entry['tokens']:>7} {pair:>19} {time_ratio:>7.2f} {hops:>7} {memory_ratio:>7.2f}")
    return rows


if __name__ == "__main__":
    main()
