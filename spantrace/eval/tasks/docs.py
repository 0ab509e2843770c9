"""``docs_needle``: one needle fact hidden in one of N retrieved documents (N = 10; ``docs_needle_d<N>`` for others).

Each sample has N documents, each a run of consecutive words of the haystack text (the bundled
public-domain essay the RULER tasks use), taken from non-overlapping places. Exactly one document, drawn
at random, also holds the needle sentence ``The special magic number for KEY is: VALUE.`` at a random
sentence boundary (the RULER depths). The question asks for KEY's number; the answer is VALUE.

The documents are given to the model in the library's ``documents=`` layout (``spantrace.inputs``): the
sample's text is exactly ``with_documents(question, documents)``, so the runner can run it through
``Model.run(prompt=question, documents=...)`` and pool scores per document with ``TraceResult.by``.
``Sample.metadata`` holds ``"question"``, ``"documents"`` (their texts) and ``"needle_document"`` (its
index). The gold span is the needle sentence.

Every sample is a pure function of (task, seed, index, length, tokenizer): its random generator is seeded
with ``"{task}|{seed}|{index}"``, and the documents have the largest number of words (the same for each
document) whose prompt fits ``length`` tokens.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from ...errors import InputError
from ...inputs import Document, with_documents
from ..prompts import Sample
from .ruler import ADJECTIVES, NOUNS, _essay_words, _fit, _haystack, _insert

DEFAULT_DOCUMENTS = 10
MAX_DOCUMENTS = 50
NEEDLE = "The special magic number for {key} is: {value}."
QUESTION = "One of the documents above holds the special magic number for {key}. What is it? Answer with the number."
_NAME = re.compile(r"docs_needle(?:_d(\d+))?")


def docs_needle_documents(task: str) -> int | None:
    """The number of documents of a ``docs_needle`` task name, or None when ``task`` is not one."""
    match = _NAME.fullmatch(task)
    if match is None:
        return None
    count = int(match.group(1)) if match.group(1) else DEFAULT_DOCUMENTS
    if not 2 <= count <= MAX_DOCUMENTS:
        raise InputError(f"{task}: the number of documents must be between 2 and {MAX_DOCUMENTS}")
    return count


def docs_needle_samples(
    task: str,
    n: int,
    *,
    length: int,
    count_tokens: Callable[[str, str], int],
    seed: int = 42,
    haystack_path: Path | None = None,
) -> Iterator[Sample]:
    """``n`` samples of ``task`` whose prompts fit ``length`` tokens by ``count_tokens(text, answer_prefix)``."""
    count = docs_needle_documents(task)
    if count is None:
        raise InputError(f"{task!r} is not a docs_needle task (docs_needle or docs_needle_d<N>)")
    words = _essay_words(haystack_path)
    for index in range(n):

        def make(size: int, index: int = index) -> Sample:
            return _sample(task, f"{task}-{seed}-{index}", count, size, words, random.Random(f"{task}|{seed}|{index}"))

        yield _fit(make, length, count_tokens, smallest=1)


def _sample(task: str, sample_id: str, count: int, size: int, words: tuple[str, ...], rng: random.Random) -> Sample:
    """``count`` documents of ``size`` words each, one of them with the needle."""
    places = len(words) // size
    if places < count:
        raise InputError(f"the haystack has too few words for {count} documents of {size} words; lower --length")
    starts = [place * size for place in rng.sample(range(places), count)]
    key = f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"
    value = str(rng.randint(1_000_000, 9_999_999))
    needle_document = rng.randrange(count)
    needle = NEEDLE.format(key=key, value=value)
    texts, needle_span = [], (0, 0)
    for number, start in enumerate(starts):
        pieces = _haystack("essay", size, words[start : start + size])
        if number == needle_document:
            text, spans = _insert(pieces, [needle], "essay", rng)
            needle_span = spans[0]
        else:
            text = " ".join(pieces)
        texts.append(text)
    question = QUESTION.format(key=key)
    text, ranges = with_documents(question, [Document(t) for t in texts])
    begin = next(chars[0] for i, chars in ranges if i == needle_document)
    gold = ((begin + needle_span[0], begin + needle_span[1]),)
    metadata = {"question": question, "documents": tuple(texts), "needle_document": needle_document}
    return Sample(task, sample_id, text, (value,), gold_spans=gold, scoring="all", metadata=metadata)
