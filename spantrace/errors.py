"""Errors raised by spantrace. Every one says what went wrong and what to do about it."""

from __future__ import annotations


class SpanTraceError(Exception):
    """Base class of every error spantrace raises on purpose."""


class ModelLoadError(SpanTraceError):
    """A model or tokenizer could not be found, verified or loaded."""


class UnsupportedArchitectureError(SpanTraceError):
    """The model's architecture lacks a piece that attribution needs."""


class InputError(SpanTraceError, ValueError):
    """A prompt, output or token sequence is empty or malformed."""


class SpanError(SpanTraceError, ValueError):
    """A span is empty, out of range, or not inside the generated text."""


class ResultFormatError(SpanTraceError, ValueError):
    """A saved result could not be read back."""


class GroupingError(SpanTraceError, ValueError):
    """A grouping is unknown, malformed, or one the result has no boundaries for."""


class NonFiniteError(SpanTraceError):
    """The model's weights, its forward pass, its logits or a method's scores went NaN or infinite."""


class RegistryError(SpanTraceError, ValueError):
    """A method or adapter registration is refused, or a registered one returned something it must not."""


class MemoryPlanError(SpanTraceError):
    """A capture and its traces would not fit the free memory of a device (planned before the capture starts)."""


class OffloadedWeightError(ModelLoadError):
    """A weight sits on the meta device and no accelerate offload hook will load it."""


class QuantizedWeightError(UnsupportedArchitectureError):
    """A weight is kept quantised inside its module (bitsandbytes, FP8, packed MXFP4) and cannot be read as numbers."""
