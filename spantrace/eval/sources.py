"""Source-level measures: a method's token scores pooled per source (sentence or document), then judged.

The same rules hold for every method, and for the ``random`` baseline (a seeded random order of the
sources in place of a method's ranking); the formulas and degenerate cases are in ``metrics``.

- Pooling is ``TraceResult.by``'s (``spantrace.groups.pool``): a source's score is the sum of the scores of
  the tokens whose first non-space character lies in it, template and special tokens left out.
- HotpotQA sources are the context sentences (``Sample.metadata["sentences"]``, character ranges of the
  sample's text); their token ranges come from the prompt's offsets and are pooled as custom groups.
  Measures: sentence recovery at k = the number of gold sentences and at k = 5, and the ablation curve.
- The ablation curve drops the top-k sentences (``ABLATION_KS``) from the sample's text, builds and
  tokenises the prompt again (``prompts.build_prompt``) and teacher-forces the *original* generated ids
  after it: ``a(k) = Σ log p(answer | prompt without the top k)``. Each distinct set of dropped sentences
  is scored once per sample; the prompt up to the first dropped sentence is not run again
  (``PrefixScorer`` reuses the unablated prompt's keys and values), else prompts of similar length run
  in batches (``answer_log_probs``).
- docs_needle sources are the documents of the run's layout (``result.by("document")``); the measure is
  whether the top document is the one holding the needle.
"""

from __future__ import annotations

import copy
import inspect
import random
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import SpanTraceError
from ..groups import pool
from ..inputs import Document, assign, document_name
from . import metrics
from .prompts import BuiltPrompt, Sample, build_prompt

if TYPE_CHECKING:
    from ..api import Model
    from ..result import TraceResult

ABLATION_KS = (0, 1, 2, 3, 5)  # how many top-ranked sentences the ablation curve drops
RECOVERY_K = 5  # the fixed k of sentence recovery (besides k = the number of gold sentences)
RANDOM_METHOD = "random"  # the baseline row: a seeded random order of the sources
LOGIT_BUDGET = 2**26  # float32 logits kept at once by answer_log_probs (256 MiB)


def sentence_token_ranges(prompt: BuiltPrompt, sentences: Sequence[tuple[int, int]]) -> list[tuple[int, int] | None]:
    """Each sentence's ``(first, last + 1)`` prompt tokens (tokens placed by their first non-space character,
    as ``.by()`` places them); None for a sentence that places no token. ``sentences``: characters of the
    sample's text."""
    if not prompt.offsets:
        raise SpanTraceError("the prompt has no token offsets; build it with prompts.build_prompt")
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


def pooled_scores(result: TraceResult, token_ranges: Sequence[tuple[int, int] | None]) -> np.ndarray:
    """Each range's pooled score by ``groups.pool`` (template tokens left out); −∞ for a range with no token."""
    groups = [{"name": str(i), "tokens": r} for i, r in enumerate(token_ranges) if r is not None]
    scores = np.full(len(token_ranges), -np.inf)
    if not groups:
        return scores
    for source in pool(result, groups):
        scores[int(source.name)] = source.score
    return scores


def document_scores(result: TraceResult, count: int) -> np.ndarray:
    """The pooled score of each of ``count`` unnamed documents, by ``result.by("document")``; −∞ if it has none."""
    index = {document_name(i, Document("")): i for i in range(count)}
    scores = np.full(count, -np.inf)
    for source in result.by("document"):
        scores[index[source.name]] = source.score
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


def answer_log_probs(
    model: Model, prompts: Sequence[Sequence[int]], answer: Sequence[int], *, batch_size: int | None = None
) -> np.ndarray:
    """``Σ log p(answer | prompt)`` for each prompt (teacher-forced, summed over the answer's tokens).

    Prompts of similar length go together: right-padded (causal attention keeps the padding out of every
    real position), logits kept only over the answer's positions of the batch.
    """
    answer = [int(i) for i in answer]
    if not answer or not prompts or any(len(p) == 0 for p in prompts):
        raise SpanTraceError("answer_log_probs needs a non-empty answer and non-empty prompts")
    hf_model, device = model.hf_model, model.device
    vocab = hf_model.get_input_embeddings().num_embeddings
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    values = np.zeros(len(prompts))
    start = 0
    while start < len(order):
        stop = start + 1
        while stop < len(order) and (batch_size is None or stop - start < batch_size):
            span = len(prompts[order[stop]]) - len(prompts[order[start]]) + len(answer)
            if (stop - start + 1) * span * vocab > LOGIT_BUDGET:
                break
            stop += 1
        batch = [order[i] for i in range(start, stop)]
        values[batch] = _batch_log_probs(hf_model, device, [prompts[i] for i in batch], answer)
        start = stop
    return values


