"""``docs_needle``: one needle fact hidden in one of N retrieved documents (N = 10; ``docs_needle_d<N>`` for others).

Each sample has N documents, each a run of consecutive words of the haystack text (the bundled
public-domain essay the RULER tasks use), taken from non-overlapping places. Exactly one document, drawn
at random, also holds the needle sentence ``The special magic number for KEY is: VALUE.`` at a random
sentence boundary (the RULER depths). The question asks for KEY's number; the answer is VALUE.

``docs_needle_matched`` (``docs_needle_matched_d<N>``) is the length-matched control: every document has the
same number of words, the needle sentence's included. The needle's document takes that many fewer
haystack words from its place (the end of its run is cut), so the needle still sits at a sentence
boundary of otherwise unchanged haystack text. Its random generator is seeded as the plain task's
(``"docs_needle|{seed}|{index}"``, ``_d<N>`` included) and its documents have the plain sample's size, so
the two variants are paired: the same key, value, needle document, places and depth, and the same texts
but for the needle document's cut words.

The documents are given to the model in the library's ``documents=`` layout (``spantrace.inputs``): the
sample's text is exactly ``with_documents(question, documents)``, so the runner can run it through
``Model.run(prompt=question, documents=...)`` and pool scores per document with ``TraceResult.by``.
``Sample.metadata`` holds ``"question"``, ``"documents"`` (their texts) and ``"needle_document"`` (its
index). The gold span is the needle sentence.

Every sample is a pure function of (task, seed, index, length, tokenizer): its random generator is seeded
with ``"{task}|{seed}|{index}"`` (the plain task's name for the matched variant), and the documents have the
largest number of words (the same for each document; in the plain task the needle's has the needle
sentence on top) whose plain prompt fits ``length`` tokens; the matched prompt, shorter by the cut words,
fits as well.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from ...errors import InputError
from ...inputs import Document, with_documents
from ..prompts import Sample
from .haystack import ADJECTIVES, NOUNS, essay_words, fit_haystack, haystack_pieces, insert_needles

DEFAULT_DOCUMENTS = 10
MAX_DOCUMENTS = 50
NEEDLE = "The special magic number for {key} is: {value}."
QUESTION = "One of the documents above holds the special magic number for {key}. What is it? Answer with the number."
_NAME = re.compile(r"docs_needle(_matched)?(?:_d(\d+))?")


def docs_needle_documents(task: str) -> int | None:
    """The number of documents of a ``docs_needle`` task name (either variant), or None when ``task`` is not one."""
    match = _NAME.fullmatch(task)
    if match is None:
        return None
    count = int(match.group(2)) if match.group(2) else DEFAULT_DOCUMENTS
    if not 2 <= count <= MAX_DOCUMENTS:
        raise InputError(f"{task}: the number of documents must be between 2 and {MAX_DOCUMENTS}")
    return count


def docs_needle_matched(task: str) -> bool:
    """Whether ``task`` is the length-matched variant (``docs_needle_matched``, ``docs_needle_matched_d<N>``)."""
    match = _NAME.fullmatch(task)
    return match is not None and match.group(1) is not None


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
        raise InputError(f"{task!r} is not a docs_needle task (docs_needle[_matched] or docs_needle[_matched]_d<N>)")
    matched = docs_needle_matched(task)
    stream = task.replace("_matched", "", 1)  # the matched control draws what the plain task draws
    words = essay_words(haystack_path)
    for index in range(n):

        def make(size: int, index: int = index, matched: bool = False) -> Sample:
            rng = random.Random(f"{stream}|{seed}|{index}")
            return _sample(task, f"{task}-{seed}-{index}", count, size, words, rng, matched=matched)

        plain = fit_haystack(make, length, count_tokens, smallest=1)
        if not matched:
            yield plain
            continue
        # The plain sample's document size (the matched prompt is the needle's words shorter, so it fits too).
        size = len(plain.metadata["documents"][plain.metadata["needle_document"] - 1].split())
        if size <= len(NEEDLE.split()):
            raise InputError(f"a context length of {length} tokens is too short for {task} (documents of {size} "
                             "words cannot hold the needle sentence and haystack text); raise --length")
        yield make(size, matched=True)


def _sample(
    task: str, sample_id: str, count: int, size: int, words: tuple[str, ...], rng: random.Random, *, matched: bool
) -> Sample:
    """``count`` documents of ``size`` words each, one of them with the needle (in its ``size`` words when
    ``matched``, on top of them when not)."""
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
        if number == needle_document:
            kept = size - len(needle.split()) if matched else size
            pieces = haystack_pieces("essay", kept, words[start : start + kept])
            text, spans = insert_needles(pieces, [needle], "essay", rng)
            needle_span = spans[0]
        else:
            text = " ".join(haystack_pieces("essay", size, words[start : start + size]))
        texts.append(text)
    question = QUESTION.format(key=key)
    text, ranges = with_documents(question, [Document(t) for t in texts])
    begin = next(chars[0] for i, chars in ranges if i == needle_document)
    gold = ((begin + needle_span[0], begin + needle_span[1]),)
    metadata = {"question": question, "documents": tuple(texts), "needle_document": needle_document}
    return Sample(task, sample_id, text, (value,), gold_spans=gold, scoring="all", metadata=metadata)
