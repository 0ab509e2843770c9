"""Source-level measures: a method's token scores pooled per source (sentence or document), then judged.

The same rules hold for every method, and for the ``random`` baseline (a seeded random order of the
sources in place of a method's ranking); the formulas and degenerate cases are in ``metrics``.

- Pooling is ``TraceResult.by``'s: a source's score is the sum of the scores of the tokens whose first
  non-space character lies in it (``inputs.assign``), template and special tokens left out; every source
  is given to ``by`` as a custom group of its prompt tokens.
- HotpotQA sources are the context sentences (``Sample.metadata["sentences"]``, character ranges of the
  sample's text); their token ranges come from the prompt's offsets (``prompts.eval_prompt``).
  Measures: sentence recovery at k = the number of gold sentences and at k = 5, and the ablation curve.
- The ablation curve drops the top-k sentences (``ABLATION_KS``) from the sample's text, prepares the
  prompt again (``prompts.prepare_sample``) and teacher-forces the *original* generated ids
  after it: ``a(k) = Σ log p(answer | prompt without the top k)``. Each distinct set of dropped sentences
  is scored once per sample; the prompt up to the first dropped sentence is not run again
  (``PrefixScorer`` reuses the unablated prompt's keys and values), else prompts of similar length run
  in batches (``readout.answer_log_probs``).
- docs_needle sources are the documents of the prompt's ``documents=`` layout (their token ranges in
  ``EvalPrompt.layout``); the measure is whether the top document is the one holding the needle.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import SpanTraceError
from ..inputs import assign
from ..readout import answer_log_probs, cached_token_log_probs
from . import metrics
from .prompts import EvalPrompt, Sample, prepare_sample

if TYPE_CHECKING:
    from ..api import Model
    from ..result import TraceResult

ABLATION_KS = (0, 1, 2, 3, 5)  # how many top-ranked sentences the ablation curve drops
RECOVERY_K = 5  # the fixed k of sentence recovery (besides k = the number of gold sentences)
RANDOM_METHOD = "random"  # the baseline row: a seeded random order of the sources


def sentence_token_ranges(prompt: EvalPrompt, sentences: Sequence[tuple[int, int]]) -> list[tuple[int, int] | None]:
    """Each sentence's ``(first, last + 1)`` prompt tokens (tokens placed by their first non-space character,
    as ``.by()`` places them); None for a sentence that places no token. ``sentences``: characters of the
    sample's text."""
    shifted = [(prompt.user_offset + a, prompt.user_offset + b) for a, b in sentences]
    order = sorted(range(len(shifted)), key=lambda i: shifted[i])
    owners = assign(prompt.text, prompt.offsets, [shifted[i] for i in order])
    ranges: list[tuple[int, int] | None] = [None] * len(shifted)
    for position, owner in enumerate(owners):
        if owner is None:
            continue
        index = order[owner]
        current = ranges[index]
        ranges[index] = (position, position + 1) if current is None else (current[0], position + 1)
    return ranges


def document_token_ranges(prompt: EvalPrompt) -> list[tuple[int, int] | None]:
    """Each document's ``(first, last + 1)`` prompt tokens in the ``documents=`` layout, in document order."""
    documents = sorted(prompt.layout.of_kind("document"), key=lambda segment: segment.index)
    return [segment.tokens for segment in documents]


def pooled_scores(result: TraceResult, token_ranges: Sequence[tuple[int, int] | None]) -> np.ndarray:
    """Each range's pooled score by ``result.by`` (template tokens left out); −∞ for a range with no token."""
    groups = [{"name": str(i), "tokens": r} for i, r in enumerate(token_ranges) if r is not None]
    scores = np.full(len(token_ranges), -np.inf)
    if not groups:
        return scores
    for source in result.by(groups):
        scores[int(source.name)] = source.score
    return scores


def random_scores(count: int, sample_id: str, seed: int) -> np.ndarray:
    """A seeded random order of ``count`` sources as scores (a permutation of ``count … 1``)."""
    rng = random.Random(f"{RANDOM_METHOD}|{sample_id}|{seed}")
    order = list(range(count))
    rng.shuffle(order)
    scores = np.empty(count)
    scores[order] = np.arange(count, 0, -1, dtype=np.float64)
    return scores


def drop_ranges(text: str, ranges: Sequence[tuple[int, int]], drop: Sequence[int]) -> str:
    """``text`` without the character ranges ``ranges[i]`` for ``i`` in ``drop`` (disjoint ranges)."""
    chosen = sorted(ranges[i] for i in set(drop))
    pieces, cursor = [], 0
    for start, end in chosen:
        if start < cursor:
            raise SpanTraceError(f"source ranges overlap at character {start}")
        pieces.append(text[cursor:start])
        cursor = end
    pieces.append(text[cursor:])
    return "".join(pieces)


def ablated_sample(sample: Sample, drop: Sequence[int]) -> Sample:
    """``sample`` with the sentences ``drop`` (indices into ``metadata["sentences"]``) cut out of its text."""
    text = drop_ranges(sample.text, sample.metadata["sentences"], drop)
    return replace(sample, text=text, gold_spans=())


