"""Tasks loaded from data files: GSM8K, MoreHopQA and HotpotQA.

The files ship inside the package, in ``spantrace/eval/data`` (its README.md says where each comes from
and under which licence; none is under spantrace's Apache-2.0). ``$SPANTRACE_DATA_DIR`` names another
folder to read them from instead. Every loader error is a ``TaskDataError`` naming the file, the record
and the missing or malformed field. The files are checked against their sha256 when read under their
bundled names.

Prompts: GSM8K asks for step-by-step reasoning and a final number (scoring ``"number"``); the QA
tasks list the context paragraphs as ``Title: sentences`` and then the question (scoring ``"part"``:
any gold answer found in the output, case-insensitively). HotpotQA's gold spans are its supporting
sentences; MoreHopQA's context holds only supporting paragraphs, so it has no gold spans.

Both QA tasks record their context sentences as sources in ``Sample.metadata``: ``"sentences"`` (each
non-empty context sentence's character range in the text, in order) and ``"gold_sentences"`` (the
indices of the supporting ones among them; empty for MoreHopQA).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

from ...errors import SpanTraceError
from ..prompts import Sample

DATA_DIR_VARIABLE = "SPANTRACE_DATA_DIR"
FILES = {
    "gsm8k": "gsm8k_test.jsonl",
    "morehopqa": "morehopqa_final_150samples.json",
    "hotpotqa": "hotpotqa_dev_distractor_first53.json",
}
SHA256 = {
    "gsm8k_test.jsonl": "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14",
    "morehopqa_final_150samples.json": "6b7f67153c6fc63425f4da3025bdb775d5265ca3a2107cd6838b01d41d6c05dc",
    "hotpotqa_dev_distractor_first53.json": "1a02638a3deaf2c6641d05b6a2bd923d589be8e58b33ed6d018beb21952c8553",
    "haystack_public_domain.txt": "c344383950738640bcf1ec01cec027a0da6281440a20687fea4ace9387cddef1",
}
GSM8K_INSTRUCTION = "Solve the problem step by step. End with the line 'The answer is N.' where N is a number."
QA_INSTRUCTION = "Answer the question using the documents below. Reason briefly, then give a short answer."


class TaskDataError(SpanTraceError, ValueError):
    """A task's data file is missing, unreadable or has a record without a required field."""


def data_dir() -> Path:
    """``$SPANTRACE_DATA_DIR``, else the package's bundled data folder (``spantrace/eval/data``)."""
    configured = os.environ.get(DATA_DIR_VARIABLE)
    if configured:
        return Path(configured)
    return Path(str(files("spantrace.eval.data")))


