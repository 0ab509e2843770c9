"""Integrated gradients value by value against a plain trapezoid sum written here with the model's own forward.

``IG_j = Σ_d (x − x′)_{j,d} · Σ_k c_k ∂f/∂x_{j,d}(x′ + a_k (x − x′))`` with ``a_k = k / S``, ``c_k = 1/S`` (half at
both ends), ``x′`` the EOS embedding at every position and ``f = Σ_i w_i log p(token_i | prefix)`` read from the
Hugging Face model's logits (not from ``spantrace.readout``).
"""

from __future__ import annotations

import pytest
import torch
from method_cases import SINK_WEIGHTS, SINKS, make_run

from spantrace.methods.integrated_gradients import integrated_gradients

STEPS = 8


def plain_integrated_gradients(run, sinks: torch.Tensor, weights: torch.Tensor, steps: int) -> torch.Tensor:  # noqa: ANN001
    model = run.model.hf_model
    length = int(sinks.max())
    ids = torch.tensor(run.token_ids[:length])
    table = model.get_input_embeddings().weight.detach().double()
    inputs, baseline = table[ids], table[torch.full_like(ids, 2)]  # EOS (id 2) everywhere
    total = torch.zeros_like(inputs)
    for k in range(steps + 1):
        point = (baseline + k / steps * (inputs - baseline)).clone().requires_grad_(True)
        logits = model(inputs_embeds=point[None].to(model.dtype)).logits[0].double()
        log_probs = torch.log_softmax(logits, -1)
        f = sum(w * log_probs[s - 1, run.token_ids[s]] for s, w in zip(sinks.tolist(), weights.double(), strict=True))
        (gradient,) = torch.autograd.grad(f, point)
        total += (0.5 if k in (0, steps) else 1.0) / steps * gradient
    return ((inputs - baseline) * total).sum(-1)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_integrated_gradients_equal_a_plain_trapezoid_sum(arch: str) -> None:
    run = make_run(arch, dtype=torch.float64)
    run.model.hf_model.config.pad_token_id = None  # the neutral token is then EOS (id 2): a non-zero embedding
    want = plain_integrated_gradients(run, SINKS, SINK_WEIGHTS, STEPS)
    got = integrated_gradients(run, SINKS, SINK_WEIGHTS, steps=STEPS, batch_size=3).scores.double()
    length = want.shape[0]
    assert float(want.abs().max()) > 1e-3
    torch.testing.assert_close(got[:length], want, rtol=1e-4, atol=1e-6)
