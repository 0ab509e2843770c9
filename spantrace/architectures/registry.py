"""Pick the adapter for a model by its ``config.model_type``; the built-in families and users add theirs with
``register_adapter`` (this module imports no family file: ``spantrace.architectures`` registers them).

A clash is refused unless ``replace=True``; ``unregister_adapter`` restores what a replacement shadowed. What a
factory returns is checked before it is used: None or an object without the adapter's members is refused in one
line naming the factory."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..contract import ArchitectureAdapter
from ..errors import RegistryError, UnsupportedArchitectureError
from ..shadowing import ShadowingTable
from .catalog import refusal_reason

if TYPE_CHECKING:
    from transformers import PreTrainedModel

AdapterFactory = Callable[["PreTrainedModel"], ArchitectureAdapter]

# config.model_type -> adapter factory; the family files of this package fill it through ``register_adapter``
# when ``spantrace.architectures`` is imported, and users add theirs the same way.
_TABLE: ShadowingTable[AdapterFactory] = ShadowingTable()
_ADAPTERS = _TABLE.entries  # model_type -> the factory in force
# What the capture and the self-check call on every adapter (the rest depends on the model's layer kinds).
ADAPTER_MEMBERS = ("name", "base_model", "num_layers", "layer", "mid_hook_module", "sandwich_norm")


def register_adapter(model_type: str, factory: AdapterFactory, *, replace: bool = False) -> None:
    """Trace models whose ``config.model_type`` is ``model_type`` with ``factory(model)``.

    ``factory`` takes the transformers model and returns an object that implements
    ``spantrace.contract.ArchitectureAdapter``. Every model is still checked at load (the adapter
    must reconstruct each layer's attention output), so a wrong adapter is refused, not trusted.
    ``replace=True`` overrides an adapter already registered for ``model_type`` (a built-in one too).
    """
    if not isinstance(model_type, str) or not model_type:
        raise RegistryError("register_adapter: model_type must be a non-empty string such as 'llama'")
    if not callable(factory):
        raise RegistryError(f"register_adapter: the factory for {model_type!r} must be callable (model -> adapter)")
    previous = _ADAPTERS.get(model_type)
    clash = "" if previous is None else (  # what a second registration under model_type is told
        f"an adapter is already registered for {model_type!r} ({_describe(previous)}); "
        "pass replace=True to override it"
    )
    _TABLE.add(model_type, factory, replace=replace, clash=clash)


def unregister_adapter(model_type: str) -> AdapterFactory:
    """Remove the factory registered for ``model_type`` and return it; the one it replaced is back."""
    return _TABLE.remove(model_type, missing=f"no adapter is registered for {model_type!r}")


def _describe(factory: object) -> str:
    """``module.qualname`` of a factory (a class or a function), else its repr."""
    qualname = getattr(factory, "__qualname__", None)
    return f"{getattr(factory, '__module__', '?')}.{qualname}" if qualname else repr(factory)


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
    factory = _ADAPTERS[model_type]
    adapter = factory(model)
    missing = [member for member in ADAPTER_MEMBERS if not hasattr(adapter, member)]
    if adapter is None or missing:
        got = "None" if adapter is None else f"a {type(adapter).__name__} without {', '.join(missing)}"
        raise RegistryError(
            f"the adapter factory {_describe(factory)} registered for {model_type!r} returned {got}; it must return "
            "an object implementing spantrace.contract.ArchitectureAdapter"
        )
    return adapter
