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
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import torch

    import spantrace

HAYSTACK = "haystack_public_domain.txt"  # bundled with spantrace: spantrace.eval.tasks.files.data_file
JOBS = ("forward", "flashtrace", "ifr")  # --smoke runs these
DTYPES = ("bfloat16", "float16", "float32")

# Random-weight stand-ins for real 8B models: the shapes (and so the cost) of the published configs.
SHAPES: dict[str, dict[str, Any]] = {
    "llama3-8b": {
        "model_type": "llama",
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "intermediate_size": 14336,
        "vocab_size": 128256,
        "rope_theta": 500000.0,
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 131072,
        "tie_word_embeddings": False,
    },
    "qwen3-8b": {  # Qwen3 attention has RMSNorms on the queries and keys (q_norm, k_norm)
        "model_type": "qwen3",
        "hidden_size": 4096,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "intermediate_size": 12288,
        "vocab_size": 151936,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 131072,
        "tie_word_embeddings": False,
    },
    # Hybrids the size of the built-in model (576 wide, 12 layers): Qwen3.5's 3 Gated DeltaNet layers per gated
    # attention layer, and Nemotron-H's Mamba-2 / attention blocks each followed by an MLP block.
    "qwen3.5-small": {
        "model_type": "qwen3_5_text",
        "hidden_size": 576,
        "num_hidden_layers": 12,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "head_dim": 64,
        "linear_num_key_heads": 8,
        "linear_num_value_heads": 8,
        "linear_key_head_dim": 64,
        "linear_value_head_dim": 64,
        "linear_conv_kernel_dim": 4,
        "intermediate_size": 1536,
        "vocab_size": 49152,
        "max_position_embeddings": 32768,
        "tie_word_embeddings": True,
    },
    "nemotron-h-small": {
        "model_type": "nemotron_h",
        "hidden_size": 576,
        "layers_block_type": ["linear_attention", "mlp", "linear_attention", "mlp", "full_attention", "mlp"] * 2,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "head_dim": 72,
        "mamba_num_heads": 16,
        "mamba_head_dim": 72,
        "ssm_state_size": 64,
        "n_groups": 4,
        "conv_kernel": 4,
        "chunk_size": 128,
        "intermediate_size": 1536,
        "vocab_size": 49152,
        "max_position_embeddings": 32768,
        "tie_word_embeddings": True,
    },
}
HYBRID_TYPES = frozenset({"qwen3_5_text", "nemotron_h"})  # no arithmetic limit is computed for these


