"""Evaluation tasks by name: RULER-style generators (``ruler``), file-based loaders (``files``) and the
multi-document needle (``docs``).

``make_samples(task, n, tokenizer=..., length=..., seed=...)`` returns the first ``n`` samples of a task;
``score_answer(sample, output)`` scores a model output against the sample's answers (0 … 1).
"""

from __future__ import annotations

import re
from itertools import islice
from pathlib import Path
from typing import Any

from ...errors import InputError
from ..prompts import Sample, token_counter
from .docs import docs_needle_documents, docs_needle_samples
from .files import gsm8k_samples, hotpotqa_samples, morehopqa_samples
from .ruler import RULER_TASKS, ruler_samples, ruler_spec

FILE_TASKS = {"gsm8k": gsm8k_samples, "morehopqa": morehopqa_samples, "hotpotqa": hotpotqa_samples}
TASK_NAMES = (*RULER_TASKS, "vt_h<hops>_c<chains>", *FILE_TASKS, "docs_needle", "docs_needle_d<documents>",
              "docs_needle_matched", "docs_needle_matched_d<documents>")
SENTENCE_TASKS = ("hotpotqa",)  # tasks whose samples carry context sentences with gold ones


def source_kind(task: str) -> str | None:
    """``"sentence"`` (HotpotQA), ``"document"`` (docs_needle) or None: the task's source-level measures."""
    if task in SENTENCE_TASKS:
        return "sentence"
    if docs_needle_documents(task) is not None:
        return "document"
    return None
_CONTROL = re.compile(r"[\x00-\x1f]")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def make_samples(
    task: str,
    n: int,
    *,
    tokenizer: Any = None,
    length: int = 1024,
    seed: int = 42,
    chat: bool = True,
    path: Path | None = None,
    haystack: str | None = None,
) -> list[Sample]:
    """The first ``n`` samples of ``task``; RULER tasks fit ``length`` prompt tokens of ``tokenizer``.

    ``path`` replaces a file task's bundled file (or the essay haystack of a RULER task).
    """
    if n < 1:
        raise InputError(f"n must be ≥ 1; got {n}")
    if task in FILE_TASKS:
        samples = list(islice(FILE_TASKS[task](path), n))
        if not samples:  # an empty data file: nothing would be written, so say so instead
            raise InputError(f"the {task} data file {path or '(bundled)'} holds no samples; give one with at least one")
        return samples
    if ruler_spec(task) is not None:
        if tokenizer is None:
            raise InputError(f"{task} fits its prompt to a token length and needs the model's tokenizer")
        count = token_counter(tokenizer, chat=chat)
        return list(ruler_samples(task, n, length=length, count_tokens=count, seed=seed, haystack=haystack,
                                  haystack_path=path))
    if docs_needle_documents(task) is not None:
        if tokenizer is None:
            raise InputError(f"{task} fits its prompt to a token length and needs the model's tokenizer")
        count = token_counter(tokenizer, chat=chat)
        return list(docs_needle_samples(task, n, length=length, count_tokens=count, seed=seed, haystack_path=path))
    raise InputError(f"unknown task {task!r}; known: {', '.join(TASK_NAMES)}")


def clean_output(output: str) -> str:
    """RULER's post-processing: strip, control characters to newlines, strip."""
    return _CONTROL.sub("\n", output.strip()).strip()


def score_answer(sample: Sample, output: str) -> float:
    """``all``: share of answers found (case-insensitive substring); ``part``: 1 if any is found;
    ``number``: 1 if the output's last number equals the answer."""
    output = clean_output(output)
    if sample.scoring == "number":
        numbers = _NUMBER.findall(output)
        if not numbers:
            return 0.0
        try:
            return float(float(numbers[-1].replace(",", "")) == float(sample.answers[0]))
        except ValueError:
            return 0.0
    found = [answer.lower() in output.lower() for answer in sample.answers]
    if sample.scoring == "part":
        return float(any(found))
    return sum(found) / len(found)
