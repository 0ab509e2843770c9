"""Pick the adapter for a model by its ``config.model_type``; users add their own with ``register_adapter``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..contract import ArchitectureAdapter
from ..errors import SpanTraceError, UnsupportedArchitectureError
from .catalog import refusal_reason
from .deepseek import DeepseekV3Adapter
from .gemma4 import Gemma4Adapter
from .gpt2 import GPT2Adapter
from .hybrid import QwenHybridAdapter
from .llama import LlamaStyleAdapter
from .llama4 import Llama4Adapter
from .mamba_hybrid import Mamba2HybridAdapter
from .olmo import PostNormAdapter

if TYPE_CHECKING:
    from transformers import PreTrainedModel

AdapterFactory = Callable[["PreTrainedModel"], ArchitectureAdapter]

_ADAPTERS: dict[str, AdapterFactory] = {
    "llama": LlamaStyleAdapter,
    "mistral": LlamaStyleAdapter,
    "qwen2": LlamaStyleAdapter,
    "qwen3": LlamaStyleAdapter,
    "gemma": LlamaStyleAdapter,
    "gemma2": LlamaStyleAdapter,
    "gemma3_text": LlamaStyleAdapter,
    "phi3": LlamaStyleAdapter,
    "gpt2": GPT2Adapter,
    # softmax attention with a twist the Llama-style adapter reads from the modules (docs/architectures.md)
    "gpt_oss": LlamaStyleAdapter,
    "smollm3": LlamaStyleAdapter,
    "glm4": LlamaStyleAdapter,
    "granite": LlamaStyleAdapter,
    "granitemoe": LlamaStyleAdapter,
    "ministral3": LlamaStyleAdapter,
    "mistral3": LlamaStyleAdapter,
    "gemma3": LlamaStyleAdapter,
    # only the MLP differs (mixture of experts): attention attribution is the Llama-style one
    "qwen3_moe": LlamaStyleAdapter,
    "glm4_moe": LlamaStyleAdapter,
    "seed_oss": LlamaStyleAdapter,
    "hy_v3": LlamaStyleAdapter,
    "mixtral": LlamaStyleAdapter,
    "qwen2_moe": LlamaStyleAdapter,
    "phimoe": LlamaStyleAdapter,
    "ernie4_5": LlamaStyleAdapter,
    "ernie4_5_moe": LlamaStyleAdapter,
    "exaone": LlamaStyleAdapter,
    "starcoder2": LlamaStyleAdapter,
    "nemotron": LlamaStyleAdapter,
    "olmo": LlamaStyleAdapter,
    "hunyuan_v1_dense": LlamaStyleAdapter,
    "hunyuan_v1_moe": LlamaStyleAdapter,
    # per-layer head shapes, v_norm, k_eq_v, KV sharing across layers (spantrace/model/gemma4.py)
    "gemma4_text": Gemma4Adapter,
    "gemma4": Gemma4Adapter,
    # Multi-head Latent Attention: DeepSeek-V3/R1, Kimi K2 (spantrace/model/deepseek.py)
    "deepseek_v3": DeepseekV3Adapter,
    # no norm before attention, one on its output (spantrace/model/olmo.py)
    "olmo2": PostNormAdapter,
    "olmo3": PostNormAdapter,
    "exaone4": PostNormAdapter,
    # complex rotary, rotary-free layers with a query temperature, chunked attention (spantrace/model/llama4.py)
    "llama4_text": Llama4Adapter,
    # hybrids: Gated DeltaNet and gated full attention, split exactly (spantrace/model/hybrid.py, docs/hybrids.md)
    "qwen3_5": QwenHybridAdapter,
    "qwen3_5_text": QwenHybridAdapter,
    "qwen3_5_moe": QwenHybridAdapter,
    "qwen3_5_moe_text": QwenHybridAdapter,
    "qwen3_next": QwenHybridAdapter,
    # hybrids: Mamba-2 mixers and softmax attention (Falcon-H1: both in parallel), split exactly
    # (spantrace/model/mamba_hybrid.py, docs/hybrids.md)
    "nemotron_h": Mamba2HybridAdapter,
    "granitemoehybrid": Mamba2HybridAdapter,
    "bamba": Mamba2HybridAdapter,
    "falcon_h1": Mamba2HybridAdapter,
}


def register_adapter(model_type: str, factory: AdapterFactory, *, replace: bool = False) -> None:
    """Trace models whose ``config.model_type`` is ``model_type`` with ``factory(model)``.

    ``factory`` takes the transformers model and returns an object that implements
    ``spantrace.model.adapter.ArchitectureAdapter``. Every model is still checked at load (the adapter
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
