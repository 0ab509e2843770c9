"""Trace time and peak memory against one forward pass, on the built-in model.

    .venv/bin/python benchmarks/bench_trace.py --lengths 1000 2000 4000 --out benchmarks/results/trace.json

Each (length, job) runs in a fresh process so its peak RSS is its own. The sequence is text from
the shared public-domain haystack (or random ids when it is absent): the first 3/4 is the prompt,
the rest the "generation" (``--prompt-share``); the traced span is its last 32 tokens, with one
recursive hop over the whole generation (the paper's default, T ∪ O).
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

HAYSTACK = Path(__file__).resolve().parents[2] / "shared" / "data" / "haystack_public_domain.txt"
JOBS = ("forward", "flashtrace", "ifr")
PROMPT_SHARE = 0.75  # set by --prompt-share


def tiny_model():
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


def token_ids(model, length: int):
    import torch

    if HAYSTACK.is_file() and model.tokenizer is not None:
        text = HAYSTACK.read_text(encoding="utf-8")[: length * 8]
        ids = model.tokenizer(text, add_special_tokens=False)["input_ids"][:length]
        if len(ids) == length:
            return torch.tensor(ids)
    return torch.randint(10, 40000, (length,), generator=torch.Generator().manual_seed(0))


def measure(job: str, length: int, source: str | None) -> dict:
    """Run one job in this process and report seconds and peak RSS."""
    import torch

    import spantrace

    torch.manual_seed(0)
    model = tiny_model() if source == "tiny" else spantrace.load(source)
    ids = token_ids(model, length)
    prompt_length = int(length * PROMPT_SHARE)
    span = (length - min(32, (length - prompt_length) // 2), length)
    row = {"job": job, "tokens": length, "prompt_tokens": prompt_length, "span": list(span)}
    row["threads"] = torch.get_num_threads()
    if job == "forward":  # what the model itself costs: one sdpa forward pass with logits
        with torch.inference_mode():
            started = time.perf_counter()
            model.hf_model(ids[None], use_cache=False)
            row["seconds"] = time.perf_counter() - started
    else:
        started = time.perf_counter()
        run = model.run(input_ids=ids, prompt_length=prompt_length)
        capture = time.perf_counter() - started
        result = run.trace(span, method=job, hops=1)
        row["seconds"] = time.perf_counter() - started
        row["capture_seconds"] = capture
        row["hop_seconds"] = [result.timings[f"hop{k}_s"] for k in range(2)]
    row["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1000, 2000, 4000])
    parser.add_argument("--jobs", nargs="+", default=["forward", "flashtrace"], choices=JOBS)
    parser.add_argument("--model", default=None, help="model source (default: the built-in model)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/trace.json"))
    parser.add_argument("--smoke", action="store_true", help="a tiny random model at 64 and 128 tokens, all jobs")
    parser.add_argument("--one", nargs=2, metavar=("JOB", "LENGTH"), help=argparse.SUPPRESS)
    parser.add_argument("--prompt-share", type=float, default=0.75, help="prompt / total tokens (rest: generation)")
    args = parser.parse_args(argv)
    global PROMPT_SHARE
    PROMPT_SHARE = args.prompt_share
    if args.smoke:
        args.model, args.lengths, args.jobs = "tiny", [64, 128], list(JOBS)
    if args.one:  # child process
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.model)))
        return []
    rows = []
    print(f"{'tokens':>7} {'job':>11} {'seconds':>9} {'× forward':>10} {'peak RSS GiB':>13}")
    for length in args.lengths:
        forward = None
        for job in args.jobs:
            command = [sys.executable, __file__, "--one", job, str(length), "--prompt-share", str(args.prompt_share)]
            if args.model:
                command += ["--model", args.model]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                row = {"job": job, "tokens": length, "error": done.stderr.strip().splitlines()[-1:]}
                print(f"{length:>7} {job:>11}   failed: {row['error']}")
                rows.append(row)
                continue
            row = json.loads(done.stdout.strip().splitlines()[-1])
            forward = row["seconds"] if job == "forward" else forward
            ratio = f"{row['seconds'] / forward:.2f}" if forward else "-"
            print(f"{length:>7} {job:>11} {row['seconds']:>9.2f} {ratio:>10} {row['peak_rss_gib']:>13.2f}")
            rows.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.machine(), "processor": platform.processor(), "python": platform.python_version()}
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
