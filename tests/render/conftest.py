"""A small hand-made ``TraceResult`` for the renderers (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest

from spantrace import TraceResult

TOKENS = [
    "<|im_start|>", "user", "\n", "Tom", " has", " ", "3", " apples", " <", "script", ">", "alert", "(1)", "</",
    "script", ">", " 日本", "\n", "<|im_start|>", "assistant", "\n", "So", " ", "7", ".", "<|im_end|>",
]  # fmt: skip
PROMPT_LENGTH = 21


@pytest.fixture
def synthetic_result() -> TraceResult:
    n = len(TOKENS)
    rng = np.random.default_rng(0)
    hop0 = rng.random(n).astype(np.float32)
    hop0[25:] = 0.0  # nothing after the span
    hop1 = rng.random(n).astype(np.float32)
    prompt = (np.arange(n) < PROMPT_LENGTH).astype(np.float32)
    scores = prompt * (hop0 + 0.5 * hop1)
    scores[6] = 3.0  # "3" is the clear top token
    return TraceResult(
        tokens=list(TOKENS),
        token_ids=list(range(100, 100 + n)),
        prompt_length=PROMPT_LENGTH,
        span=(23, 25),
        method="flashtrace",
        scores=scores.astype(np.float32),
        hop_scores=[hop0, hop1],
        rho=[0.5, 0.25],
        recursive_span=(PROMPT_LENGTH, 25),
        timings={"capture_s": 0.25, "trace_s": 0.5, "hop0_s": 0.2, "hop1_s": 0.3},
        info={
            "model": "tiny <b>model</b>",
            "architecture": "llama",
            "method": "flashtrace",
            "options": {"hops": 1, "recursive": "generation"},
            "versions": {"spantrace": "0.1.0"},
            "notes": [],
        },
    )
