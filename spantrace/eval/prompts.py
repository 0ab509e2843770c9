"""One prompt builder for attribution and evaluation: the same chat template, the same token boundaries.

A task ``Sample`` holds the user's text and, where the task has them, the character spans of the gold
evidence (needles) in that text. ``build_prompt`` wraps the text in the model's chat template (plus
the task's answer prefix at the start of the assistant turn), tokenises the whole string once, and
maps characters to tokens with the tokenizer's offsets, so that

- ``user_positions`` are the tokens that lie wholly inside the user's text (never template tokens),
- ``gold_positions`` are the tokens that overlap a gold span,

and both index the very ids the model runs on and every method scores.

``EvalTokens`` is the one explicit choice of which prompt tokens are ranked and perturbed by the
metrics: ``scope="user"`` (the user's text only) or ``"prompt"`` (every prompt token, template
included), and ``stop_tokens="keep"`` or ``"drop"`` (punctuation/whitespace-only tokens). It is
applied identically to every method of one evaluation.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError

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
class BuiltPrompt:
    """The tokenised prompt. ids: [P] token ids; user_positions, gold_positions: sorted positions in 0 … P − 1;
    offsets: each token's character range in ``text``; user_offset: where the sample's text starts in ``text``."""

    text: str
    ids: list[int]
    user_positions: np.ndarray
    gold_positions: np.ndarray
    offsets: tuple[tuple[int, int], ...] = ()
    user_offset: int = 0

    @property
    def prompt_length(self) -> int:
        return len(self.ids)


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

    def positions(self, prompt: BuiltPrompt, tokens: list[str]) -> np.ndarray:
        """The ranked positions of ``prompt``; ``tokens`` are the run's token strings (for stop tokens)."""
        chosen = prompt.user_positions if self.scope == "user" else np.arange(prompt.prompt_length)
        if self.stop_tokens == "drop":
            chosen = np.array([p for p in chosen if not is_stop_token(tokens[p])], dtype=np.int64)
        return chosen


def is_stop_token(token: str) -> bool:
    """A token made only of punctuation and whitespace."""
    return all(ch.isspace() or unicodedata.category(ch).startswith("P") for ch in token)


def render_prompt(tokenizer: Any, sample: Sample, *, chat: bool = True) -> tuple[str, int]:
    """The full prompt string and the character offset of ``sample.text`` in it."""
    if chat and getattr(tokenizer, "chat_template", None):
        wrapped = tokenizer.apply_chat_template(
            [{"role": "user", "content": sample.text}], add_generation_prompt=True, tokenize=False
        )
        start = wrapped.find(sample.text)
        if start < 0:
            raise InputError("the chat template changed the user's text; evaluate with chat=False")
        return wrapped + sample.answer_prefix, start
    return sample.text + sample.answer_prefix, 0


def build_prompt(tokenizer: Any, sample: Sample, *, chat: bool = True) -> BuiltPrompt:
    """Tokenise the sample's prompt once and locate its user tokens and gold tokens (see module doc)."""
    text, offset = render_prompt(tokenizer, sample, chat=chat)
    try:
        encoded = tokenizer(text, add_special_tokens=not chat, return_offsets_mapping=True)
    except (NotImplementedError, TypeError, ValueError) as error:
        raise InputError(f"the evaluation needs a fast tokenizer with offsets ({error})") from error
    ids = list(encoded["input_ids"])
    spans = np.array(encoded["offset_mapping"], dtype=np.int64).reshape(-1, 2)  # [P, 2] characters of text
    starts, ends = spans[:, 0], spans[:, 1]
    real = ends > starts  # special tokens added by the tokenizer carry (0, 0)
    user_end = offset + len(sample.text)
    user = real & (starts >= offset) & (ends <= user_end)
    gold = np.zeros(len(ids), dtype=bool)
    for gold_start, gold_end in sample.gold_spans:
        gold |= real & (starts < offset + gold_end) & (ends > offset + gold_start)
    return BuiltPrompt(
        text=text,
        ids=ids,
        user_positions=np.flatnonzero(user),
        gold_positions=np.flatnonzero(gold),
        offsets=tuple((int(a), int(b)) for a, b in spans),
        user_offset=offset,
    )


def token_counter(tokenizer: Any, *, chat: bool = True):
    """``count(text) -> int``: prompt tokens of ``text`` as the user's message (for length fitting)."""

    def count(text: str, answer_prefix: str = "") -> int:
        sample = Sample(task="", sample_id="", text=text, answers=(), answer_prefix=answer_prefix)
        rendered, _ = render_prompt(tokenizer, sample, chat=chat)
        return len(tokenizer(rendered, add_special_tokens=not chat)["input_ids"])

    return count
