"""The resumable evaluation runner: model × task × methods × n samples → one JSONL row per (sample, method).

For each sample: prepare the prompt once through ``spantrace.inputs`` (``prompts.eval_prompt``: the user
and gold positions, and the documents' token ranges), let the model answer greedily once, capture one
``Run`` of those very ids, score the answer, then for each method trace the chosen span and measure the
deletion and insertion curves on the ranked tokens (``prompts.EvalTokens``, the same for every method).

Rows go to a ``results.ResultsFile``: locked against a second writer, each row written whole and fsync'ed,
and never a file that is not a results file. On start the runner reads the file back (cutting off a
torn last line, a crash mid-write) and skips every (sample_id, method) already there, so a run killed at
any point and restarted ends with exactly one row per pair. Every row carries the configuration's
fingerprint; resuming into a file written with other settings is an error. Every setting (the span's
syntax included) is checked when the ``EvalConfig`` is made, before any model loads or row is written.

Source-level measures (``sources``; ``measures="all"`` or ``"source"``) are added for the tasks that
have sources: HotpotQA (context sentences: sentence recovery and the ablation curve) and docs_needle
(documents, prepared in the library's ``documents=`` layout: whether the top document holds the needle).
Those tasks also get a ``random`` row per sample: the same measures for a seeded random order of the
sources. ``measures="source"`` leaves out the token-level curves (the costly part on long prompts).
"""

from __future__ import annotations

import hashlib
import json
import numbers
import resource
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import InputError, SpanTraceError
from ..methods.registry import available_methods
from ..spans import check_spec_syntax
from . import metrics, sources
from .curves import deletion_curve, insertion_curve
from .prompts import EvalPrompt, EvalTokens, Sample, eval_prompt
from .results import ResultsFile, ResultsFileError
from .tasks import make_samples, score_answer, source_kind

if TYPE_CHECKING:
    from ..api import Model

