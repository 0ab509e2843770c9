"""Fixtures of the per-method tests (the shared values live in ``method_cases``)."""

from __future__ import annotations

import pytest
import torch
from method_cases import ARCHES, make_run

import spantrace


@pytest.fixture(scope="session", params=ARCHES)
def run(request) -> spantrace.Run:
    return make_run(request.param)


@pytest.fixture(scope="session")
def eager_attentions(run) -> list[torch.Tensor]:
    """The model's own attention probabilities, L x [H, N, N] float64 (test reference only)."""
    ids = torch.tensor(run.token_ids)[None]
    with torch.no_grad():
        output = run.model.hf_model(ids, output_attentions=True)
    return [a[0].double() for a in output.attentions]
