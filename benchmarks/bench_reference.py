"""spantrace against the authors' reference package (``flashtrace`` 0.1.1 on PyPI): time, peak memory, agreement.

    .venv/bin/python benchmarks/bench_reference.py --setup        # once: benchmarks/.venv-ref (~1 min)
    .venv/bin/python benchmarks/bench_reference.py --lengths 1000 2000 4000 --out benchmarks/results/reference.json

``--setup`` creates ``benchmarks/.venv-ref`` with ``torch==2.13.0`` (the CPU build), then
``flashtrace==0.1.1`` with ``transformers==5.8.1`` (the version the authors' lock file pins). This script runs
in the main venv; every measured run is a fresh process (peak RSS is its own, read with ``wait4``) under an
address-space cap (``--mem-cap-gb``, default 20 GB = 18.6 GiB): our side runs this file with ``--child-ours``, the
reference side runs ``benchmarks/_reference_runner.py`` with the ref venv's python. Both load the same
weights (the safetensors copy of the built-in SmolLM2-135M-Instruct in spantrace's cache, float32; the
reference with ``attn_implementation="eager"``, which it needs for ``output_attentions``) and trace the
same token ids: a slice of the bundled public-domain haystack, prompt = first 3/4, span O = last 32 tokens.

What is compared (the reference cannot be called with our benchmark's exact convention through its
public ``FlashTrace.trace``, so each reference variant is paired with the spantrace trace that matches it):

- ``flashtrace`` (ours): span O, one hop over the whole generation T ∪ O — the benchmark's configuration.
- ``flashtrace`` (ref): the public ``FlashTrace.trace(method="flashtrace", output_span=O, reasoning_span=T)``.
  Its hop 0 is *not* the span O: it aggregates over the whole generation T ∪ O (``output_span`` only
  selects which rows of its matrix are filled), and hop 1 too. Its stop-token soft deletion is switched
  off here. Compared with ours traced on the span T ∪ O, ``hops=1``, ``stop_tokens=False``.
- ``flashtrace-defaults`` (ref): the same call with its stop-token defaults (``,``, ``.`` and whitespace
  tokens get zero sink weight and zero score). Compared with ours on T ∪ O with ``stop_tokens=True``, which
  also deletes other punctuation: the two stop sets differ, so agreement is close, not exact.
- ``flashtrace-answer`` (ref): ``LLMIFRAttribution.calculate_ifr_multi_hop(sink_span=O, thinking_span=T ∪ O)``,
  not exposed by its ``FlashTrace`` facade: hop 0 on O, hop 1 over T ∪ O, observation mask on the prompt —
  the benchmark's exact configuration. Compared with ours ``flashtrace``.
- ``ifr`` (both): token-wise IFR rows of the 32 span tokens, averaged, no hops (ref: ``method="ifr-matrix"``).

Agreement is over prompt positions (Spearman ρ of ranks, max |Δ|), for the final scores and for each hop's
raw scores; the JSON also holds full-length hop comparisons and both sides' ρ (hop mass shares).
``--dtype float64`` loads both models in float64, a check of the numerics (the reference still computes
its proximities in float32).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
HAYSTACK = "haystack_public_domain.txt"  # bundled with spantrace: spantrace.eval.tasks.files.data_file
REF_VENV = BENCH_DIR / ".venv-ref"
RUNNER = BENCH_DIR / "_reference_runner.py"
SCRATCH_PREFIX = "ref-"  # scratch files in the results folder (git-ignored)

TORCH_REQUIREMENT = "torch==2.13.0"  # first, so pip keeps the local CPU build
REF_REQUIREMENTS = ("flashtrace==0.1.1", "transformers==5.8.1")

OUR_JOBS = ("forward", "flashtrace", "ifr")
REF_METHODS = ("flashtrace", "flashtrace-answer", "flashtrace-defaults", "ifr")
# Which of our traces each reference method is compared with (see the module docstring).
OUR_MATCH = {
    "flashtrace": "flashtrace-gen",
    "flashtrace-defaults": "flashtrace-gen-stop",
    "flashtrace-answer": "flashtrace",
    "ifr": "ifr",
}
NOTES = (
    "ref flashtrace / flashtrace-defaults (the public FlashTrace.trace) put hop 0 on the whole generation T ∪ O, "
    "not on the span O: they are compared with ours traced on T ∪ O; ref flashtrace-answer (hop 0 on O, hop 1 "
    "over T ∪ O) with ours' benchmark trace.",
    "ref flashtrace runs with its stop-token deletion off; flashtrace-defaults keeps it on (stop set: ',', '.', "
    "whitespace) against ours' stop_tokens=True (every punctuation/whitespace token): the sets differ.",
    "the reference computes prox as |y|_1 − |y − z|_1 in float32 (cancellation): where the conventions match "
    "expect max |Δ| ~1e-5 at 1k tokens, growing with the sink count and length (~1e-4 at 2k-4k); its RMSNorm "
    "linearisation reads `eps`, absent on Llama norms, so it uses 1e-6 (the model: 1e-5; no visible effect here).",
    "the reference traces the same ids: its text tokenisation and the EOS it appends to a target are bypassed.",
)
DEFAULT_LENGTHS = (1000, 2000, 4000)
DEFAULT_REF_METHODS = ("flashtrace", "flashtrace-answer", "flashtrace-defaults")


# --- pure helpers (importable, no torch) ----------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setup", action="store_true", help="create/refresh benchmarks/.venv-ref, then exit")
    parser.add_argument("--lengths", type=int, nargs="+", default=list(DEFAULT_LENGTHS))
    parser.add_argument(
        "--ref-methods", nargs="*", default=list(DEFAULT_REF_METHODS), choices=[m for m in REF_METHODS if m != "ifr"]
    )
    parser.add_argument(
        "--ifr-lengths", type=int, nargs="*", default=None, help="lengths for token-wise IFR (default: the smallest)"
    )
    parser.add_argument("--hops", type=int, default=1)
    parser.add_argument("--span-tokens", type=int, default=32, help="the traced span: the last N tokens")
    parser.add_argument("--prompt-share", type=float, default=0.75, help="prompt / total tokens (rest: generation)")
    parser.add_argument(
        "--mem-cap-gb", type=float, default=20.0, help="address-space cap of every run, 10^9 bytes (RLIMIT_AS)"
    )
    parser.add_argument("--ref-fix-eps", action="store_true", help="reference uses the model's RMSNorm eps (see notes)")
    parser.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        default="float32",
        help="model dtype on both sides (float64: a check)",
    )
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds before a run is killed")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/reference.json"))
    parser.add_argument("--child-prepare", nargs=2, metavar=("LENGTH", "OUTPUT"), help=argparse.SUPPRESS)
    parser.add_argument("--child-ours", nargs=3, metavar=("JOB", "INPUT", "OUTPUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_ours and args.child_ours[0] not in OUR_JOBS:
        parser.error(f"--child-ours: the job must be one of {OUR_JOBS}")
    if any(n < 4 * args.span_tokens for n in args.lengths):
        parser.error(f"every length must be at least {4 * args.span_tokens} tokens")
    if args.ifr_lengths is None:
        args.ifr_lengths = [min(args.lengths)]
    return args


def average_ranks(values: Any) -> Any:
    """Ranks 0…n−1 of ``values``, ties sharing their average rank (like scipy's ``rankdata``, minus one)."""
    import numpy as np

    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    breaks = np.flatnonzero(np.diff(ordered)) + 1
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks, [values.size]))
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat((starts + ends - 1) / 2.0, ends - starts)
    return ranks


