"""The resumable evaluation runner: model × task × methods × n samples → one JSONL row per (sample, method).

For each sample: build the prompt (``prompts.build_prompt``), let the model answer greedily, capture
one ``Run``, score the answer, then for each method trace the chosen span and measure the deletion
and insertion curves on the ranked tokens (``prompts.EvalTokens``, the same for every method).

Rows are appended, flushed and fsync'ed one at a time. On start the runner reads the file back,
cuts off a torn last line (a crash mid-write), and skips every (sample_id, method) already there,
so a run killed at any point and restarted ends with exactly one row per pair. Every row carries
the configuration's fingerprint; resuming into a file written with other settings is an error.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import SpanTraceError
from . import metrics
from .curves import deletion_curve, insertion_curve
from .prompts import EvalTokens, Sample, build_prompt
from .tasks import make_samples, score_answer

if TYPE_CHECKING:
    from ..api import Model

DEFAULT_METHODS = ("flashtrace", "ifr", "attention-last", "occlusion")


@dataclass(frozen=True)
class EvalConfig:
    """Everything that decides a row's numbers (``n`` aside: raising it later extends the same run)."""

    task: str
    methods: tuple[str, ...] = DEFAULT_METHODS
    n: int = 10
    length: int = 1024
    seed: int = 42
    steps: int = 20
    max_new_tokens: int = 64
    span: str = "output"
    hops: int = 1
    scope: str = "user"
    stop_tokens: str = "keep"
    recovery_frac: float = 0.1
    chat: bool = True
    haystack: str | None = None
    data_path: str | None = None
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def fingerprint(self) -> str:
        settings = asdict(self)
        del settings["n"], settings["methods"]  # more samples or methods extend a run; they do not change rows
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


class ResultsFile:
    """An append-only JSONL file of rows that survives crashes: see the module docstring."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.rows: list[dict[str, Any]] = self._read_and_repair()

    def _read_and_repair(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]  # a torn last line has no newline yet
        if len(complete) != len(data):
            with self.path.open("r+b") as handle:
                handle.truncate(len(complete))
        rows, seen = [], set()
        for number, line in enumerate(complete.decode("utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise SpanTraceError(f"{self.path} line {number} is not JSON ({error}); fix or remove it") from error
            key = (row.get("sample_id"), row.get("method"))
            if key not in seen:  # a duplicate can only come from a hand-edited file: keep the first
                seen.add(key)
                rows.append(row)
        return rows

    def done(self) -> set[tuple[str, str]]:
        return {(row["sample_id"], row["method"]) for row in self.rows}

    def append(self, row: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.rows.append(row)


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    """Peak memory since the last reset: CUDA allocations on a GPU, else the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_allocated"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10), "process_peak_rss"


def evaluate_sample(
    model: Model, sample: Sample, config: EvalConfig, methods: Iterable[str]
) -> Iterable[dict[str, Any]]:
    """Rows of ``sample`` for each of ``methods`` (a generator: one row as soon as it is measured)."""
    tokenizer = model.tokenizer
    prompt = build_prompt(tokenizer, sample, chat=config.chat)
    base = {"task": sample.task, "sample_id": sample.sample_id, "model": model.model_id, "config": config.fingerprint()}
    generated = model.generate(prompt.ids, max_new_tokens=config.max_new_tokens, progress=False)
    output = tokenizer.decode(generated, skip_special_tokens=True)
    base.update(output=output, correct=score_answer(sample, output), answers=list(sample.answers))
    if not generated:
        for method in methods:
            yield {**base, "method": method, "error": "the model generated nothing"}
        return
    run = model.run(input_ids=prompt.ids + generated, prompt_length=prompt.prompt_length, progress=False)
    positions = EvalTokens(config.scope, config.stop_tokens).positions(prompt, run.tokens)
    gold = np.isin(positions, prompt.gold_positions)
    base.update(prompt_tokens=prompt.prompt_length, ranked_tokens=int(positions.size), target_tokens=len(generated),
                gold_tokens=int(gold.sum()))
    for method in methods:
        if model.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(model.device)
        started = time.perf_counter()
        try:
            result = run.trace(config.span, method=method, hops=config.hops,
                               method_options=config.method_options.get(method))
        except SpanTraceError as error:
            yield {**base, "method": method, "error": str(error)}
            continue
        trace_seconds = time.perf_counter() - started
        memory, memory_kind = peak_memory_mb(model.device)
        scores = result.scores[: prompt.prompt_length].astype(np.float64)
        deletion = deletion_curve(run, scores, positions=positions, steps=config.steps)
        insertion = insertion_curve(run, scores, positions=positions, steps=config.steps)
        yield {
            **base,
            "method": method,
            "rise": metrics.rise(deletion.values),
            "mas": metrics.mas(deletion.values, deletion.density),
            "insertion_auc": metrics.insertion_auc(insertion.values),
            "recovery": metrics.recovery(scores[positions], gold, config.recovery_frac) if gold.any() else None,
            "flat": metrics.is_flat(deletion.values),
            "trace_s": trace_seconds,
            "device": model.device.type,
            "peak_memory_mb": memory,
            "memory_kind": memory_kind,
            "deletion_curve": deletion.values.tolist(),
            "density": deletion.density.tolist(),
            "insertion_curve": insertion.values.tolist(),
        }


def open_results(config: EvalConfig, out: Path | str) -> ResultsFile:
    """The results file ``out`` for ``config`` (repaired if torn); an error if it holds rows of other settings."""
    results = ResultsFile(out)
    foreign = {row.get("config") for row in results.rows} - {config.fingerprint()}
    if foreign:
        raise SpanTraceError(
            f"{results.path} holds rows made with other settings (config {sorted(map(str, foreign))}); "
            "write to a new file, or resume with the same options"
        )
    return results


def config_samples(config: EvalConfig, tokenizer: Any) -> list[Sample]:
    """The ``config.n`` samples of ``config.task`` (RULER tasks are fitted to ``tokenizer``)."""
    return make_samples(config.task, config.n, tokenizer=tokenizer, length=config.length, seed=config.seed,
                        chat=config.chat, path=Path(config.data_path) if config.data_path else None,
                        haystack=config.haystack)


def pending(
    samples: Iterable[Sample], config: EvalConfig, done: set[tuple[str, str]]
) -> list[tuple[Sample, list[str]]]:
    """Each sample with the methods it still lacks a row for, in order; samples with nothing left are dropped."""
    work = []
    for sample in samples:
        todo = [method for method in config.methods if (sample.sample_id, method) not in done]
        if todo:
            work.append((sample, todo))
    return work


def run_eval(
    model: Model,
    config: EvalConfig,
    out: Path | str,
    *,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> ResultsFile:
    """Evaluate ``config`` on ``model``, appending rows to ``out`` and skipping those already there.

    ``spantrace.eval.distributed.run_eval_ray`` does the same with samples spread over Ray workers.
    """
    results = open_results(config, out)
    for sample, todo in pending(config_samples(config, model.tokenizer), config, results.done()):
        for row in evaluate_sample(model, sample, config, todo):
            results.append(row)
            if on_row is not None:
                on_row(row)
    return results
