"""Which mixing layer each decoder layer is, and how much of the hybrids' layers the Run's cache keeps.

``mixing_layer`` gives layer ``index`` split over its sources: softmax attention (``LayerInputs``), or the
adapter's own ``MixingLayer`` for its other layer kinds (a hybrid's gated attention, Gated DeltaNet, Mamba-2).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..capture import Capture
from ..contract import ArchitectureAdapter, MixingLayer
from ..offload import materialized
from .softmax import KeyValueCache, layer_inputs


def mixing_layer(
    adapter: ArchitectureAdapter, capture: Capture, index: int, cache: KeyValueCache | None = None
) -> MixingLayer:
    """Layer ``index`` split over its sources: softmax attention (``LayerInputs``), or whatever the adapter's
    optional ``mixing_layer(index, capture)`` returns for its other layer kinds (kept in ``cache``)."""
    if layer_kind(adapter, index) == "attention":
        return layer_inputs(adapter, capture, index, cache)
    if cache is not None and index in cache:
        return cache[index]  # type: ignore[return-value]
    layer = adapter.mixing_layer(index, capture)  # type: ignore[attr-defined]
    if cache is not None:
        kept = sum(tensor_bytes(entry) for entry in cache.values() if not isinstance(entry, tuple))
        if kept + tensor_bytes(layer) <= HYBRID_CACHE_BYTES:
            cache[index] = layer
    return layer


# A hybrid layer's decomposition holds ~10 tensors of [N, D] size (a softmax layer's keys and values far fewer):
# a Run keeps them between hops and traces while they fit in this many bytes, and rebuilds the rest each time.
HYBRID_CACHE_BYTES = 2 << 30


def tensor_bytes(obj: object, depth: int = 2) -> int:
    """Bytes of the tensors an object holds in its attributes (and, ``depth`` levels down, its parts')."""
    total = 0
    for value in getattr(obj, "__dict__", {}).values():
        if isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
        elif depth > 0 and hasattr(value, "__dict__") and not isinstance(value, torch.nn.Module):
            total += tensor_bytes(value, depth - 1)
    return total


def layer_kind(adapter: ArchitectureAdapter, index: int) -> str:
    """What mixes tokens in layer ``index``: "attention" (softmax), or the adapter's own ``layer_kind``."""
    kind = getattr(adapter, "layer_kind", None)
    return "attention" if kind is None else str(kind(index))


def iter_layers(
    adapter: ArchitectureAdapter, capture: Capture, cache: KeyValueCache | None = None
) -> Iterator[MixingLayer]:
    """Every layer, split over its sources, in order; ``cache`` keeps what can be reused between traces.

    On a model dispatched by accelerate, each layer's offloaded weights are loaded while the caller works on it
    (``spantrace.offload.materialized``): a layer reads its modules lazily (queries, gates) until the next one."""
    for index in range(capture.num_layers):
        with materialized(adapter.layer(index)):
            yield mixing_layer(adapter, capture, index, cache)

