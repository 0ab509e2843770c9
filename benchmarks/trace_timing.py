"""One timed job in this process (``measure``; the ``paired`` job: forward pass and FlashTrace back to back),
the arithmetic that bounds the trace / forward ratio, and the ratios between jobs of a benchmark."""

from __future__ import annotations

import resource
import time
from typing import Any

from trace_cases import DEFAULT_WORKLOAD, HYBRID_TYPES, Setup, Workload, build_model, token_ids


def arithmetic(config: Any, length: int, prompt_length: int, span: tuple[int, int], hops: int) -> dict[str, float]:
    """Multiply-adds and exponentials of one forward pass (with logits) and of one FlashTrace call, from the shapes.

    Trace: keys and values once; per hop, the sinks' queries, q·k for every (sink, visible source) pair, and the
    value-vector work over the sources up to the last sink (``H·width·d·D``). Hop 0's sinks are the span, every
    later hop's the generation up to the span's end (all sinks counted, none skipped). ``limit`` is the trace's
    share of the forward pass's multiply-adds: the trace / forward time ratio if both ran at the same rate.
    """
    if getattr(config, "model_type", None) in HYBRID_TYPES:  # recurrent layers: the count below does not apply
        return {"forward_macs": None, "forward_exponentials": None, "trace_macs": None, "trace_exponentials": None,
                "limit": None}
    model_width, layers = config.hidden_size, config.num_hidden_layers
    heads = config.num_attention_heads
    groups = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or model_width // heads
    pairs = length * (length + 1) // 2  # causal (sink, source) pairs of the whole sequence
    projections = model_width * (heads + 2 * groups) * head_dim + heads * head_dim * model_width
    mlp = 3 * model_width * config.intermediate_size
    forward = layers * (length * (projections + mlp) + 2 * pairs * heads * head_dim) + length * model_width * (
        config.vocab_size
    )
    sink_sets = [range(*span)] + [range(prompt_length, span[1])] * hops
    trace = layers * length * 2 * model_width * groups * head_dim  # keys and values
    exponentials = 0
    for sinks in sink_sets:
        visible = sum(sink + 1 for sink in sinks)
        trace += layers * (len(sinks) * model_width * heads * head_dim + visible * heads * (head_dim + 1))
        trace += layers * heads * (sinks[-1] + 1) * head_dim * model_width
        exponentials += layers * heads * visible
    return {
        "forward_macs": float(forward),
        "forward_exponentials": float(layers * heads * pairs),
        "trace_macs": float(trace),
        "trace_exponentials": float(exponentials),
        "limit": trace / forward,
    }


