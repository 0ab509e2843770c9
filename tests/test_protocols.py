"""The Protocols that name upper types below (``protocols.RunView``, ``render.view.TracedScores``) list only what
``api.Run`` and ``result.TraceResult`` really have, so a method or a view typed against them reads nothing else."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import spantrace
from spantrace.protocols import ModelView, RunView
from spantrace.render.view import RankedToken, TracedScores
from tests.tiny_models import make_tiny_model


def members(protocol: type) -> set[str]:
    """A Protocol's attributes and methods (its own, not ``object``'s or ``Protocol``'s)."""
    names = set(getattr(protocol, "__annotations__", {}))
    names |= {name for name, _ in inspect.getmembers(protocol) if not name.startswith("_")}
    return names


@pytest.fixture(scope="module")
def run() -> spantrace.Run:
    model = spantrace.Model(make_tiny_model("llama"))
    return model.run(input_ids=list(range(3, 15)), prompt_length=8, progress=False)


def test_run_has_every_member_of_run_view(run) -> None:
    assert members(RunView) >= {"capture", "adapter", "prompt_length", "token_ids", "layout", "key_value_cache"}
    missing = [name for name in members(RunView) if not hasattr(run, name)]
    assert not missing, f"api.Run lacks {missing} that protocols.RunView promises"
    assert not [name for name in members(ModelView) if not hasattr(run.model, name)]


def test_trace_result_has_every_member_of_traced_scores(run) -> None:
    result = run.trace((8, 12), hops=0)
    missing = [name for name in members(TracedScores) if not hasattr(result, name)]
    assert not missing, f"TraceResult lacks {missing} that render.view.TracedScores promises"
    top = result.top(1)[0]
    assert not [name for name in members(RankedToken) if not hasattr(top, name)]
    assert isinstance(result.scores, np.ndarray)
