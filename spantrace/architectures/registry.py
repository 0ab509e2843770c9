"""Pick the adapter for a model by its ``config.model_type``; the built-in families and users add theirs with
``register_adapter`` (this module imports no family file: ``spantrace.architectures`` registers them)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..contract import ArchitectureAdapter
from ..errors import SpanTraceError, UnsupportedArchitectureError
from .catalog import refusal_reason

if TYPE_CHECKING:
    from transformers import PreTrainedModel

AdapterFactory = Callable[["PreTrainedModel"], ArchitectureAdapter]

# config.model_type -> adapter factory; the family files of this package fill it through ``register_adapter``
# when ``spantrace.architectures`` is imported, and users add theirs the same way.
_ADAPTERS: dict[str, AdapterFactory] = {}


def register_adapter(model_type: str, factory: AdapterFactory, *, replace: bool = False) -> None:
    """Trace models whose ``config.model_type`` is ``model_type`` with ``factory(model)``.

    ``factory`` takes the transformers model and returns an object that implements
    ``spantrace.contract.ArchitectureAdapter``. Every model is still checked at load (the adapter
    must reconstruct each layer's attention output), so a wrong adapter is refused, not trusted.
    ``replace=True`` overrides an adapter already registered for ``model_type`` (a built-in one too).
    """
    if not isinstance(model_type, str) or not model_type:
        raise SpanTraceError("register_adapter: model_type must be a non-empty string such as 'llama'")
    if not callable(factory):
        raise SpanTraceError(f"register_adapter: the factory for {model_type!r} must be callable (model -> adapter)")
    if model_type in _ADAPTERS and _ADAPTERS[model_type] is not factory and not replace:
        raise SpanTraceError(
            f"an adapter is already registered for {model_type!r}; pass replace=True to override it"
        )
    _ADAPTERS[model_type] = factory


def supported_architectures() -> tuple[str, ...]:
    """The model types spantrace has an adapter for (built-in and registered), sorted."""
    return tuple(sorted(_ADAPTERS))


# Multimodal wrappers that hold a complete causal LM (with its LM head): spantrace traces that model.
# transformers 5.24's Llama 4 wrapper cannot run a text-only forward pass, while its language model can.
_CAUSAL_LM_INSIDE = {"llama4": "language_model"}


def text_causal_lm(model: PreTrainedModel) -> PreTrainedModel:
    """The causal LM to trace: ``model`` itself, or the complete text model a multimodal wrapper holds."""
    attribute = _CAUSAL_LM_INSIDE.get(getattr(getattr(model, "config", None), "model_type", None))
    inner = getattr(model, attribute, None) if attribute else None
    if inner is not None and inner.get_output_embeddings() is not None:
        return inner
    return model


def adapter_for(model: PreTrainedModel) -> ArchitectureAdapter:
    """The adapter that knows ``model``'s internals, or a clear error naming what is missing."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    reason = refusal_reason(model_type)
    if model_type not in _ADAPTERS and reason is not None:
        raise UnsupportedArchitectureError(f"model type {model_type!r} is not supported: {reason}.")
    if model_type not in _ADAPTERS:
        raise UnsupportedArchitectureError(
            f"model type {model_type!r} ({type(model).__name__}) is not supported; see `spantrace models` for the "
            "supported ones and why others are refused, or add one with spantrace.register_adapter "
            "(docs/adding-an-architecture.md)."
        )
    return _ADAPTERS[model_type](model)
