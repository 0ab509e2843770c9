"""Evaluation rows recomputed here by plain implementations, not by ``eval/metrics.py``.

RISE, MAS and insertion AUC come from the row's own curves and density; Recovery@k is checked on a case whose
answer is known: a test-only method scores exactly the gold (needle) tokens, so every gold token ranked must be
among the top ``⌈frac · P⌉`` (or fill it), whatever the order in which the row builder reads the scores.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from runner_job import CONFIG, tiny_model

from spantrace.eval import metrics
from spantrace.eval.prompts import eval_prompt
from spantrace.eval.runner import config_samples, run_eval
from spantrace.methods import registry
from spantrace.methods.base import AttributionMethod, SinkScores

FLAT = 1e-6  # nats: a deletion curve whose ends differ by no more is flat (all its measures are 0)


def plain_auc(values: list[float]) -> float:
    """Trapezoid area of ``values`` over evenly spaced steps on [0, 1], summed interval by interval."""
    steps = len(values) - 1
    return sum((values[k] + values[k + 1]) / 2 for k in range(steps)) / steps


def plain_deletion(curve: list[float]) -> list[float]:
    """Each step's drop toward the last value as a share of the whole drop, clipped to [0, 1], never rising."""
    first, last = curve[0], curve[-1]
    if abs(first - last) <= FLAT:
        return [0.0] * len(curve)
    out, lowest = [], 1.0
    for value in curve:
        lowest = min(lowest, min(1.0, max(0.0, (value - last) / abs(first - last))))
        out.append(lowest)
    return out


def plain_insertion(curve: list[float]) -> list[float]:
    """Each step's rise from the first value as a share of the whole rise, clipped to [0, 1], never falling."""
    first, last = curve[0], curve[-1]
    if abs(first - last) <= FLAT:
        return [0.0] * len(curve)
    out, highest = [], 0.0
    for value in curve:
        highest = max(highest, min(1.0, max(0.0, (value - first) / abs(last - first))))
        out.append(highest)
    return out


def plain_mas(curve: list[float], density: list[float]) -> float:
    n = plain_deletion(curve)
    joined = [min(1.0, max(0.0, a + abs(a - b))) for a, b in zip(n, density, strict=True)]
    low, high = min(joined), max(joined)
    return plain_auc([(v - low) / (high - low) if high > low else 0.0 for v in joined])


def test_row_measures_equal_a_plain_recomputation(serial_rows):
    for row in serial_rows:
        assert row["rise"] == pytest.approx(plain_auc(plain_deletion(row["deletion_curve"])), abs=1e-12)
        assert row["mas"] == pytest.approx(plain_mas(row["deletion_curve"], row["density"]), abs=1e-12)
        assert row["insertion_auc"] == pytest.approx(plain_auc(plain_insertion(row["insertion_curve"])), abs=1e-12)
        density = row["density"]
        assert density[0] == 1.0 and density[-1] == 0.0
        assert all(a >= b for a, b in zip(density[:-1], density[1:], strict=True))
    assert any(row["rise"] > 0 for row in serial_rows)  # not every curve is flat: the comparison means something


@pytest.mark.parametrize("seed", range(6))
def test_metrics_equal_the_plain_ones_on_uneven_curves(seed):
    """Curves that rise and fall on the way (real ones do) with a density that is not the curve's own shape."""
    rng = np.random.default_rng(seed)
    curve = list(np.cumsum(rng.normal(-0.3, 1.0, size=9)) + 5.0)
    density = [1.0, *sorted(rng.uniform(0.0, 1.0, size=7), reverse=True), 0.0]
    assert metrics.rise(curve) == pytest.approx(plain_auc(plain_deletion(curve)), abs=1e-12)
    assert metrics.mas(curve, density) == pytest.approx(plain_mas(curve, density), abs=1e-12)
    assert metrics.insertion_auc(curve) == pytest.approx(plain_auc(plain_insertion(curve)), abs=1e-12)


class GoldOracle(AttributionMethod):
    """Scores 1 on the gold tokens of the prompt it is given (looked up by the prompt's ids), 0 elsewhere."""

    name = "test-gold-oracle"
    description = "test only: the gold tokens"
    gold: dict[tuple[int, ...], list[int]] = {}  # noqa: RUF012 — filled by the test

    def score(self, run, sinks, sink_weights, *, chunk_size):  # noqa: ANN001, ANN201
        scores = torch.zeros(run.num_tokens)
        scores[self.gold[tuple(run.token_ids[: run.prompt_length])]] = 1.0
        return SinkScores(scores=scores)


@pytest.fixture()
def oracle():
    registry.register_method(GoldOracle)
    yield GoldOracle
    registry._METHODS.pop(GoldOracle.name, None)  # noqa: SLF001 — leave the registry as it was
    GoldOracle.gold.clear()


@pytest.mark.parametrize("frac", [0.1, 0.02])
def test_recovery_of_an_oracle_is_known(tmp_path, tokenizer, oracle, frac):
    config = replace(CONFIG, methods=(oracle.name,), n=2, recovery_frac=frac)
    for sample in config_samples(config, tokenizer):
        prompt = eval_prompt(tokenizer, sample, chat=config.chat)
        oracle.gold[tuple(prompt.ids[: prompt.prompt_length])] = list(prompt.gold_positions)
    out = tmp_path / "rows.jsonl"
    run_eval(tiny_model(tokenizer), config, out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:
        gold, ranked = row["gold_tokens"], row["ranked_tokens"]
        top = min(ranked, max(1, math.ceil(round(frac * ranked, 9))))
        assert gold > 0 and top < ranked
        assert row["recovery"] == pytest.approx(min(top, gold) / gold)  # the gold tokens lead the ranking
    assert np.isfinite([row["rise"] for row in rows]).all()
