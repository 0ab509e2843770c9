"""Run the authors' reference package (``flashtrace`` on PyPI) once, on given token ids, in its own venv.

Executed by ``benchmarks/.venv-ref/bin/python``, never imported by spantrace; ``bench_reference.py`` starts it:

    benchmarks/.venv-ref/bin/python benchmarks/_reference_runner.py INPUT.json OUTPUT.json --method flashtrace

INPUT.json holds ``ids``, ``prompt_length``, ``span`` (end exclusive, absolute positions) and ``model_dir``
(a transformers folder: the safetensors copy of spantrace's built-in model). OUTPUT.json receives the
scores, the seconds of the traced call (forward pass included, model loading not), the peak RSS and a
status: ``ok``, ``oom`` (an allocation failed under ``--mem-cap-gb``) or ``error``.

The reference tokenises text itself and appends EOS to a given target; to trace exactly our token ids
this runner replaces its ``target_response`` step (which only fills the prompt/generation id and token
attributes) with one that installs the ids as they are. Methods:

- ``flashtrace``: ``FlashTrace.trace(method="flashtrace")``, the public API, with its stop-token soft
  deletion switched off (its module constants ``STOP_TOKENS``/``SKIP_WHITESPACE``);
- ``flashtrace-defaults``: the same call with the package's own stop-token defaults;
- ``flashtrace-answer``: ``LLMIFRAttribution.calculate_ifr_multi_hop``: hop 0 on the span only, later
  hops over the recursive span (the whole generation here);
- ``ifr``: ``FlashTrace.trace(method="ifr-matrix")``, token-wise IFR rows of the span, averaged.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
import traceback
from pathlib import Path
from typing import Any

METHODS = ("flashtrace", "flashtrace-defaults", "flashtrace-answer", "ifr")


def limit_memory(cap_gb: float | None) -> None:
    """Cap this process's address space at ``cap_gb`` × 10⁹ bytes (like ``ulimit -v``); allocations past it fail."""
    if cap_gb:
        cap = int(cap_gb * 1e9)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def is_out_of_memory(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, MemoryError) or any(
        marker in text for marker in ("can't allocate memory", "not enough memory", "out of memory", "cannot allocate")
    )


def install_token_ids(ids: list[int], prompt_length: int, tokenizer: Any) -> None:
    """Make every reference engine trace ``ids`` as given: prompt ``ids[:P]``, generation ``ids[P:]`` (no EOS added)."""
    import torch
    from flashtrace import attribution

    prompt_ids, generation_ids = ids[:prompt_length], ids[prompt_length:]
    pieces = [tokenizer.decode([i]) for i in ids]

    def target_response(self: Any, prompt: str, target: str) -> str:
        device = self.device
        self.user_prompt = self.prompt = "".join(pieces[:prompt_length])
        self.user_prompt_ids = torch.tensor([prompt_ids], device=device)
        self.prompt_ids = torch.tensor([prompt_ids], device=device)
        self.generation_ids = torch.tensor([generation_ids], device=device)
        self.generation = "".join(pieces[prompt_length:])
        self.user_prompt_indices = list(range(prompt_length))
        self.chat_prompt_indices = []
        self.prompt_tokens = pieces[:prompt_length]
        self.user_prompt_tokens = pieces[:prompt_length]
        self.generation_tokens = pieces[prompt_length:]
        return self.generation

    attribution.LLMAttribution.target_response = target_response


def use_model_norm_eps(model: Any) -> int:
    """Give every RMSNorm an ``eps`` attribute equal to the one the model uses (``variance_epsilon``).

    The reference reads ``module.eps`` when it builds value vectors and falls back to 1e-6 when it is
    absent, as it is on transformers' Llama/Qwen RMSNorm (which call it ``variance_epsilon``).
    """
    patched = 0
    for module in model.modules():
        if hasattr(module, "variance_epsilon") and not hasattr(module, "eps"):
            module.eps = module.variance_epsilon
            patched += 1
    return patched


def as_list(values: Any) -> list[float]:
    import torch

    if torch.is_tensor(values):
        return [float(x) for x in values.detach().float().cpu().tolist()]
    return [float(x) for x in values]


def hop_vectors(raw: Any) -> list[list[float]]:
    """Full-length raw score vector of every hop from the reference's multi-hop result."""
    return [as_list(hop.token_importance_total) for hop in raw.raw_attributions]


