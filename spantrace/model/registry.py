"""Pick the adapter for a model by its ``config.model_type``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import UnsupportedArchitectureError
from .adapter import ArchitectureAdapter
from .gpt2 import GPT2Adapter
from .llama import LlamaStyleAdapter

_ADAPTERS = {
    "llama": LlamaStyleAdapter,
    "mistral": LlamaStyleAdapter,
    "qwen2": LlamaStyleAdapter,
    "qwen3": LlamaStyleAdapter,
    "gemma": LlamaStyleAdapter,
    "gemma2": LlamaStyleAdapter,
    "gemma3_text": LlamaStyleAdapter,
    "phi3": LlamaStyleAdapter,
    "gpt2": GPT2Adapter,
}

SUPPORTED_ARCHITECTURES: tuple[str, ...] = tuple(_ADAPTERS)

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def adapter_for(model: PreTrainedModel) -> ArchitectureAdapter:
    """The adapter that knows ``model``'s internals, or a clear error naming what is missing."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in _ADAPTERS:
        raise UnsupportedArchitectureError(
            f"model type {model_type!r} ({type(model).__name__}) is not supported; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}. An adapter needs the decoder layers, their "
            "pre-attention and pre-MLP norms, the q/k/v/o projections and the rotary embedding."
        )
    return _ADAPTERS[model_type](model)
