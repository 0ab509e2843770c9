"""Occlusion (leave one group out): how much the span's log-probability drops without each prompt group.

The prompt tokens before the last sink are split into groups — ``k`` equal groups of consecutive
tokens (default 20), or sentences — and each group in turn is replaced *in place* (positions kept)
by the neutral token (pad, else EOS). A group's score is ``f(x) − f(x without the group)``, with ``f``
the span's weighted teacher-forced log-probability (see ``objective``); every token of the group gets
its group's score (signed). Generated positions are never occluded and get 0, so recursive hops add
nothing to this method. One batched forward over the k + 1 sequences.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..errors import SpanTraceError
from ..protocols import RunView
from .base import AttributionMethod, SinkScores
from .objective import auto_batch_size, neutral_token_id, objective_for, replaced_log_probs
from .registry import register_method

GROUPINGS = ("equal", "sentences")
DEFAULT_GROUPS = 20
SENTENCE_ENDS = (".", "!", "?", "。", "！", "？")


def equal_groups(length: int, groups: int) -> list[torch.Tensor]:
    """Positions ``0 … length − 1`` in ``min(groups, length)`` consecutive groups of (nearly) equal size."""
    if length == 0:
        return []
    return list(torch.tensor_split(torch.arange(length), min(groups, length)))


def sentence_groups(tokens: list[str]) -> list[torch.Tensor]:
    """Consecutive positions of ``tokens`` cut after each token that ends a sentence or holds a newline."""
    groups, start = [], 0
    for position, token in enumerate(tokens):
        if "\n" in token or token.rstrip().endswith(SENTENCE_ENDS):
            groups.append(torch.arange(start, position + 1))
            start = position + 1
    if start < len(tokens):
        groups.append(torch.arange(start, len(tokens)))
    return groups


@register_method
class Occlusion(AttributionMethod):
    name = "occlusion"
    description = "Leave-one-group-out: replace each prompt group by pad/EOS; score = drop in the span log-prob."
    cost: ClassVar[str] = "O(k·forward)"
    signed: ClassVar[bool] = True  # scores can be negative

    def __init__(self, groups: int = DEFAULT_GROUPS, grouping: str = "equal", batch_size: int | None = None) -> None:
        if not isinstance(groups, int) or groups < 1:
            raise SpanTraceError(f"occlusion needs groups ≥ 1; got {groups!r}")
        if grouping not in GROUPINGS:
            raise SpanTraceError(f"occlusion groups prompt tokens by one of {GROUPINGS}; got {grouping!r}")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise SpanTraceError(f"batch_size must be a positive whole number or None (automatic); got {batch_size!r}")
        self.groups = groups
        self.grouping = grouping
        self.batch_size = batch_size

    @torch.inference_mode()
    def score(self, run: RunView, sinks: torch.Tensor, sink_weights: torch.Tensor, *, chunk_size: int) -> SinkScores:
        scores = torch.zeros(run.num_tokens, dtype=torch.float32)
        objective = objective_for(run, sinks, sink_weights)
        if objective is None:
            return SinkScores(scores=scores, notes=("no sink can be predicted; scores are 0",))
        occludable = min(run.prompt_length, objective.length)
        if self.grouping == "equal":
            groups = equal_groups(occludable, self.groups)
        else:
            groups = sentence_groups(run.tokens[:occludable])
        if not groups:
            return SinkScores(scores=scores, notes=(*objective.notes, "no prompt token before the span to occlude"))
        ids = torch.tensor(run.token_ids[: objective.length], dtype=torch.long)
        sequences = ids.repeat(len(groups) + 1, 1)  # [k + 1, T]: the original first
        neutral = neutral_token_id(run)
        for row, group in enumerate(groups, start=1):
            sequences[row, group] = neutral
        batch = self.batch_size or auto_batch_size(run, ids.shape[0], objective.readout.shape[0], len(groups) + 1)
        values = replaced_log_probs(run, objective, ids, sequences, batch).cpu()  # [k + 1]
        for row, group in enumerate(groups, start=1):
            scores[group] = values[0] - values[row]
        return SinkScores(scores=scores, notes=objective.notes)