def trace(method: str, model: Any, tokenizer: Any, spec: dict[str, Any], hops: int) -> dict[str, Any]:
    from flashtrace import FlashTrace, improved
    from flashtrace.attribution import LLMIFRAttribution

    ids, prompt_length = spec["ids"], spec["prompt_length"]
    start, end = spec["span"]
    generated = len(ids) - prompt_length
    output_span = (start - prompt_length, end - 1 - prompt_length)  # inclusive generation indices
    reasoning_span = (0, output_span[0] - 1) if output_span[0] > 0 else None
    notes: list[str] = []
    if method == "flashtrace":
        improved.STOP_TOKENS, improved.SKIP_WHITESPACE = [], False
    if method == "flashtrace-defaults" and improved.is_stop_token(tokenizer.decode([ids[-1]])):
        # The reference never lets a span end on a trailing stop token (it assumes it is EOS-like).
        output_span = (output_span[0], output_span[1] - 1)
        notes.append("the last token is a stop token: the reference excludes it from every span")
    started = time.perf_counter()
    if method in ("flashtrace", "flashtrace-defaults", "ifr"):
        tracer = FlashTrace(model, tokenizer)
        result = tracer.trace(
            prompt="",
            target="",
            output_span=output_span,
            reasoning_span=reasoning_span,
            hops=hops,
            method="ifr-matrix" if method == "ifr" else "flashtrace",
        )
        seconds = time.perf_counter() - started
        out: dict[str, Any] = {"final_prompt": as_list(result.scores), "rho": as_list(result.thinking_ratios)}
        raw = result.metadata.get("ifr", {}).get("raw")
        if raw is not None:
            out["hops"] = hop_vectors(raw)
            out["final"] = as_list(raw.observation["sum"])
            span = result.metadata["ifr"].get("all_gen_span_absolute")
            out["hop_sink_span"] = [int(span[0]), int(span[1]) + 1] if span else None
    elif method == "flashtrace-answer":
        engine = LLMIFRAttribution(model, tokenizer)
        result = engine.calculate_ifr_multi_hop(
            "", target="", sink_span=output_span, thinking_span=(0, generated - 1), n_hops=hops
        )
        seconds = time.perf_counter() - started
        raw = result.metadata["ifr"]["raw"]
        out = {
            "final": as_list(raw.observation["sum"]),
            "final_prompt": as_list(raw.observation["sum"])[:prompt_length],
            "hops": hop_vectors(raw),
            "rho": as_list(raw.thinking_ratios),
            "hop_sink_span": [start, end],
        }
    else:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    out.update(seconds=seconds, notes=notes)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--method", choices=METHODS, required=True)
    parser.add_argument("--hops", type=int, default=1, help="recursive hops (the FlashTrace methods)")
    parser.add_argument("--mem-cap-gb", type=float, default=None, help="address-space cap, 10^9 bytes (RLIMIT_AS)")
    parser.add_argument("--fix-eps", action="store_true", help="let the reference use the model's RMSNorm eps")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="model dtype")
    args = parser.parse_args(argv)
    limit_memory(args.mem_cap_gb)
    spec = json.loads(args.input.read_text())
    record: dict[str, Any] = {"method": args.method, "status": "ok", "fix_eps": args.fix_eps, "dtype": args.dtype}
    try:
        import flashtrace
        import torch
        import transformers
        from flashtrace import load_model_and_tokenizer

        record["versions"] = {
            "flashtrace": getattr(flashtrace, "__version__", None) or _dist_version("flashtrace"),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        }
        record["threads"] = torch.get_num_threads()
        started = time.perf_counter()
        model, tokenizer = load_model_and_tokenizer(
            spec["model_dir"], device_map=None, dtype=getattr(torch, args.dtype), attn_implementation="eager"
        )
        record["load_seconds"] = time.perf_counter() - started
        record["attn_implementation"] = model.config._attn_implementation
        if args.fix_eps:
            record["eps_patched_norms"] = use_model_norm_eps(model)
        install_token_ids(spec["ids"], spec["prompt_length"], tokenizer)
        record.update(trace(args.method, model, tokenizer, spec, args.hops))
    except Exception as error:  # MemoryError included
        record["status"] = "oom" if is_out_of_memory(error) else "error"
        record["error"] = f"{type(error).__name__}: {str(error)[:500]}"
        if record["status"] == "error":
            record["traceback"] = traceback.format_exc()[-3000:]
    record["peak_rss_gib"] = peak_rss_gib()
    args.output.write_text(json.dumps(record))


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