def _batch_log_probs(
    hf_model: Any, device: torch.device, prompts: list[Sequence[int]], answer: list[int]
) -> np.ndarray:
    lengths = [len(p) for p in prompts]
    total = max(lengths) + len(answer) - 1  # the last answer token is read, never fed
    ids = torch.zeros(len(prompts), total, dtype=torch.long)
    mask = torch.zeros(len(prompts), total, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        sequence = [int(i) for i in prompt] + answer[:-1]
        ids[row, : len(sequence)] = torch.tensor(sequence)
        mask[row, : len(sequence)] = 1
    first, last = min(lengths) - 1, max(lengths) + len(answer) - 2  # readout positions of the batch
    readout = torch.arange(first, last + 1)
    with torch.inference_mode():
        logits = hf_model(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            use_cache=False,
            logits_to_keep=readout.to(device),
            return_dict=True,
        ).logits.float()
    targets = torch.tensor(answer)
    values = []
    for row, length in enumerate(lengths):
        local = torch.arange(len(answer)) + (length - 1 - first)
        rows = logits[row, local.to(logits.device)]
        chosen = rows.gather(-1, targets.to(rows.device)[:, None])[:, 0] - torch.logsumexp(rows, dim=-1)
        values.append(float(chosen.double().sum()))
    return np.asarray(values)


class PrefixScorer:
    """``Σ log p(answer | prompt)`` for prompts that begin like a reference prompt: the reference (with the
    answer) runs once with its keys and values kept; each prompt then runs only from its first token that
    differs from the reference, on a copy of the kept keys and values cut to the shared beginning.

    ``scorer.reference_value`` is the reference prompt's own value. Models whose key/value cache cannot be
    cut raise at construction (``answer_log_probs`` then does the same work without the cache).
    """

    def __init__(self, model: Model, reference: Sequence[int], answer: Sequence[int]) -> None:
        self.model = model
        self.reference = [int(i) for i in reference]
        self.answer = [int(i) for i in answer]
        if not self.reference or not self.answer:
            raise SpanTraceError("a prefix scorer needs a non-empty prompt and answer")
        forward = inspect.signature(model.hf_model.forward).parameters
        self.cache_argument = "cache" if "cache" in forward else "past_key_values"  # renamed in transformers 5
        values, self.cache = self._forward(self.reference + self.answer[:-1], len(self.reference), 0, None)
        layers = getattr(self.cache, "layers", None)
        # Only plain per-layer key/value lists are cut here (no sliding windows, no recurrent states).
        if not layers or any(type(layer).__name__ != "DynamicLayer" for layer in layers):
            raise SpanTraceError("this model's key/value cache cannot be cut")
        self.length = len(self.reference) + len(self.answer) - 1
        self.reference_value = values

    def _forward(self, ids: list[int], prompt_length: int, start: int, cache: Any) -> tuple[float, Any]:
        readout = torch.arange(len(self.answer)) + (prompt_length - 1 - start)
        device = self.model.device
        with torch.inference_mode():
            output = self.model.hf_model(input_ids=torch.tensor([ids], device=device), use_cache=True,
                                         logits_to_keep=readout.to(device), return_dict=True,
                                         **{self.cache_argument: cache})
        logits = output.logits[0].float()
        targets = torch.tensor(self.answer, device=logits.device)[:, None]
        chosen = logits.gather(-1, targets)[:, 0] - torch.logsumexp(logits, dim=-1)
        kept = getattr(output, "cache", None) or getattr(output, "past_key_values", None)
        return float(chosen.double().sum()), kept

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
            return float(answer_log_probs(self.model, [prompt], self.answer)[0])
        cache = copy.deepcopy(self.cache)
        cache.crop(shared - self.length)  # a negative count: remove that many tokens from the end
        value, _ = self._forward(prompt[shared:] + self.answer[:-1], len(prompt), shared, cache)
        return value


class SentenceAblation:
    """The ablation curves of one sample: ``curve(scores)`` drops the top k sentences by ``scores`` for each
    k of ``ABLATION_KS`` and returns ``a(k)``; sets of dropped sentences already scored are not run again."""

    def __init__(self, model: Model, sample: Sample, generated: Sequence[int], *, chat: bool) -> None:
        self.model, self.sample, self.generated, self.chat = model, sample, list(generated), chat
        self.count = len(sample.metadata["sentences"])
        if self.count == 0:
            raise SpanTraceError(f"{sample.sample_id} has no context sentence to ablate")
        self.cache: dict[frozenset[int], float] = {}
        self.scorer: PrefixScorer | None = None
        reference = build_prompt(model.tokenizer, sample, chat=chat).ids
        try:
            self.scorer = PrefixScorer(model, reference, self.generated)
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
                build_prompt(self.model.tokenizer, ablated_sample(self.sample, sorted(s)), chat=self.chat).ids
                for s in missing
            ]
            if self.scorer is not None:
                values = [self.scorer(prompt) for prompt in prompts]
            else:
                values = list(answer_log_probs(self.model, prompts, self.generated))
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
