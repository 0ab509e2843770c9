"""The GPU benchmark: a Qwen3-8B-shaped random-weight model at 4k / 8k / 16k / 32k tokens, timed and measured.

    python benchmarks/bench_gpu.py                        # one GPU: the table, and benchmarks/results/gpu.json
    python benchmarks/bench_gpu.py --dispatch             # the same model spread by an accelerate device map
    python benchmarks/bench_gpu.py --smoke                # a tiny shape on the CPU, for seconds (the test's run)

The model is Qwen3-8B's shape written by hand (36 layers, hidden 4096, 32 heads, 8 key/value heads, head 128,
MLP 12288, vocabulary 151936, bfloat16; ``trace_cases.SHAPES["qwen3-8b"]``), built on the meta device and given
seeded random weights: no download, no network. The tokens are random ids. Each length is timed in turn:

- ``forward``: one forward pass with logits (sdpa), the model alone;
- ``capture``: ``Model.run`` on the ids, the forward pass that keeps the residual stream (memory planned first);
- ``trace``: FlashTrace of the answer span (the last 32 tokens) with one recursive hop over the generation (the
  last quarter of the tokens, T ∪ O), as ``bench_trace.py`` does;
- ``end to end``: capture + trace;
- the peak memory of each device over capture + trace (``torch.cuda.max_memory_allocated``, weights included),
  the process's peak RSS, and beside them what ``spantrace.memory`` planned before the capture.

``--dispatch`` spreads the layers with accelerate's ``dispatch_model``: half on each of two GPUs when there are
two, else the second half offloaded to CPU memory (accelerate moves each offloaded layer's weights in for its
forward). A length that runs out of memory, or a variant spantrace refuses, is recorded with its error and the
next length still runs. Without CUDA and without ``--smoke`` the script stops with one line.

The softmax rows' log-sum-exp is not taken from the GPU's flash-attention call: on CUDA the trace sums rows with
the exact blocked kernel (``kernels.rows.weighted_row_sum``); see docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch
from trace_cases import shaped_model

import spantrace
from spantrace.memory import plan_capture

LENGTHS = (4096, 8192, 16384, 32768)
SMOKE_LENGTHS = (128, 192)  # the generation (a quarter) holds the whole 32-token span
SPAN_TOKENS = 32
PROMPT_SHARE = 0.75
DEFAULT_OUT = Path(__file__).parent / "results" / "gpu.json"


def build(smoke: bool, dispatch: bool) -> spantrace.Model:
    """The Qwen3-8B-shaped model on the GPU (``--smoke``: two layers of width 256, float32, on the CPU), and with
    ``dispatch`` its layers spread over two GPUs or half offloaded to the CPU by accelerate."""
    if smoke:
        model = shaped_model("qwen3-8b", device="cpu", dtype="float32", layers=2, hidden=256)
    else:
        model = shaped_model("qwen3-8b", device="cuda:0", dtype="bfloat16")
    if not dispatch:
        return model
    from accelerate import dispatch_model

    hf_model = model.hf_model
    layers = hf_model.config.num_hidden_layers
    if smoke:
        first, second, main = "cpu", "cpu", "cpu"
    elif torch.cuda.device_count() >= 2:
        first, second, main = 0, 1, 0
    else:
        first, second, main = 0, "cpu", 0
    device_map: dict[str, Any] = {"model.embed_tokens": first, "model.rotary_emb": first}
    device_map.update({f"model.layers.{i}": first if i < layers // 2 else second for i in range(layers)})
    device_map.update({"model.norm": second, "lm_head": second})
    if not smoke and second == "cpu":
        hf_model.to("cpu")  # dispatch_model keeps the offloaded layers' weights in CPU memory from here
        torch.cuda.empty_cache()
    dispatch_model(hf_model, device_map=device_map, main_device=main)
    return spantrace.Model(hf_model, model_id=f"{model.model_id}-dispatched", check=False)


def synchronize() -> None:
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            torch.cuda.synchronize(index)


def reset_peaks() -> None:
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            torch.cuda.reset_peak_memory_stats(index)


def peaks() -> dict[str, float]:
    """GiB: each CUDA device's peak allocation since ``reset_peaks``, and the process's peak RSS."""
    found = {f"cuda:{i}": torch.cuda.max_memory_allocated(i) / 2**30 for i in range(torch.cuda.device_count())}
    found["rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    return found


def timed(work: Any) -> tuple[Any, float]:
    synchronize()
    started = time.perf_counter()
    value = work()
    synchronize()
    return value, time.perf_counter() - started


def measure(model: spantrace.Model, length: int) -> dict[str, Any]:
    """One length: forward, capture, trace, end to end (seconds), the peaks and the plan (GiB)."""
    vocab = model.hf_model.get_input_embeddings().num_embeddings
    ids = torch.randint(10, min(40000, vocab), (length,), generator=torch.Generator().manual_seed(length))
    prompt_length = int(length * PROMPT_SHARE)
    span = (length - min(SPAN_TOKENS, length - prompt_length), length)  # the answer: the last 32 tokens
    row: dict[str, Any] = {"tokens": length, "prompt_tokens": prompt_length, "span": list(span)}
    plan = plan_capture(model.adapter, length)
    row["planned_gib"] = {name: p.total / 2**30 for name, p in plan.devices.items()}
    device = next(model.hf_model.parameters()).device
    with torch.inference_mode():
        _, row["forward_s"] = timed(lambda: model.hf_model(ids[None].to(device), use_cache=False).logits)
    reset_peaks()
    run, row["capture_s"] = timed(lambda: model.run(input_ids=ids, prompt_length=prompt_length, progress=False))
    result, row["trace_s"] = timed(lambda: run.trace(span, method="flashtrace", hops=1, recursive="generation"))
    row["end_to_end_s"] = row["capture_s"] + row["trace_s"]
    row["peak_gib"] = peaks()
    planned = result.info["memory"]  # "not planned" where Model.run was told not to
    row["memory_fallback"] = planned.get("fallback") if isinstance(planned, dict) else None
    return row


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| tokens | forward (s) | capture (s) | trace (s) | end to end (s) | peak memory (GiB) | planned (GiB) |",
        "|---:|---:|---:|---:|---:|---|---|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['tokens']} | {row['error']} | | | | | |")
            continue
        peak = ", ".join(f"{name} {gib:.1f}" for name, gib in row["peak_gib"].items())
        planned = ", ".join(f"{name} {gib:.1f}" for name, gib in row["planned_gib"].items())
        lines.append(
            f"| {row['tokens']} | {row['forward_s']:.2f} | {row['capture_s']:.2f} | {row['trace_s']:.2f} | "
            f"{row['end_to_end_s']:.2f} | {peak} | {planned} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=None)
    parser.add_argument("--dispatch", action="store_true", help="spread the layers with an accelerate device map")
    parser.add_argument("--smoke", action="store_true", help="a tiny shape on the CPU, for seconds")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        sys.exit("bench_gpu.py needs a CUDA device and found none; pass --smoke for the CPU check")
    lengths = args.lengths or (SMOKE_LENGTHS if args.smoke else LENGTHS)
    model = build(args.smoke, args.dispatch)
    rows = []
    for length in lengths:
        try:
            rows.append(measure(model, length))
        except (torch.cuda.OutOfMemoryError, spantrace.SpanTraceError) as error:  # recorded; the next length runs
            rows.append({"tokens": length, "error": f"{type(error).__name__}: {str(error).splitlines()[0]}"})
            torch.cuda.empty_cache() if torch.cuda.is_available() else None
    text = table(rows)
    print(f"{model.model_id} on {describe()}{' (dispatched)' if args.dispatch else ''}")
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"model": model.model_id, "dispatch": args.dispatch, "device": describe(), "torch": torch.__version__,
            "python": platform.python_version(), "span_tokens": SPAN_TOKENS, "prompt_share": PROMPT_SHARE}
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    return rows


def describe() -> str:
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return ", ".join(names)
    return f"CPU ({platform.processor() or platform.machine()})"


if __name__ == "__main__":
    main()