class Setup(NamedTuple):  # not a dataclass: the tests load this file without registering it as a module
    """Which model a child process builds, and where."""

    source: str | None = None  # --model: None for the built-in model, "tiny" for --smoke
    shape: str = "builtin"
    device: str | None = None  # None: cuda when available, else cpu
    dtype: str | None = None  # None: the model's default (bfloat16 for the 8B shapes)
    layers: int | None = None  # scaled-down shapes (tests, CPU checks)
    hidden: int | None = None

    def argv(self) -> list[str]:
        """The command-line options that rebuild this setup in a child process."""
        options = ["--shape", self.shape]
        for flag, value in (
            ("--model", self.source),
            ("--device", self.device),
            ("--dtype", self.dtype),
            ("--layers", self.layers),
            ("--hidden", self.hidden),
        ):
            if value is not None:
                options += [flag, str(value)]
        return options


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def tiny_model() -> spantrace.Model:
    """A small random Llama for --smoke runs (no download, seconds)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    import spantrace

    config = AutoConfig.for_model(
        "llama",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=50000,
        max_position_embeddings=4096,
    )
    return spantrace.Model(AutoModelForCausalLM.from_config(config).eval(), model_id="tiny-random-llama")


def shape_config(shape: str, *, layers: int | None = None, hidden: int | None = None) -> Any:
    """The transformers config of ``shape``; ``layers`` / ``hidden`` scale it down (heads and MLP in proportion)."""
    from transformers import AutoConfig

    values = dict(SHAPES[shape])
    model_type = values.pop("model_type")
    if layers is not None and "layers_block_type" in values:
        values["layers_block_type"] = values["layers_block_type"][:layers]
    elif layers is not None:
        values["num_hidden_layers"] = layers
    if hidden is not None:  # keep head_dim, GQA ratio and MLP ratio; fewer heads
        scale = hidden / values["hidden_size"]
        heads = max(1, round(values["num_attention_heads"] * scale))
        groups = values["num_attention_heads"] // values["num_key_value_heads"]
        values["hidden_size"] = hidden
        values["num_attention_heads"] = heads
        values["num_key_value_heads"] = max(1, heads // groups)
        values["intermediate_size"] = max(1, round(values["intermediate_size"] * scale))
    return AutoConfig.for_model(model_type, **values)


def init_weights(model: torch.nn.Module, *, seed: int = 0, std: float = 0.02) -> None:
    """Deterministic weights for a model materialised with ``to_empty``: matrices ~ N(0, std), norm weights 1,
    biases 0; buffers such as rotary ``inv_freq`` recomputed from the config (``to_empty`` leaves them garbage).
    """
    import torch

    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.ndim >= 2:
                parameter.normal_(0.0, std, generator=generator)
            elif name.endswith("bias"):
                parameter.zero_()
            else:  # RMSNorm weights (input, post-attention, final, and Qwen3's q_norm / k_norm)
                parameter.fill_(1.0)
        for module in model.modules():
            buffers = dict(module.named_buffers(recurse=False))
            if not buffers:
                continue
            config = getattr(module, "config", None)
            if config is None:
                raise RuntimeError(f"cannot recompute the buffers {sorted(buffers)} of {type(module).__name__}")
            fresh = type(module)(config)  # on the CPU: rotary embeddings compute inv_freq in __init__
            for name, buffer in fresh.named_buffers(recurse=False):
                buffers[name].copy_(buffer)


def shaped_model(
    shape: str,
    *,
    device: str | None = None,
    dtype: str = "bfloat16",
    layers: int | None = None,
    hidden: int | None = None,
    seed: int = 0,
) -> spantrace.Model:
    """A random-weight model shaped like ``shape`` (see ``SHAPES``), built on the meta device and materialised
    on ``device`` without a download; checked to give finite logits (which also warms CUDA up)."""
    import torch
    from transformers import AutoModelForCausalLM

    import spantrace

    device = device or default_device()
    config = shape_config(shape, layers=layers, hidden=hidden)
    with torch.device("meta"):
        hf_model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    hf_model.to_empty(device=device)
    init_weights(hf_model, seed=seed)
    hf_model.eval()
    probe = torch.randint(10, config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        logits = hf_model(probe.to(device), use_cache=False).logits
    if not torch.isfinite(logits).all():
        raise RuntimeError(f"the random {shape} model gives non-finite logits")
    scaled = "" if layers is None and hidden is None else f"-{config.num_hidden_layers}L-{config.hidden_size}h"
    return spantrace.Model(hf_model, model_id=f"random-{shape}{scaled}")


def build_model(setup: Setup) -> spantrace.Model:
    """The model ``setup`` names: a random ``--shape``, the --smoke tiny model, or ``spantrace.load(--model)``."""
    if setup.shape != "builtin":
        return shaped_model(
            setup.shape, device=setup.device, dtype=setup.dtype or "bfloat16", layers=setup.layers, hidden=setup.hidden
        )
    import torch

    import spantrace

    if setup.source == "tiny":
        model = tiny_model()
        if setup.device or setup.dtype:
            model.hf_model.to(device=setup.device, dtype=getattr(torch, setup.dtype) if setup.dtype else None)
        return model

    return spantrace.load(setup.source, dtype=setup.dtype, device=setup.device)


class Workload(NamedTuple):
    """What each job traces: the prompt's share of the tokens, the span, the hops, and sampled IFR rows."""

    prompt_share: float = 0.75
    span_tokens: int = 32
    hops: int = 1
    ifr_rows: int | None = None  # time token-wise IFR on this many span rows and scale up (hops = 0)
    repeats: int = 2  # the paired job: best of this many forward passes and traces

    def argv(self) -> list[str]:
        options = ["--prompt-share", str(self.prompt_share), "--span-tokens", str(self.span_tokens)]
        options += ["--hops", str(self.hops), "--repeats", str(self.repeats)]
        return options + (["--ifr-rows", str(self.ifr_rows)] if self.ifr_rows else [])


DEFAULT_WORKLOAD = Workload()


def token_ids(model: spantrace.Model, length: int) -> torch.Tensor:
    import torch

    from spantrace.eval.tasks.files import data_file

    if model.tokenizer is not None:
        text = data_file(HAYSTACK).read_text(encoding="utf-8")[: length * 8]
        ids = model.tokenizer(text, add_special_tokens=False)["input_ids"][:length]
        if len(ids) == length:
            return torch.tensor(ids)
    vocab = model.hf_model.get_input_embeddings().num_embeddings
    return torch.randint(10, min(40000, vocab), (length,), generator=torch.Generator().manual_seed(0))


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


