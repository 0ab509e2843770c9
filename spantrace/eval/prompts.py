"""A task sample as the prompt the model reads, built by ``spantrace.inputs`` (the pipeline ``Model.run`` uses).

A task ``Sample`` holds the user's text and, where the task has them, the character spans of the gold
evidence (needles) in that text. ``prepare_sample`` renders it as a one-turn prompt with
``inputs.prepare`` (in the model's chat template; a documents task's documents through ``documents=``;
the task's answer prefix as the start of the assistant turn, ``answer_prefix=``), and ``eval_prompt``
places its tokens by the one char→token rule of ``spantrace.inputs`` (a token belongs to the range that
holds its first non-space character, ``inputs.assign``):

- ``user_positions``: the tokens of the user's message, i.e. of the sample's text (never chat-template
  tokens, special tokens or the answer prefix; a documents task's text holds its documents with their
  ``Document N`` headers, as the task wrote it),
- ``gold_positions``: the tokens placed in a gold span,

and both index the very ids the model runs on and every method scores.

``EvalTokens`` is the one explicit choice of which prompt tokens are ranked and perturbed by the
metrics: ``scope="user"`` (the user's text only) or ``"prompt"`` (every prompt token, template
included), and ``stop_tokens="keep"`` or ``"drop"`` (punctuation/whitespace-only tokens). It is
applied identically to every method of one evaluation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError
from ..inputs import Layout, Prepared, assign, build_layout, prepare
from ..text.layout import merge_ranges
from ..text.tokens import is_stop_token

SCOPES = ("user", "prompt")
STOP_TOKEN_RULES = ("keep", "drop")


@dataclass(frozen=True)
class Sample:
    """One task item: the user's text, the expected answers and the gold evidence spans (characters of text).

    scoring: ``"all"`` (share of answers found, RULER string_match_all), ``"part"`` (1 if any answer is
    found, RULER string_match_part) or ``"number"`` (the last number of the output equals the answer).
    """

    task: str
    sample_id: str
    text: str
    answers: tuple[str, ...]
    answer_prefix: str = ""
    gold_spans: tuple[tuple[int, int], ...] = ()
    scoring: str = "all"
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EvalPrompt:
    """A sample's prepared prompt with its layout (prompt tokens only) and the positions the metrics read.

    user_positions, gold_positions: sorted positions in 0 … P − 1; user_offset: where the sample's text
    starts in ``text``."""

    prepared: Prepared
    layout: Layout
    user_offset: int
    user_positions: np.ndarray
    gold_positions: np.ndarray

    @property
    def ids(self) -> list[int]:
        return self.prepared.ids

    @property
    def text(self) -> str:
        return self.prepared.context.text

    @property
    def offsets(self) -> list[tuple[int, int]]:
        return self.prepared.offsets

    @property
    def prompt_length(self) -> int:
        return len(self.prepared.ids)


@dataclass(frozen=True)
class EvalTokens:
    """Which prompt tokens the metrics rank and perturb: the same for every method of one evaluation."""

    scope: str = "user"
    stop_tokens: str = "keep"

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise InputError(f"scope must be one of {SCOPES}; got {self.scope!r}")
        if self.stop_tokens not in STOP_TOKEN_RULES:
            raise InputError(f"stop_tokens must be one of {STOP_TOKEN_RULES}; got {self.stop_tokens!r}")

    def positions(self, prompt: EvalPrompt, tokens: list[str]) -> np.ndarray:
        """The ranked positions of ``prompt``; ``tokens`` are the run's token strings (for stop tokens)."""
        chosen = prompt.user_positions if self.scope == "user" else np.arange(prompt.prompt_length)
        if self.stop_tokens == "drop":
            chosen = np.array([p for p in chosen if not is_stop_token(tokens[p])], dtype=np.int64)
        return chosen


def prepare_sample(tokenizer: Any, sample: Sample, *, chat: bool = True) -> Prepared:
    """``sample`` as a one-turn prompt by ``inputs.prepare``: its text (or, for a documents task, its question
    with ``metadata["documents"]``), followed by its answer prefix."""
    documents = sample.metadata.get("documents")
    if documents is not None:
        return prepare(tokenizer, prompt=sample.metadata["question"], documents=list(documents), chat=chat,
                       answer_prefix=sample.answer_prefix)
    return prepare(tokenizer, prompt=sample.text, chat=chat, answer_prefix=sample.answer_prefix)


def eval_prompt(tokenizer: Any, sample: Sample, *, chat: bool = True) -> EvalPrompt:
    """Prepare the sample's prompt once and place its user tokens and gold tokens (see module doc)."""
    prepared = prepare_sample(tokenizer, sample, chat=chat)
    text = prepared.context.text
    special = [i in prepared.special for i in prepared.ids]
    layout = build_layout(text, prepared.offsets, prepared.context.segments, special, source=prepared.source)
    user = next((s for s in layout.of_kind("message") if s.role == "user"), None)
    if user is None or text[user.chars[0] : user.chars[1]] != sample.text:
        raise InputError("the chat template changed the user's text; evaluate with chat=False")
    inside = range(*user.tokens) if user.tokens is not None else range(0)
    user_positions = np.array([p for p in inside if not special[p]], dtype=np.int64)
    gold = merge_ranges([(user.chars[0] + a, user.chars[0] + b) for a, b in sample.gold_spans])
    owners = assign(text, prepared.offsets, gold)
    gold_positions = np.array([p for p, owner in enumerate(owners) if owner is not None], dtype=np.int64)
    return EvalPrompt(prepared, layout, user.chars[0], user_positions, gold_positions)


def token_counter(tokenizer: Any, *, chat: bool = True) -> Callable[[str, str], int]:
    """``count(text, answer_prefix) -> int``: prompt tokens of ``text`` as the user's message (for length fitting)."""

    def count(text: str, answer_prefix: str = "") -> int:
        return len(prepare(tokenizer, prompt=text, chat=chat, answer_prefix=answer_prefix).ids)

    return count
