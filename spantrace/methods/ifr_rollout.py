"""Token-level IFR rollout: the exhaustive recursion through every generated token (slow reference).

1. Token-wise IFR rows (``ifr``) for every generated position g up to the last sink, and for the sinks:
   ``row_g(j) = Σ_l e[l, j → g]``.
2. Each generated position g passes what it receives back along its own row, normalised over its
   earlier sources: ``P_g(j) = row_g(j) / Σ_{j′<g} row_g(j′)`` for ``j < g`` (the self edge g → g is
   dropped, which is the same as summing the geometric series of that self loop).
3. A sink's rolled-out row starts as its own ``row_i`` and, for g from the last generated position
   down to the first, moves all mass at g onto earlier positions: ``m[:g] += m[g] · P_g``, ``m[g] = 0``.
   Mass ends on the prompt only, and its total is kept: ``Σ_j m(j) = Σ_j row_i(j)``.

The span's score is the weighted mean of its sinks' rolled-out rows (``rows`` holds them). This is an
absorbing Markov chain with the prompt as the absorbing states: the O(M·N) token-level counterpart of
FlashTrace's span-level hops. Generated positions end with 0, so recursive hops on top add nothing.
A generated position whose row holds nothing before it keeps its mass (with a note).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..protocols import RunView
from .base import AttributionMethod, SinkScores
from .ifr import TokenwiseIFR
from .registry import register_method


def roll_back(
    rows: torch.Tensor, row_positions: torch.Tensor, mass: torch.Tensor, first: int
) -> tuple[torch.Tensor, list[int]]:
    """Push the mass on positions ≥ ``first`` back through their own rows until only ``[0, first)`` holds it.

    rows: [R, N] IFR rows of ``row_positions [R]`` (every position ≥ first that can hold mass);
    mass: [M, N] starting rows -> ([M, N] rolled-out rows, positions whose row had nothing before them).
    """
    mass = mass.double().clone()
    row_of = {int(position): index for index, position in enumerate(row_positions)}
    stuck: list[int] = []
    for position in range(int(row_positions.max()), first - 1, -1):  # later positions hold nothing
        held = mass[:, position].clone()  # [M]
        if not bool(held.any()):
            continue
        earlier = rows[row_of[position], :position].double()  # [position]
        total = float(earlier.sum())
        if total <= 0.0:
            stuck.append(position)
            continue
        mass[:, :position] += held[:, None] * (earlier / total)[None, :]
        mass[:, position] = 0.0
    return mass.float(), stuck


@register_method
class IFRRollout(AttributionMethod):
    name = "ifr-rollout"
    description = "Token-wise IFR rows of every generated token, rolled back through the generation to the prompt."
    cost: ClassVar[str] = "O(G·N·H·D) per layer + O(M·G·N)"

    @torch.inference_mode()
    def score(self, run: RunView, sinks: torch.Tensor, sink_weights: torch.Tensor, *, chunk_size: int) -> SinkScores:
        keep = sink_weights > 0
        sinks, sink_weights = sinks[keep], sink_weights[keep].float()
        last = int(sinks.max())
        generated = torch.arange(run.prompt_length, last + 1)
        positions = torch.unique(torch.cat([generated, sinks]))  # sorted
        tokenwise = TokenwiseIFR().score(run, positions, torch.ones(positions.shape[0]), chunk_size=chunk_size)
        rows = tokenwise.rows  # [R, N]
        index = torch.searchsorted(positions, sinks)
        rolled, stuck = roll_back(rows, positions, rows[index], first=run.prompt_length)  # [M, N]
        scores = (sink_weights[:, None] * rolled).sum(0) / sink_weights.sum()
        notes = tuple(f"generated position {p} has no earlier source in its IFR row; its mass stays" for p in stuck)
        return SinkScores(scores=scores, rows=rolled, row_positions=sinks, notes=notes)