class PrefixScorer:
    """``Σ log p(answer | prompt)`` for prompts that begin like a reference prompt: the reference (with the
    answer) runs once with its keys and values kept; each prompt then runs only from its first token that
    differs from the reference, on a copy of the kept keys and values cut to the shared beginning.

    ``scorer.reference_value`` is the reference prompt's own value. Models whose key/value cache cannot be
    cut raise at construction (``readout.answer_log_probs`` then does the same work without the cache).
    """

    def __init__(self, model: Model, reference: Sequence[int], answer: Sequence[int]) -> None:
        self.model = model
        self.reference = [int(i) for i in reference]
        self.answer = [int(i) for i in answer]
        if not self.reference or not self.answer:
            raise SpanTraceError("a prefix scorer needs a non-empty prompt and answer")
        values, self.cache = self._forward(self.reference + self.answer[:-1], len(self.reference), 0, None)
        layers = getattr(self.cache, "layers", None)
        # Only plain per-layer key/value lists are cut here (no sliding windows, no recurrent states).
        if not layers or any(type(layer).__name__ != "DynamicLayer" for layer in layers):
            raise SpanTraceError("this model's key/value cache cannot be cut")
        self.length = len(self.reference) + len(self.answer) - 1
        self.reference_value = values

    def _forward(self, ids: list[int], prompt_length: int, start: int, cache: Any) -> tuple[float, Any]:
        """``ids`` (from position ``start``) after ``cache``: the answer's summed log-prob and the grown cache."""
        positions = torch.arange(len(self.answer)) + (prompt_length - 1 - start)  # the answer's readout
        device = self.model.device
        with torch.inference_mode():
            values, kept = cached_token_log_probs(self.model.hf_model, positions, torch.tensor(self.answer),
                                                  torch.tensor([ids], device=device), cache)
        return float(values[0].double().sum()), kept

    def __call__(self, prompt: Sequence[int]) -> float:
        prompt = [int(i) for i in prompt]
        if prompt == self.reference:
            return self.reference_value
        shared = 0
        for mine, theirs in zip(prompt, self.reference, strict=False):
            if mine != theirs:
                break
            shared += 1
        shared = min(shared, len(prompt) - 1)  # at least one prompt token runs again
        if shared < 1:
            return float(answer_log_probs(self.model.hf_model, [prompt], self.answer)[0])
        cache = copy.deepcopy(self.cache)
        cache.crop(shared - self.length)  # a negative count: remove that many tokens from the end
        value, _ = self._forward(prompt[shared:] + self.answer[:-1], len(prompt), shared, cache)
        return value


class SentenceAblation:
    """The ablation curves of one sample: ``curve(scores)`` drops the top k sentences by ``scores`` for each
    k of ``ABLATION_KS`` and returns ``a(k)``; sets of dropped sentences already scored are not run again."""

    def __init__(
        self, model: Model, sample: Sample, prompt_ids: Sequence[int], generated: Sequence[int], *, chat: bool
    ) -> None:
        """``prompt_ids``: the unablated prompt (``prepare_sample(tokenizer, sample).ids``)."""
        self.model, self.sample, self.generated, self.chat = model, sample, list(generated), chat
        self.count = len(sample.metadata["sentences"])
        if self.count == 0:
            raise SpanTraceError(f"{sample.sample_id} has no context sentence to ablate")
        self.cache: dict[frozenset[int], float] = {}
        self.scorer: PrefixScorer | None = None
        try:
            self.scorer = PrefixScorer(model, prompt_ids, self.generated)
        except (SpanTraceError, AttributeError, NotImplementedError, TypeError, ValueError):
            self.scorer = None  # no cache to reuse: every ablated prompt runs whole, in batches

    def dropped(self, scores: Any) -> list[frozenset[int]]:
        """The sets of sentences dropped at each k (``min(k, S)`` best-ranked ones)."""
        order = metrics.rank_positions(scores)
        return [frozenset(int(i) for i in order[: min(k, self.count)]) for k in ABLATION_KS]

    def curve(self, scores: Any) -> list[float]:
        sets = self.dropped(scores)
        missing = list(dict.fromkeys(s for s in sets if s not in self.cache))
        if missing:
            prompts = [
                prepare_sample(self.model.tokenizer, ablated_sample(self.sample, sorted(s)), chat=self.chat).ids
                for s in missing
            ]
            if self.scorer is not None:
                values = [self.scorer(prompt) for prompt in prompts]
            else:
                values = list(answer_log_probs(self.model.hf_model, prompts, self.generated))
            for dropped, value in zip(missing, values, strict=True):
                self.cache[dropped] = float(value)
        return [self.cache[s] for s in sets]


def sentence_measures(scores: Any, gold: Sequence[int], ablation: SentenceAblation | None) -> dict[str, Any]:
    """The row fields of the sentence-level measures for per-sentence ``scores``."""
    scores = np.asarray(scores, dtype=np.float64)
    mask = np.zeros(scores.shape[0], dtype=bool)
    mask[list(gold)] = True
    fields: dict[str, Any] = {
        "sentences": int(scores.shape[0]),
        "gold_sentences": int(mask.sum()),
        "sentence_recovery_at_gold": metrics.source_recovery(scores, mask, int(mask.sum())) if mask.any() else None,
        f"sentence_recovery_at_{RECOVERY_K}": metrics.source_recovery(scores, mask, RECOVERY_K) if mask.any() else None,
    }
    if ablation is not None:
        values = ablation.curve(scores)
        drops = metrics.ablation_drops(values)
        fields.update(
            ablation_k=list(ABLATION_KS),
            ablation_curve=values,
            ablation_drop_1=float(drops[ABLATION_KS.index(1)]),
            ablation_drop_3=float(drops[ABLATION_KS.index(3)]),
            ablation_auc=metrics.ablation_auc(ABLATION_KS, values),
        )
    return fields


def document_measures(scores: Any, needle: int) -> dict[str, Any]:
    """The row fields of the document-level measure for per-document ``scores``."""
    scores = np.asarray(scores, dtype=np.float64)
    top = int(metrics.rank_positions(scores)[0])
    return {
        "documents": int(scores.shape[0]),
        "needle_document": needle,
        "top_document": top,
        "top_document_correct": float(metrics.top_source_hit(scores, needle)),
    }
