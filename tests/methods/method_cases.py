"""What the per-method tests share: tiny eager models of two families and one weighted sink set."""

from __future__ import annotations

import torch
from tiny_models import make_tiny_model, random_ids

import spantrace

ARCHES = ("llama", "qwen3")  # every method is checked on at least these two families
PROMPT_LENGTH = 8
NUM_TOKENS = 18
SINKS = torch.arange(13, 17)  # a span of the generation
SINK_WEIGHTS = torch.tensor([1.0, 0.5, 2.0, 1.5])  # hop k ≥ 1 passes uneven weights like these


def make_run(arch: str, *, length: int = NUM_TOKENS, seed: int = 5, **model_options) -> spantrace.Run:
    """A run of a tiny eager model (eager, so tests can read the model's own attention as a reference)."""
    model = make_tiny_model(arch, attn_implementation="eager", **model_options)
    return spantrace.load(model).run(input_ids=random_ids(length, seed=seed), prompt_length=PROMPT_LENGTH)
