"""What span selection and the attribution methods read of a run, as small Protocols.

``spantrace.api.Run`` and ``spantrace.api.Model`` satisfy them; the layers below the API (``spans``,
``methods``) name these instead, so nothing below imports the API back.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from .capture import Capture
from .contract import ArchitectureAdapter
from .layers.softmax import KeyValueCache
from .text.layout import Layout


class ModelView(Protocol):
    """The loaded model a run was made with: the Hugging Face module and its tokenizer (None: ids only)."""

    hf_model: nn.Module
    tokenizer: Any | None

    @property
    def device(self) -> torch.device: ...


class RunView(Protocol):
    """One captured forward pass over prompt + generation.

    token_ids / tokens: [N] ids and their text; positions ``prompt_length…N-1`` are the generation.
    capture: the kept residual stream; key_value_cache: keys and values per layer, filled lazily and shared by
    every trace of the run; layout: every token's character range and the given pieces (messages, documents).
    """

    model: ModelView
    capture: Capture
    prompt_length: int
    token_ids: list[int]
    tokens: list[str]
    layout: Layout
    key_value_cache: KeyValueCache
    model_inputs: dict[str, Any]  # what the model read besides the token ids (images); empty for text

    @property
    def adapter(self) -> ArchitectureAdapter: ...

    @property
    def num_tokens(self) -> int: ...