def plot(rows: list[dict], path: Path, title: str) -> bool:
    """Time and peak memory against tokens, log–log, one line per job; False when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    gpu = any("peak_gpu_gib" in row for row in rows)
    lengths = sorted({row["tokens"] for row in rows})
    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    values: dict[Any, list[float]] = {time_axis: [], memory_axis: []}
    for job in dict.fromkeys(row["job"] for row in rows):
        done = sorted((row for row in rows if row["job"] == job and "error" not in row), key=lambda r: r["tokens"])
        if not done:
            continue
        tokens = [row["tokens"] for row in done]
        values[time_axis] += [row["seconds"] for row in done]
        values[memory_axis] += [peak_gib(row) for row in done]
        time_axis.plot(tokens, values[time_axis][-len(done) :], marker="o", label=job)
        memory_axis.plot(tokens, values[memory_axis][-len(done) :], marker="o", label=job)
    for axis, label in ((time_axis, "seconds"), (memory_axis, "peak GPU memory, GiB" if gpu else "peak RSS, GiB")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xticks(lengths, [str(n) for n in lengths])
        axis.xaxis.set_minor_formatter(NullFormatter())
        low, high = min(values[axis], default=1.0), max(values[axis], default=1.0)
        if 0 < low and high < 10 * low:  # less than a decade: a few plain ticks instead of one or none
            ticks = [low * (high / low) ** (k / 3) for k in range(4)]
            axis.set_yticks(ticks, [f"{tick:.3g}" for tick in ticks])
        else:
            axis.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axis.yaxis.set_minor_formatter(NullFormatter())
        axis.set_xlabel("tokens")
        axis.set_ylabel(label)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    time_axis.set_title("time")
    memory_axis.set_title("peak memory")
    figure.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def plot_paired(rows: list[dict], path: Path, title: str) -> bool:
    """The paired job: seconds (forward, trace alone, end to end, the arithmetic limit), time over one forward
    pass, and peak memory, against tokens; False when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    done = sorted((row for row in rows if row["job"] == "paired" and "error" not in row), key=lambda r: r["tokens"])
    tokens = [row["tokens"] for row in done]
    figure, (time_axis, ratio_axis, memory_axis) = plt.subplots(1, 3, figsize=(15, 4.2), constrained_layout=True)
    for key, label in (
        ("forward_seconds", "forward pass"),
        ("trace_seconds", "trace alone (hop 0 + hop 1)"),
        ("end_to_end_seconds", "end to end (capture + trace)"),
    ):
        time_axis.plot(tokens, [row[key] for row in done], marker="o", label=label)
    limits = all(row.get("limit") is not None for row in done)
    if limits:
        time_axis.plot(tokens, [row["limit"] * row["forward_seconds"] for row in done], ls=":", color="gray",
                       label="trace at the forward pass's rate (arithmetic)")
    ratio_axis.plot(tokens, [row["trace/forward"] for row in done], marker="o", label="trace alone / forward")
    ratio_axis.plot(tokens, [row["end_to_end/forward"] for row in done], marker="o", label="end to end / forward")
    if limits:
        ratio_axis.plot(tokens, [row["limit"] for row in done], ls=":", color="gray", label="arithmetic limit")
    for level in (1.0, 2.0):
        ratio_axis.axhline(level, color="black", lw=0.6, alpha=0.5)
    memory_axis.plot(tokens, [peak_gib(row) for row in done], marker="o", label="capture + trace")
    for axis, label in ((time_axis, "seconds"), (ratio_axis, "× one forward pass"), (memory_axis, "peak RSS, GiB")):
        axis.set_xscale("log")
        if axis is time_axis:
            axis.set_yscale("log")
            axis.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        else:
            axis.set_ylim(bottom=0)
        axis.set_xticks(tokens, [str(n) for n in tokens])
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.set_xlabel("tokens")
        axis.set_ylabel(label)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    time_axis.set_title("time")
    ratio_axis.set_title("over one forward pass (same process)")
    memory_axis.set_title("peak memory")
    figure.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


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
    plotter = plot_paired if rows and all(row["job"] == "paired" for row in rows) else plot
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
