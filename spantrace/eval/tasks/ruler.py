"""RULER-style synthetic tasks, re-implemented from a written description of RULER's tasks (no RULER code).

Task names: ``niah_single`` (one key, one value), ``niah_mq_q2`` / ``niah_mq_q4`` (4 keys, 2 or 4 of
them asked), ``niah_mv_v2`` / ``niah_mv_v4`` (one key with 2 or 4 values), ``vt_h{hops}_c{chains}``
(variable tracking; ``vt`` is ``vt_h4_c1``). NIAH uses the essay haystack (the bundled public-domain
*Moby-Dick* text instead of RULER's Paul Graham essays), VT the repeated noise line; both can be
switched with ``haystack=``. Keys are ``adjective-noun`` pairs from a small built-in word list (not
``wonderwords``), values 7-digit numbers. Gold spans: the needles of the queried keys (NIAH), the
statements of the first chain (VT). Differences from RULER: no one-shot example for VT, sentences
are split by a regular expression (not NLTK), and the length budget counts the chat-templated prompt.

Every sample is a pure function of (task, seed, index, length, tokenizer): its random generator is
seeded with the string ``"{task}|{seed}|{index}"``. The haystack is the largest (binary search over
units: words for essay, lines for noise) whose prompt fits ``length`` tokens.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ...errors import InputError
from ..prompts import Sample
from .haystack import ADJECTIVES, HAYSTACKS, NOUNS, essay_words, fit_haystack, haystack_pieces, insert_needles

NIAH_TEMPLATE = (
    "Some special magic {kind} are hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the {kind} afterwards.\n{context}\n"
    "What are all the special magic {kind} for {query} mentioned in the provided text?"
)
NIAH_PREFIX = " The special magic {kind} for {query} mentioned in the provided text are"
NEEDLE = "One of the special magic numbers for {key} is: {value}."
VT_TEMPLATE = (
    "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
    "Question: Find all variables that are assigned the value {query} in the text above."
)
VT_PREFIX = (
    " Answer: According to the chain(s) of variable assignment in the text above, {count} variables are "
    "assigned the value {query}, they are: "
)



@dataclass(frozen=True)
class RulerSpec:
    """One task: ``niah`` with keys/values/queries, or ``vt`` with hops/chains; the default haystack."""

    kind: str
    keys: int = 1
    values: int = 1
    queries: int = 1
    hops: int = 4
    chains: int = 1
    haystack: str = "essay"


RULER_TASKS: dict[str, RulerSpec] = {
    "niah_single": RulerSpec("niah"),
    "niah_mq_q2": RulerSpec("niah", keys=4, queries=2),
    "niah_mq_q4": RulerSpec("niah", keys=4, queries=4),
    "niah_mv_v2": RulerSpec("niah", values=2),
    "niah_mv_v4": RulerSpec("niah", values=4),
    "vt": RulerSpec("vt", haystack="noise"),
}
_VT_NAME = re.compile(r"vt_h(\d+)_c(\d+)")


def ruler_spec(task: str) -> RulerSpec | None:
    """The spec of a RULER task name, or None when ``task`` is not one."""
    if task in RULER_TASKS:
        return RULER_TASKS[task]
    match = _VT_NAME.fullmatch(task)
    if match:
        hops, chains = int(match.group(1)), int(match.group(2))
        if hops < 1 or chains < 1:
            raise InputError(f"{task}: hops and chains must be ≥ 1")
        return RulerSpec("vt", hops=hops, chains=chains, haystack="noise")
    return None


def ruler_samples(
    task: str,
    n: int,
    *,
    length: int,
    count_tokens: Callable[[str, str], int],
    seed: int = 42,
    haystack: str | None = None,
    haystack_path: Path | None = None,
) -> Iterator[Sample]:
    """``n`` samples of ``task`` whose prompts fit ``length`` tokens by ``count_tokens(text, answer_prefix)``."""
    spec = ruler_spec(task)
    if spec is None:
        raise InputError(f"unknown RULER task {task!r}; known: {', '.join(RULER_TASKS)}, vt_h<hops>_c<chains>")
    haystack = haystack or spec.haystack
    if haystack not in HAYSTACKS:
        raise InputError(f"haystack must be one of {HAYSTACKS}; got {haystack!r}")
    words = essay_words(haystack_path) if haystack == "essay" else ()
    for index in range(n):
        def make(size: int, index: int = index) -> Sample:
            rng = random.Random(f"{task}|{seed}|{index}")
            builder = _niah if spec.kind == "niah" else _vt
            pieces = haystack_pieces(haystack, size, words)
            return builder(task, f"{task}-{seed}-{index}", spec, haystack, pieces, rng)

        # Noise slots are drawn without replacement from len + 1 places: enough lines for every needle.
        smallest = max(1, spec.keys * spec.values - 1 if spec.kind == "niah" else spec.hops)
        yield fit_haystack(make, length, count_tokens, smallest)


Spans = list[tuple[int, int]]


def _fill(template: str, context: str, spans: Spans, **fields: str) -> tuple[str, Spans]:
    """``template`` with ``{context}`` and ``fields`` filled, and the spans shifted to the filled text."""
    before, after = template.split("{context}")
    head = before.format(**fields)
    return head + context + after.format(**fields), [(s + len(head), e + len(head)) for s, e in spans]


def _niah(task: str, sample_id: str, spec: RulerSpec, haystack: str, pieces: list[str], rng: random.Random) -> Sample:
    keys = rng.sample([f"{a}-{n}" for a in ADJECTIVES for n in NOUNS], max(spec.keys, spec.queries))
    values = {key: [str(rng.randint(1_000_000, 9_999_999)) for _ in range(spec.values)] for key in keys}
    needles = [(key, value) for key in keys for value in values[key]]
    rng.shuffle(needles)
    queries = rng.sample(keys, spec.queries)
    context, spans = insert_needles(pieces, [NEEDLE.format(key=k, value=v) for k, v in needles], haystack, rng)
    template, prefix, kind = NIAH_TEMPLATE, NIAH_PREFIX, "numbers"
    if spec.values * spec.queries == 1:  # RULER's singular form, applied to the template only
        for old, new in (("Some", "A"), ("are all", "is"), ("are", "is"), ("answers", "answer")):
            template, prefix = template.replace(old, new), prefix.replace(old, new)
        kind = "number"
    query = queries[0] if len(queries) == 1 else ", ".join(queries[:-1]) + ", and " + queries[-1]
    text, spans = _fill(template, context, spans, kind=kind, query=query)
    gold = tuple(span for span, (key, _) in zip(spans, needles, strict=True) if key in queries)
    answers = tuple(value for key in queries for value in values[key])
    return Sample(task, sample_id, text, answers, prefix.format(kind=kind, query=query), gold, "all")


def _vt(task: str, sample_id: str, spec: RulerSpec, haystack: str, pieces: list[str], rng: random.Random) -> Sample:
    names: list[str] = []
    while len(names) < (spec.hops + 1) * spec.chains:
        name = "".join(rng.choice(string.ascii_uppercase) for _ in range(5))
        if name not in names:
            names.append(name)
    chains, values = [], []
    for chain in range(spec.chains):
        chain_names = names[chain * (spec.hops + 1) : (chain + 1) * (spec.hops + 1)]
        values.append(str(rng.randint(10000, 99998)))
        statements = [f"VAR {chain_names[0]} = {values[-1]}"]
        statements += [f"VAR {chain_names[i + 1]} = VAR {chain_names[i]}" for i in range(spec.hops)]
        chains.append((chain_names, statements))
    if haystack == "essay":  # interleave the chains at random, keeping each chain's order
        order = [chain for chain, (_, statements) in enumerate(chains) for _ in statements]
        rng.shuffle(order)
        cursors = [0] * len(chains)
        flat = []
        for chain in order:
            flat.append((chain, chains[chain][1][cursors[chain]] + "."))
            cursors[chain] += 1
        context, spans = insert_needles(pieces, [statement for _, statement in flat], haystack, rng)
        owners = [chain for chain, _ in flat]
    else:  # each chain at its own sorted line slots
        context, spans, owners = _insert_chains(pieces, [statements for _, statements in chains], rng)
    count, query = str(spec.hops + 1), values[0]
    text, spans = _fill(VT_TEMPLATE, context, spans, query=query)
    gold = tuple(span for span, owner in zip(spans, owners, strict=True) if owner == 0)
    return Sample(task, sample_id, text, tuple(chains[0][0]), VT_PREFIX.format(count=count, query=query), gold, "all")


def _insert_chains(
    pieces: list[str], chains: list[list[str]], rng: random.Random
) -> tuple[str, list[tuple[int, int]], list[int]]:
    """Noise haystack for VT: each chain's statements at its own sorted slots, lines joined by newlines."""
    slots: dict[int, list[tuple[int, str]]] = {}
    for chain, statements in enumerate(chains):
        chain_slots = sorted(rng.sample(range(len(pieces) + 1), len(statements)))
        for slot, statement in zip(chain_slots, statements, strict=True):
            slots.setdefault(slot, []).append((chain, statement))
    lines, owners = [], []
    for slot in range(len(pieces) + 1):
        for chain, statement in slots.get(slot, []):
            lines.append(statement)
            owners.append(chain)
        if slot < len(pieces):
            lines.append(pieces[slot])
            owners.append(-1)
    spans, cursor = [], 0
    for line, owner in zip(lines, owners, strict=True):
        if owner >= 0:
            spans.append((cursor, cursor + len(line)))
        cursor += len(line) + 1
    return "\n".join(lines), spans, [owner for owner in owners if owner >= 0]