def data_file(name: str) -> Path:
    """The bundled file ``name`` in the data folder, verified by its sha256."""
    path = data_dir() / name
    if not path.is_file():
        if os.environ.get(DATA_DIR_VARIABLE):
            fix = f"add {name} to that folder, or unset {DATA_DIR_VARIABLE} to read the bundled copy"
        else:
            fix = f"this spantrace install lacks its bundled data: reinstall it, or set {DATA_DIR_VARIABLE}"
        raise TaskDataError(f"{path} does not exist; {fix}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if name in SHA256 and digest != SHA256[name]:
        raise TaskDataError(f"{path} has sha256 {digest}, not the bundled file's {SHA256[name]}; restore it")
    return path


def _records(path: Path) -> list[Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise TaskDataError(f"could not read {path}: {error}") from error
    try:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        records = json.loads(text)
    except json.JSONDecodeError as error:
        raise TaskDataError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(records, list):
        raise TaskDataError(f"{path} must hold a JSON array of records, not {type(records).__name__}")
    return records


def _field(path: Path, index: int, record: Any, name: str, kind: type | tuple[type, ...] = str) -> Any:
    if not isinstance(record, dict):
        raise TaskDataError(f"{path}: record {index} is a {type(record).__name__}, not an object")
    if name not in record:
        raise TaskDataError(f"{path}: record {index} has no field {name!r}")
    if not isinstance(record[name], kind):
        raise TaskDataError(f"{path}: record {index} field {name!r} is not a {getattr(kind, '__name__', kind)}")
    return record[name]


def gsm8k_samples(path: Path | None = None) -> Iterator[Sample]:
    """GSM8K: ``question`` and ``answer`` (worked solution ending in ``#### N``)."""
    path = path or data_file(FILES["gsm8k"])
    for index, record in enumerate(_records(path)):
        question = _field(path, index, record, "question")
        solution = _field(path, index, record, "answer")
        if "####" not in solution:
            raise TaskDataError(f"{path}: record {index} field 'answer' has no '#### N' final answer")
        gold = solution.rsplit("####", 1)[1].strip().replace(",", "")
        yield Sample("gsm8k", f"gsm8k-{index}", f"{question}\n{GSM8K_INSTRUCTION}", (gold,), scoring="number")


def _qa_sample(task: str, path: Path, index: int, record: Any, gold_titles: dict[str, set[int]]) -> Sample:
    question = _field(path, index, record, "question")
    answer = _field(path, index, record, "answer")
    context = _field(path, index, record, "context", list)
    text, gold, cursor = [QA_INSTRUCTION, "\n\n"], [], len(QA_INSTRUCTION) + 2
    sentence_spans, gold_sentences = [], []
    for number, paragraph in enumerate(context):
        if not (isinstance(paragraph, list) and len(paragraph) == 2 and isinstance(paragraph[1], list)):
            raise TaskDataError(f"{path}: record {index} context[{number}] is not [title, [sentence, ...]]")
        title, sentences = paragraph
        head = f"{title}: "
        text.append(head)
        cursor += len(head)
        for sentence_index, sentence in enumerate(sentences):
            if not isinstance(sentence, str):
                raise TaskDataError(f"{path}: record {index} context[{number}] sentence {sentence_index} is not text")
            supporting = sentence_index in gold_titles.get(title, ())
            if supporting:
                gold.append((cursor, cursor + len(sentence)))
            if sentence.strip():  # an empty sentence holds no token: it cannot be a source
                if supporting:
                    gold_sentences.append(len(sentence_spans))
                sentence_spans.append((cursor, cursor + len(sentence)))
            text.append(sentence)
            cursor += len(sentence)
        text.append("\n\n")
        cursor += 2
    text.append(f"Question: {question}")
    record_id = record.get("_id", index)
    metadata = {"sentences": tuple(sentence_spans), "gold_sentences": tuple(gold_sentences)}
    return Sample(
        task, f"{task}-{record_id}", "".join(text), (answer,), gold_spans=tuple(gold), scoring="part", metadata=metadata
    )


def hotpotqa_samples(path: Path | None = None) -> Iterator[Sample]:
    """HotpotQA (distractor): ``question``, ``answer``, ``context``, ``supporting_facts`` (gold sentences)."""
    path = path or data_file(FILES["hotpotqa"])
    for index, record in enumerate(_records(path)):
        facts = _field(path, index, record, "supporting_facts", list)
        gold: dict[str, set[int]] = {}
        for fact in facts:
            if not (isinstance(fact, list) and len(fact) == 2 and isinstance(fact[1], int)):
                raise TaskDataError(f"{path}: record {index} has a supporting fact that is not [title, index]")
            gold.setdefault(fact[0], set()).add(fact[1])
        yield _qa_sample("hotpotqa", path, index, record, gold)


def morehopqa_samples(path: Path | None = None) -> Iterator[Sample]:
    """MoreHopQA: ``question``, ``answer``, ``context`` (supporting paragraphs only: no gold spans)."""
    path = path or data_file(FILES["morehopqa"])
    for index, record in enumerate(_records(path)):
        yield _qa_sample("morehopqa", path, index, record, {})