def spearman(a: Any, b: Any) -> float | None:
    """Spearman rank correlation; None where it is undefined (fewer than two values, or a constant side)."""
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"cannot compare arrays of shapes {a.shape} and {b.shape}")
    if a.size < 2:
        return None
    ra, rb = average_ranks(a), average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    norm = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    return None if norm == 0.0 else float((ra * rb).sum() / norm)


def agreement(ours: Any, ref: Any, *, top_k: int = 10) -> dict[str, Any]:
    """How closely ``ref`` scores agree with ``ours``: Spearman ρ, max |Δ|, scale and top-k overlap."""
    import numpy as np

    a, b = np.asarray(ours, dtype=np.float64).ravel(), np.asarray(ref, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"cannot compare arrays of shapes {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("scores must be finite")
    k = min(top_k, a.size)
    top = len(set(np.argsort(-a, kind="mergesort")[:k]) & set(np.argsort(-b, kind="mergesort")[:k]))
    scale = float(np.abs(a).max()) if a.size else 0.0
    max_diff = float(np.abs(a - b).max()) if a.size else 0.0
    return {
        "n": int(a.size),
        "spearman": spearman(a, b),
        "max_abs_diff": max_diff,
        "max_abs_ours": scale,
        "rel_max_abs_diff": max_diff / scale if scale > 0 else None,
        f"top{top_k}_overlap": top / k if k else None,
    }


def compare(ours: dict[str, Any], ref: dict[str, Any], prompt_length: int) -> dict[str, Any]:
    """Agreement of a reference trace with ours: final scores and every hop, over prompt positions.

    ``ours``: ``final`` and ``hops`` (full-length lists) and ``rho``; ``ref``: ``final_prompt`` (or
    ``final``), optionally ``hops`` (full length) and ``rho``.
    """
    p = prompt_length
    ref_final = ref.get("final_prompt") or ref["final"][:p]
    out: dict[str, Any] = {"final": agreement(ours["final"][:p], ref_final[:p])}
    for k, (mine, theirs) in enumerate(zip(ours.get("hops", []), ref.get("hops") or [], strict=False)):
        out[f"hop{k}"] = agreement(mine[:p], theirs[:p])
        out[f"hop{k}_all_positions"] = agreement(mine, theirs)
    if ours.get("rho") and ref.get("rho"):
        count = min(len(ours["rho"]), len(ref["rho"]))
        out["rho"] = {
            "ours": ours["rho"],
            "ref": ref["rho"],
            "max_abs_diff": max(abs(x - y) for x, y in zip(ours["rho"][:count], ref["rho"][:count], strict=True)),
        }
    return out


def _cell(value: float | None, fmt: str, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}{fmt}}"


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The summary table: one line per run; agreement is of the final scores with the matching trace of ours."""
    header = (
        f"{'tokens':>6}  {'implementation':<15} {'method':<20} {'seconds':>8} {'× fwd':>6} {'peak RSS GiB':>12} "
        f"{'Spearman ρ':>10} {'max |Δ|':>9}  status"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        final = (row.get("agreement") or {}).get("final") or {}
        status = row.get("status", "ok")
        if status != "ok" and row.get("error"):
            status = f"{status}: {row['error'][:60]}"
        lines.append(
            f"{row['tokens']:>6}  {row['implementation']:<15} {row['method']:<20} "
            f"{_cell(row.get('seconds'), '.2f', 8)} {_cell(row.get('x_forward'), '.2f', 6)} "
            f"{_cell(row.get('peak_rss_gib'), '.2f', 12)} {_cell(final.get('spearman'), '.5f', 10)} "
            f"{_cell(final.get('max_abs_diff'), '.2e', 9)}  {status}"
        )
    return "\n".join(lines)


def format_details(rows: Sequence[dict[str, Any]]) -> str:
    """Per-hop agreement of every reference run that has one."""
    lines = []
    for row in rows:
        comparison = row.get("agreement")
        if not comparison:
            continue
        lines.append(f"{row['tokens']} tokens, ref {row['method']} vs ours {row['compared_with']}:")
        for key, value in comparison.items():
            if key == "rho":
                ours_rho = ", ".join(f"{x:.6f}" for x in value["ours"])
                ref_rho = ", ".join(f"{x:.6f}" for x in value["ref"])
                lines.append(f"    rho   ours [{ours_rho}]  ref [{ref_rho}]  max |Δ| {value['max_abs_diff']:.2e}")
            else:
                rho = "-" if value["spearman"] is None else f"{value['spearman']:.6f}"
                lines.append(
                    f"    {key:<20} Spearman {rho:>9}  max |Δ| {value['max_abs_diff']:.2e}"
                    f"  (max |score| {value['max_abs_ours']:.3g}, n={value['n']})"
                )
    return "\n".join(lines)


# --- child processes ------------------------------------------------------------------------------------


def _runner() -> ModuleType:
    """``_reference_runner`` (stdlib-only at import) for its memory helpers."""
    spec = importlib.util.spec_from_file_location("_reference_runner", RUNNER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_child(command: list[str], timeout: float) -> dict[str, Any]:
    """Run ``command`` to the end; its exit code, wall seconds, peak RSS (``wait4``) and output tail."""
    with tempfile.TemporaryFile() as log:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        killed = False
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if not killed and time.perf_counter() - started > timeout:
                process.kill()
                killed = True
            time.sleep(0.1)
        process.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        tail = log.read()[-3000:].decode(errors="replace")
    return {
        "returncode": process.returncode,
        "wall_seconds": time.perf_counter() - started,
        "peak_rss_gib": usage.ru_maxrss / 2**20,
        "timed_out": killed,
        "log_tail": tail,
    }


def child_prepare(length: int, output: Path, prompt_share: float, span_tokens: int) -> None:
    """Write the token ids, prompt length, span and model folder for one length (main venv)."""
    from transformers import AutoTokenizer

    import spantrace
    from spantrace.eval.tasks.files import data_file
    from spantrace.loading import builtin

    entry = builtin.cache_entry()
    if not builtin.is_complete(entry):
        spantrace.load()  # builds the safetensors cache of the built-in model
    tokenizer = AutoTokenizer.from_pretrained(entry)
    haystack = data_file(HAYSTACK)
    text = haystack.read_text(encoding="utf-8")
    chars = length * 8
    while True:
        ids = tokenizer(text[:chars], add_special_tokens=False)["input_ids"]
        if len(ids) >= length or chars >= len(text):
            break
        chars *= 2
    if len(ids) < length:
        raise SystemExit(f"the haystack {haystack} has only {len(ids)} tokens; asked for {length}")
    ids = [int(i) for i in ids[:length]]
    prompt_length = int(length * prompt_share)
    spec = {
        "ids": ids,
        "prompt_length": prompt_length,
        "span": [length - span_tokens, length],
        "model_dir": str(entry),
        "source": f"{HAYSTACK}[:{chars}] tokenised, first {length} tokens",
    }
    output.write_text(json.dumps(spec))


def _pack(result: Any) -> dict[str, Any]:
    return {
        "final": [float(x) for x in result.scores],
        "hops": [[float(x) for x in hop] for hop in result.hop_scores],
        "rho": [float(x) for x in result.rho],
        "span": list(result.span),
        "recursive_span": list(result.recursive_span) if result.recursive_span is not None else None,
    }


def child_ours(job: str, input_path: Path, output: Path, hops: int, mem_cap_gb: float | None, dtype: str) -> None:
    """One run of ours in this (fresh) process; writes seconds, scores and status to ``output``."""
    runner = _runner()
    runner.limit_memory(mem_cap_gb)
    record: dict[str, Any] = {"job": job, "status": "ok"}
    spec = json.loads(input_path.read_text())
    try:
        import torch

        import spantrace

        record["threads"] = torch.get_num_threads()
        started = time.perf_counter()
        model = spantrace.load(dtype=getattr(torch, dtype))
        record["dtype"] = dtype
        record["load_seconds"] = time.perf_counter() - started
        record["attn_implementation"] = getattr(model.hf_model.config, "_attn_implementation", None)
        ids = torch.tensor(spec["ids"])
        prompt_length, span = spec["prompt_length"], tuple(spec["span"])
        if job == "forward":  # what the model itself costs: one forward pass with logits
            with torch.inference_mode():
                started = time.perf_counter()
                model.hf_model(ids[None], use_cache=False)
                record["seconds"] = time.perf_counter() - started
        else:
            started = time.perf_counter()
            run = model.run(input_ids=ids, prompt_length=prompt_length, progress=False)
            record["capture_seconds"] = time.perf_counter() - started
            result = run.trace(span, method=job, hops=hops if job == "flashtrace" else 0)
            record["seconds"] = time.perf_counter() - started
            record["peak_rss_gib_timed"] = runner.peak_rss_gib()
            traces = {job: _pack(result)}
            if job == "flashtrace":  # the traces matching the reference's public call (not timed)
                generation = (prompt_length, len(spec["ids"]))
                for key, stop in (("flashtrace-gen", False), ("flashtrace-gen-stop", True)):
                    traces[key] = _pack(run.trace(generation, method="flashtrace", hops=hops, stop_tokens=stop))
            record["traces"] = traces
    except Exception as error:  # MemoryError included
        record["status"] = "oom" if runner.is_out_of_memory(error) else "error"
        record["error"] = f"{type(error).__name__}: {str(error)[:500]}"
    record["peak_rss_gib"] = runner.peak_rss_gib()
    output.write_text(json.dumps(record))


# --- the benchmark --------------------------------------------------------------------------------------


def ref_python() -> Path:
    return REF_VENV / "bin" / "python"


def setup_ref_venv() -> None:
    """Create benchmarks/.venv-ref and install the reference package into it."""
    if not ref_python().exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(REF_VENV)], check=True)
    pip = [str(ref_python()), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, TORCH_REQUIREMENT], check=True)
    subprocess.run([*pip, TORCH_REQUIREMENT, *REF_REQUIREMENTS], check=True)
    versions = subprocess.run(
        [
            str(ref_python()),
            "-c",
            "import torch, transformers, importlib.metadata as m; "
            "print(m.version('flashtrace'), torch.__version__, transformers.__version__)",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    print(f"{REF_VENV}: flashtrace, torch, transformers = {versions.stdout.strip()}")


def _finish_row(row: dict[str, Any], child: dict[str, Any], record: dict[str, Any] | None) -> dict[str, Any]:
    row["peak_rss_gib"] = child["peak_rss_gib"]
    row["wall_seconds"] = child["wall_seconds"]
    if record is None:
        if child["timed_out"]:
            row["status"], row["error"] = "timeout", "killed after --timeout"
        elif child["returncode"] < 0:
            row["status"] = "killed"
            row["error"] = f"signal {-child['returncode']} (the kernel's OOM killer sends 9)"
        else:
            row["status"], row["error"] = "error", child["log_tail"].strip().splitlines()[-1:] or ["no output"]
            row["error"] = row["error"][0]
        row["log_tail"] = child["log_tail"]
        return row
    row["status"] = record.get("status", "error")
    for key in ("seconds", "load_seconds", "capture_seconds", "threads", "attn_implementation", "error", "notes"):
        if key in record:
            row[key] = record[key]
    if "traceback" in record:
        row["traceback"] = record["traceback"]
    return row


def run_ours(job: str, length: int, input_path: Path, scratch: Path, args: argparse.Namespace) -> dict[str, Any]:
    output = scratch / f"{SCRATCH_PREFIX}ours-{job}-{length}.json"
    output.unlink(missing_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--child-ours", job, str(input_path), str(output)]
    command += ["--hops", str(args.hops), "--mem-cap-gb", str(args.mem_cap_gb), "--dtype", args.dtype]
    child = run_child(command, args.timeout)
    record = json.loads(output.read_text()) if output.exists() else None
    row = {"tokens": length, "implementation": "spantrace", "method": job}
    row = _finish_row(row, child, record)
    if record and "peak_rss_gib_timed" in record:  # the untimed extra traces ran after: report the timed run's peak
        row["peak_rss_gib_process"], row["peak_rss_gib"] = row["peak_rss_gib"], record["peak_rss_gib_timed"]
    row["_traces"] = (record or {}).get("traces", {})
    return row


def run_ref(method: str, length: int, input_path: Path, scratch: Path, args: argparse.Namespace) -> dict[str, Any]:
    output = scratch / f"{SCRATCH_PREFIX}flashtrace-{method}-{length}.json"
    output.unlink(missing_ok=True)
    command = [str(ref_python()), str(RUNNER), str(input_path), str(output), "--method", method]
    command += ["--hops", str(args.hops), "--mem-cap-gb", str(args.mem_cap_gb), "--dtype", args.dtype]
    command += ["--fix-eps"] if args.ref_fix_eps else []
    child = run_child(command, args.timeout)
    record = json.loads(output.read_text()) if output.exists() else None
    row = {"tokens": length, "implementation": "flashtrace 0.1.1", "method": method, "compared_with": OUR_MATCH[method]}
    row = _finish_row(row, child, record)
    if record:
        row["versions"] = record.get("versions")
        row["fix_eps"] = record.get("fix_eps")
    row["_scores"] = record if record and record.get("status") == "ok" else None
    return row


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    if args.child_prepare:
        child_prepare(int(args.child_prepare[0]), Path(args.child_prepare[1]), args.prompt_share, args.span_tokens)
        return []
    if args.child_ours:
        job, input_path, output = args.child_ours
        child_ours(job, Path(input_path), Path(output), args.hops, args.mem_cap_gb, args.dtype)
        return []
    if args.setup:
        setup_ref_venv()
        return []
    if not ref_python().exists():
        raise SystemExit(f"no reference venv at {REF_VENV}; create it first:\n    {sys.executable} {__file__} --setup")

    scratch = args.out.parent
    scratch.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for length in args.lengths:
        input_path = scratch / f"{SCRATCH_PREFIX}inputs-{length}.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--child-prepare", str(length), str(input_path)]
        command += ["--prompt-share", str(args.prompt_share), "--span-tokens", str(args.span_tokens)]
        prepared = run_child(command, args.timeout)
        if prepared["returncode"] != 0:
            raise SystemExit(f"could not prepare the token ids:\n{prepared['log_tail']}")
        prompt_length = json.loads(input_path.read_text())["prompt_length"]
        jobs: list[tuple[str, str]] = [("ours", "forward"), ("ours", "flashtrace")]
        jobs += [("ref", method) for method in args.ref_methods]
        if length in args.ifr_lengths:
            jobs += [("ours", "ifr"), ("ref", "ifr")]
        ours_traces: dict[str, Any] = {}
        forward_seconds = None
        for side, name in jobs:
            row = (run_ours if side == "ours" else run_ref)(name, length, input_path, scratch, args)
            ours_traces.update(row.pop("_traces", {}))
            scores = row.pop("_scores", None)
            if side == "ours" and name == "forward" and row["status"] == "ok":
                forward_seconds = row["seconds"]
            if forward_seconds and row.get("seconds") is not None:
                row["x_forward"] = row["seconds"] / forward_seconds
            if scores is not None and OUR_MATCH[name] in ours_traces:
                row["agreement"] = compare(ours_traces[OUR_MATCH[name]], scores, prompt_length)
                row["ours_rho"], row["ref_rho"] = ours_traces[OUR_MATCH[name]]["rho"], scores.get("rho")
            rows.append(row)
            print(format_table([row]).splitlines()[-1], flush=True)
    print()
    print(format_table(rows))
    print()
    print(format_details(rows))
    print("\nnotes:\n" + "\n".join(f"  - {note}" for note in NOTES))
    meta = {
        "notes": list(NOTES),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "mem_cap_gb": args.mem_cap_gb,
        "mem_cap_gib": args.mem_cap_gb * 1e9 / 2**30,
        "ref_fix_eps": args.ref_fix_eps,
        "dtype": args.dtype,
        "hops": args.hops,
        "span_tokens": args.span_tokens,
        "prompt_share": args.prompt_share,
        "ref_requirements": [TORCH_REQUIREMENT, *REF_REQUIREMENTS],
        "command": " ".join([Path(sys.executable).name, *sys.argv]) if argv is None else None,
    }
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"\nwrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