DEFAULT_METHODS = ("flashtrace", "ifr", "attention-last", "occlusion")
MEASURES = ("all", "token", "source")  # token: the curves and Recovery; source: pooled per sentence/document
SOURCE_MEASURES_VERSION = 1  # part of the fingerprint of runs with source-level measures


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
    measures: str = "all"

    def __post_init__(self) -> None:
        methods = tuple(dict.fromkeys(self.methods))  # a method named twice is one method (first place kept)
        object.__setattr__(self, "methods", methods)
        if not methods:
            raise InputError("no methods to evaluate; name at least one, e.g. flashtrace,ifr")
        unknown = [name for name in methods if name not in available_methods() and name != sources.RANDOM_METHOD]
        if unknown:
            raise InputError(f"unknown method(s) {', '.join(map(repr, unknown))}; "
                             f"choose from {', '.join(available_methods())}")
        for name, least in (("n", 1), ("length", 1), ("steps", 1), ("max_new_tokens", 1), ("hops", 0), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
                raise InputError(f"{name} must be a whole number ≥ {least}; got {value!r}")
            object.__setattr__(self, name, int(value))  # a NumPy integer becomes a plain int (JSON, fingerprint)
        if not isinstance(self.recovery_frac, numbers.Real) or not 0.0 < self.recovery_frac <= 1.0:
            raise InputError(f"recovery_frac must be a number in (0, 1]; got {self.recovery_frac!r}")
        if not isinstance(self.span, str):
            raise InputError(f"the evaluation's span is a text spec such as 'output' or 'answer'; got {self.span!r}")
        check_spec_syntax(self.span)
        EvalTokens(self.scope, self.stop_tokens)  # checks scope and stop_tokens
        if self.measures not in MEASURES:
            raise InputError(f"measures must be one of {MEASURES}; got {self.measures!r}")
        if self.measures == "source" and source_kind(self.task) is None:
            raise InputError(f"{self.task} has no source-level measures (hotpotqa and docs_needle have); "
                             "use measures 'all' or 'token'")
        if sources.RANDOM_METHOD in self.methods:
            raise InputError(f"{sources.RANDOM_METHOD!r} is the source baseline row, added by itself; "
                             "leave it out of the methods")

    @property
    def source_measures(self) -> bool:
        """Whether rows get source-level measures (the task has sources and ``measures`` asks for them)."""
        return self.measures != "token" and source_kind(self.task) is not None

    @property
    def row_methods(self) -> tuple[str, ...]:
        """The methods each sample gets a row for: ``methods``, plus the ``random`` baseline with sources."""
        return (*self.methods, sources.RANDOM_METHOD) if self.source_measures else self.methods

    def fingerprint(self) -> str:
        settings = asdict(self)
        del settings["n"], settings["methods"]  # more samples or methods extend a run; they do not change rows
        # Settings added later enter the fingerprint only when they change rows, so older files resume.
        del settings["measures"]
        if self.source_measures:
            settings["source_measures"] = SOURCE_MEASURES_VERSION
        if self.measures == "source":
            settings["token_measures"] = False
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


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
    prompt = eval_prompt(tokenizer, sample, chat=config.chat)
    base = {"task": sample.task, "sample_id": sample.sample_id, "model": model.model_id, "config": config.fingerprint()}
    generated = model.generate(prompt.ids, max_new_tokens=config.max_new_tokens, progress=False)
    output = tokenizer.decode(generated, skip_special_tokens=True)
    base.update(output=output, correct=score_answer(sample, output), answers=list(sample.answers))
    if not generated:
        for method in methods:
            yield {**base, "method": method, "error": "the model generated nothing"}
        return
    kind = source_kind(sample.task) if config.source_measures else None
    # The one run: the prepared prompt's ids and their greedy answer (generated once, above, so an empty answer is
    # a row rather than an error); every position below indexes them, and sources come from ``prompt.layout``.
    run = model.run(input_ids=prompt.ids + generated, prompt_length=prompt.prompt_length, progress=False)
    positions = EvalTokens(config.scope, config.stop_tokens).positions(prompt, run.tokens)
    gold = np.isin(positions, prompt.gold_positions)
    base.update(prompt_tokens=prompt.prompt_length, ranked_tokens=int(positions.size), target_tokens=len(generated),
                gold_tokens=int(gold.sum()))
    source_fields = _source_measurer(model, sample, prompt, generated, config) if kind else None
    for method in methods:
        if method == sources.RANDOM_METHOD:
            if source_fields is None:
                raise SpanTraceError(f"{sample.task} has no sources to order at random")
            yield {**base, "method": method, "device": model.device.type, **source_fields(None)}
            continue
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
        row = {**base, "method": method, "trace_s": trace_seconds, "device": model.device.type,
               "peak_memory_mb": memory, "memory_kind": memory_kind}
        scores = result.scores[: prompt.prompt_length].astype(np.float64)
        if config.measures != "source":
            deletion = deletion_curve(run, scores, positions=positions, steps=config.steps)
            insertion = insertion_curve(run, scores, positions=positions, steps=config.steps)
            row.update(
                rise=metrics.rise(deletion.values),
                mas=metrics.mas(deletion.values, deletion.density),
                insertion_auc=metrics.insertion_auc(insertion.values),
                recovery=metrics.recovery(scores[positions], gold, config.recovery_frac) if gold.any() else None,
                flat=metrics.is_flat(deletion.values),
                deletion_curve=deletion.values.tolist(),
                density=deletion.density.tolist(),
                insertion_curve=insertion.values.tolist(),
            )
        if source_fields is not None:
            row.update(source_fields(result))
        yield row


def _source_measurer(
    model: Model, sample: Sample, prompt: EvalPrompt, generated: list[int], config: EvalConfig
) -> Callable[[Any], dict[str, Any]]:
    """``fields(result)``: a trace result's source-level row fields (``result`` None: the random order)."""
    if source_kind(sample.task) == "document":
        documents, needle = sources.document_token_ranges(prompt), int(sample.metadata["needle_document"])
        if len(documents) != len(sample.metadata["documents"]):
            raise SpanTraceError(f"{sample.sample_id}: the prompt's layout does not hold every document")

        def document_fields(result: Any) -> dict[str, Any]:
            scores = (sources.random_scores(len(documents), sample.sample_id, config.seed) if result is None
                      else sources.pooled_scores(result, documents))
            return sources.document_measures(scores, needle)

        return document_fields
    ranges = sources.sentence_token_ranges(prompt, sample.metadata["sentences"])
    ablation = sources.SentenceAblation(model, sample, prompt.ids, generated, chat=config.chat)
    gold = sample.metadata["gold_sentences"]

    def sentence_fields(result: Any) -> dict[str, Any]:
        scores = (sources.random_scores(len(ranges), sample.sample_id, config.seed) if result is None
                  else sources.pooled_scores(result, ranges))
        return sources.sentence_measures(scores, gold, ablation)

    return sentence_fields


def check_settings(config: EvalConfig, results: ResultsFile) -> None:
    """An error when ``results`` holds rows made with settings other than ``config``'s."""
    foreign = {row.get("config") for row in results.rows} - {config.fingerprint()}
    if foreign:
        raise ResultsFileError(
            f"{results.path} holds rows made with other settings (config {', '.join(sorted(map(str, foreign)))}); "
            "resume with the options that made them, or give --out a new file for these settings"
        )


def open_results(config: EvalConfig, out: Path | str) -> ResultsFile:
    """The results file ``out`` for ``config``, open and locked (close it, or use it in a ``with`` block):
    an error if it is not a results file, is written by another run, or holds rows of other settings."""
    results = ResultsFile(out)
    try:
        check_settings(config, results)
    except BaseException:
        results.close()
        raise
    return results


@contextmanager
def results_for(config: EvalConfig, out: Path | str | ResultsFile) -> Iterator[ResultsFile]:
    """``out`` when it is an open ``ResultsFile`` (checked against ``config``; left open), else ``out`` opened
    for the block (``open_results``) and closed after it."""
    if isinstance(out, ResultsFile):
        check_settings(config, out)
        yield out
        return
    with open_results(config, out) as results:
        yield results


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
        todo = [method for method in config.row_methods if (sample.sample_id, method) not in done]
        if todo:
            work.append((sample, todo))
    return work


def run_eval(
    model: Model,
    config: EvalConfig,
    out: Path | str | ResultsFile,
    *,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> ResultsFile:
    """Evaluate ``config`` on ``model``, appending rows to ``out`` and skipping those already there.

    ``out``: a path (opened and locked for the run) or a ``ResultsFile`` already open (kept open).
    ``spantrace.eval.distributed.run_eval_ray`` does the same with samples spread over Ray workers.
    """
    with results_for(config, out) as results:
        for sample, todo in pending(config_samples(config, model.tokenizer), config, results.done()):
            for row in evaluate_sample(model, sample, config, todo):
                results.append(row)
                if on_row is not None:
                    on_row(row)
    return results