def measure_paired(length: int, setup: Setup, workload: Workload) -> dict:
    """One sdpa forward pass and one FlashTrace (capture, then hop 0 + hops) in this process, best of repeats.

    Order: a short warm-up pass, then trace, forward, trace, forward…; the peak RSS is read after the first trace
    (capture + trace), before any full forward pass with logits ran.
    """
    import torch

    torch.manual_seed(0)
    model = build_model(setup)
    device = model.device
    cuda = device.type == "cuda"

    def synchronize() -> None:
        if cuda:
            torch.cuda.synchronize()

    ids = token_ids(model, length)
    prompt_length = int(length * workload.prompt_share)
    span = (length - min(workload.span_tokens, length - prompt_length), length)
    row: dict[str, Any] = {"job": "paired", "tokens": length, "prompt_tokens": prompt_length, "span": list(span)}
    row.update(hops=workload.hops, repeats=workload.repeats, threads=torch.get_num_threads())
    row.update(model=model.model_id, device=str(device), dtype=str(next(model.hf_model.parameters()).dtype))
    with torch.inference_mode():
        model.hf_model(ids[None, :64].to(device), use_cache=False)  # warm-up: thread pool, allocator
    forwards, captures, traces, hop_seconds = [], [], [], []
    for repeat in range(workload.repeats):
        started = time.perf_counter()
        run = model.run(input_ids=ids, prompt_length=prompt_length, progress=False)
        synchronize()
        captures.append(time.perf_counter() - started)
        started = time.perf_counter()
        result = run.trace(span, method="flashtrace", hops=workload.hops)
        synchronize()
        traces.append(time.perf_counter() - started)
        hop_seconds.append([result.timings.get(f"hop{k}_s", 0.0) for k in range(workload.hops + 1)])
        if repeat == 0:
            row["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
            if cuda:
                row["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
        del run, result
        with torch.inference_mode():
            started = time.perf_counter()
            model.hf_model(ids[None].to(device), use_cache=False)
            synchronize()
            forwards.append(time.perf_counter() - started)
    ends = [capture + trace for capture, trace in zip(captures, traces, strict=True)]
    best = min(range(len(traces)), key=traces.__getitem__)
    row.update(
        forward_seconds=min(forwards),
        capture_seconds=min(captures),
        trace_seconds=traces[best],
        hop_seconds=hop_seconds[best],
        end_to_end_seconds=min(ends),
        seconds=min(ends),
        all_seconds={"forward": forwards, "capture": captures, "trace": traces},
    )
    row["trace/forward"] = row["trace_seconds"] / row["forward_seconds"]
    row["end_to_end/forward"] = row["end_to_end_seconds"] / row["forward_seconds"]
    row["peak_rss_all_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    row.update(arithmetic(model.hf_model.config, length, prompt_length, span, workload.hops))
    return row


def measure(job: str, length: int, source: str | Setup | None, workload: Workload = DEFAULT_WORKLOAD) -> dict:
    """Run one job in this process and report seconds and peak memory (RSS; on CUDA also the GPU's)."""
    import numpy as np
    import torch

    setup = source if isinstance(source, Setup) else Setup(source=source)
    if job == "paired":
        return measure_paired(length, setup, workload)
    torch.manual_seed(0)
    model = build_model(setup)
    device = model.device
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        weights = torch.cuda.memory_allocated()
    ids = token_ids(model, length)
    prompt_length = int(length * workload.prompt_share)
    span = (length - min(workload.span_tokens, length - prompt_length), length)
    row: dict[str, Any] = {"job": job, "tokens": length, "prompt_tokens": prompt_length, "span": list(span)}
    row["hops"] = workload.hops
    sampled = job == "ifr" and workload.ifr_rows is not None and workload.ifr_rows < span[1] - span[0]
    if sampled:  # time the last ifr_rows rows of the span; scaled up below
        row["timed_rows"], row["span_rows"] = workload.ifr_rows, span[1] - span[0]
        span = (span[1] - workload.ifr_rows, span[1])
    row["threads"] = torch.get_num_threads()
    row.update(model=model.model_id, device=str(device), dtype=str(next(model.hf_model.parameters()).dtype))
    if job == "forward":  # what the model itself costs: one sdpa forward pass with logits
        with torch.inference_mode():
            started = time.perf_counter()
            model.hf_model(ids[None].to(device), use_cache=False)
            if cuda:
                torch.cuda.synchronize()
            row["seconds"] = time.perf_counter() - started
    else:
        started = time.perf_counter()
        run = model.run(input_ids=ids, prompt_length=prompt_length, progress=False)
        if cuda:
            torch.cuda.synchronize()
        capture = time.perf_counter() - started
        result = run.trace(span, method=job, hops=workload.hops)
        if cuda:
            torch.cuda.synchronize()
        row["seconds"] = time.perf_counter() - started
        row["capture_seconds"] = capture
        row["hop_seconds"] = [result.timings.get(f"hop{k}_s", 0.0) for k in range(workload.hops + 1)]
        row["scores_finite"] = bool(np.isfinite(result.scores).all())
        if sampled:  # rows are independent: hop 0 over the whole span costs span_rows / timed_rows as much
            scale = row["span_rows"] / row["timed_rows"]
            row["measured_seconds"], row["hop_seconds"] = row["seconds"], [row["hop_seconds"][0] * scale]
            row["seconds"] = row["seconds"] + row["hop_seconds"][0] * (1 - 1 / scale)
            row["extrapolated"] = True
    row["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if cuda:
        row["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
        row["weights_gpu_gib"] = weights / 2**30
        row["gpu"] = torch.cuda.get_device_name(device)
    return row


def peak_gib(row: dict) -> float:
    """The peak memory that matters for ``row``: the GPU's on CUDA runs, else RSS."""
    return row.get("peak_gpu_gib", row["peak_rss_gib"])


def ratios(rows: list[dict]) -> list[dict]:
    """Per length, flashtrace / forward and ifr / flashtrace in time and peak memory, where both ran."""
    done = {(row["tokens"], row["job"]): row for row in rows if "error" not in row}
    out = []
    for length in dict.fromkeys(row["tokens"] for row in rows):
        entry: dict[str, Any] = {"tokens": length}
        for top, bottom in (("flashtrace", "forward"), ("ifr", "flashtrace")):
            a, b = done.get((length, top)), done.get((length, bottom))
            if a and b:
                entry[f"{top}/{bottom}_seconds"] = a["seconds"] / b["seconds"]
                entry[f"{top}/{bottom}_memory"] = peak_gib(a) / peak_gib(b)
                if "hop_seconds" in a and "hop_seconds" in b:  # the attribution alone, capture pass left out
                    entry[f"{top}/{bottom}_hop_seconds"] = sum(a["hop_seconds"]) / sum(b["hop_seconds"])
        if len(entry) > 1:
            out.append(entry)
    return out
