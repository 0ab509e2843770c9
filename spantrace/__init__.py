"""spantrace: explain what a language model's generated text rests on.

    import spantrace as st
    run = st.load().run("What is 17 + 25?")
    result = run.trace((run.prompt_length, run.num_tokens))
"""

from __future__ import annotations

from .api import Model, Run, load
from .architectures.registry import register_adapter, supported_architectures, unregister_adapter
from .errors import (
    GroupingError,
    InputError,
    MemoryPlanError,
    ModelLoadError,
    NonFiniteError,
    OffloadedWeightError,
    QuantizedWeightError,
    RegistryError,
    ResultFormatError,
    SpanError,
    SpanTraceError,
    UnsupportedArchitectureError,
)
from .groups import GROUPINGS, Source, SourceTable
from .loading.builtin import DEFAULT_MODEL
from .methods.registry import available_methods, list_methods, register_method, unregister_method
from .result import TopToken, TraceResult
from .version import __version__

__all__ = [
    "DEFAULT_MODEL",
    "GROUPINGS",
    "GroupingError",
    "Source",
    "SourceTable",
    "InputError",
    "MemoryPlanError",
    "Model",
    "ModelLoadError",
    "NonFiniteError",
    "RegistryError",
    "OffloadedWeightError",
    "QuantizedWeightError",
    "ResultFormatError",
    "Run",
    "SpanError",
    "SpanTraceError",
    "TopToken",
    "TraceResult",
    "UnsupportedArchitectureError",
    "__version__",
    "available_methods",
    "list_methods",
    "load",
    "register_adapter",
    "register_method",
    "supported_architectures",
    "unregister_adapter",
    "unregister_method",
]
