"""Memory planned before a capture: what the capture and the Run will keep, and the trace's working peak.

Per decoder layer ``l`` on device ``dev(l)`` and ``N`` tokens (``b_s`` bytes of the store dtype, ``b_m`` of the
model's):

- the capture keeps ``x_in`` and ``x_mid``: ``2 · N · D · b_s``; a sandwich norm's scale ``4 · N``; where the
  forward pass gives it for free, each row's log-sum-exp ``4 · H · N`` (``capture.recording_logsumexp``);
  all of it on ``dev(l)``, or on the CPU with ``offload``;
- the Run keeps, between traces, a softmax layer's keys and values, ``N · G · (d_k + d_v) · b_m`` on ``dev(l)``
  (``G`` = every query head for MLA, whose per-head keys are expanded from the latent; a layer that reuses
  another's keys and values keeps none), and the hybrids' whole decompositions (Gated DeltaNet, gated
  attention, Mamba-2) while they fit ``layers.dispatch.HYBRID_CACHE_BYTES``: their size is measured by building
  the layer's decomposition on short synthetic inputs and extending the line to ``N``;
- the trace's working peak on a device is its largest layer's: the float32 copies of ``x_in``/``x_mid``
  (``8 · N · D``), ``x_in`` in the model's dtype, a block of ``chunk`` attention rows with their logits
  (``8 · chunk · H · N``), and a hybrid decomposition the cache could not keep. The forward pass of the capture
  needs ``N · (2 · D + 3 · I) · b_m`` (``I`` the MLP width) on top, while it runs.

``plan_memory`` does the arithmetic from ``LayerShape``s (``benchmarks/memory_table.py`` writes them for real
configs); ``layer_shapes`` reads them from a loaded adapter; ``check_plan`` compares a plan with the free memory
of each device; ``fit`` (``planned_capture`` for an adapter, called by ``Model.run``) falls back to a capture on
the CPU or raises ``MemoryPlanError`` with the way out. The trace's ``chunk_size`` is planned at its default.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .capture import Capture
from .contract import ArchitectureAdapter
from .errors import MemoryPlanError
from .kernels.proximity import Workspace
from .kernels.rows import plain_causal
from .layers.dispatch import HYBRID_CACHE_BYTES, layer_kind
from .layers.softmax import key_value_layer

# The lengths a hybrid layer's decomposition is built at to measure its size: bytes = fixed + per token · N through
# the first two; the third, between them, tells whether some part is padded to whole chunks of the first.
PROBE_LENGTHS = (64, 128, 96)
# Memory left free on every device beyond the plan (allocator fragmentation, the framework's own buffers).
HEADROOM = 0.10


@dataclass(frozen=True)
class LayerShape:
    """What one decoder layer makes a capture and a trace hold (see the module docstring for the formula)."""

    device: str  # where the layer runs (its parameters' device, or an offloading hook's): "cpu", "cuda:0", …
    hidden: int  # D
    heads: int = 0  # H softmax query heads (0: the layer has no softmax rows)
    kv_heads: int = 0  # heads of the keys and values the Run keeps (0: none kept under this layer)
    key_dim: int = 0  # d_k of a kept key
    value_dim: int = 0  # d_v of a kept value
    sandwich: bool = False  # a sandwich norm's per-token scale is kept
    logsumexp: bool = False  # the capture records each row's log-sum-exp
    decomposition_fixed: int = 0  # bytes of a hybrid decomposition that do not grow with N
    decomposition_per_token: float = 0.0  # bytes per token of a hybrid decomposition
    decomposition_chunk: int = 0  # a part of the decomposition pads N to a multiple of this (0: none)


@dataclass
class DevicePlan:
    """The bytes one device needs: what stays (capture, cache) and what a trace needs on top while it runs."""

    capture: int = 0
    cache: int = 0
    working: int = 0

    @property
    def total(self) -> int:
        return self.capture + self.cache + self.working


@dataclass
class MemoryPlan:
    """Per device, what a capture of ``tokens`` tokens and its traces need; ``as_info`` for ``TraceResult.info``."""

    tokens: int
    store_dtype: str
    offload: bool
    devices: dict[str, DevicePlan] = field(default_factory=dict)
    free: dict[str, int] = field(default_factory=dict)  # filled by ``check_plan``
    fallback: str | None = None  # what was changed to make it fit, if anything

    @property
    def kept(self) -> int:
        """Bytes the capture and the Run keep, all devices together."""
        return sum(plan.capture + plan.cache for plan in self.devices.values())

    def as_info(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "store_dtype": self.store_dtype,
            "offload": self.offload,
            "fallback": self.fallback,
            "devices": {
                name: {"capture": p.capture, "cache": p.cache, "working": p.working, "free": self.free.get(name)}
                for name, p in self.devices.items()
            },
        }


def plan_memory(
    shapes: list[LayerShape],
    tokens: int,
    *,
    store_bytes: int,
    model_bytes: int,
    offload: bool = False,
    chunk_size: int = 128,
    intermediate: int = 0,
    store_dtype: str = "",
) -> MemoryPlan:
    """The plan for ``shapes`` (one per decoder layer, in order) over ``tokens`` tokens (module docstring)."""
    n = tokens
    plan = MemoryPlan(tokens=n, store_dtype=store_dtype, offload=offload)

    def device(name: str) -> DevicePlan:
        return plan.devices.setdefault(name, DevicePlan())

    device("cpu").capture += 8 * n  # the token ids
    hybrid_kept = 0
    for shape in shapes:
        layer = device(shape.device)
        kept = 2 * n * shape.hidden * store_bytes + 4 * n * (shape.sandwich + shape.heads * shape.logsumexp)
        device("cpu" if offload else shape.device).capture += kept
        layer.cache += n * shape.kv_heads * (shape.key_dim + shape.value_dim) * model_bytes
        # chunked operators (the delta rule's) pad the sequence to a whole number of chunks: measured at multiples
        # of the chunk, the line is exact there and an upper bound in between
        chunk = shape.decomposition_chunk
        padded = -(-n // chunk) * chunk if chunk else n
        decomposition = shape.decomposition_fixed + round(shape.decomposition_per_token * padded)
        unkept = 0
        if decomposition:
            if hybrid_kept + decomposition <= HYBRID_CACHE_BYTES:  # as layers.dispatch.mixing_layer keeps them
                hybrid_kept += decomposition
                layer.cache += decomposition
            else:
                unkept = decomposition
        working = 8 * n * shape.hidden + n * shape.hidden * model_bytes + 8 * chunk_size * shape.heads * n + unkept
        forward = n * (2 * shape.hidden + 3 * intermediate) * model_bytes
        layer.working = max(layer.working, working, forward)
    return plan


def layer_shapes(
    adapter: ArchitectureAdapter, *, store_dtype: torch.dtype | None = None, offload: bool = False
) -> list[LayerShape]:
    """Each decoder layer's ``LayerShape``, read from the adapter and the model's modules (no forward pass);
    a hybrid layer's decomposition is measured on short synthetic captures (``PROBE_LENGTHS``) stored as a
    capture with this ``store_dtype`` and ``offload`` would be (what it shares with the capture is not counted)."""
    parameter = next(adapter.base_model().parameters())
    config = getattr(adapter.base_model(), "config", None)
    flash = parameter.dtype == torch.float32 and getattr(config, "_attn_implementation", None) == "sdpa"
    shapes: list[LayerShape] = []
    # a hybrid kind's decomposition, measured on the first layer of that kind whose weights are loaded (an
    # offloaded layer's sit on the meta device until its forward runs); a kind with none loaded counts 0
    measured: dict[str, tuple[int, float, int]] = {}
    for index in range(adapter.num_layers()):
        kind = layer_kind(adapter, index)
        loaded = next(adapter.layer(index).parameters()).device.type != "meta"
        if kind != "attention" and kind not in measured and loaded:
            measured[kind] = _measure_decomposition(adapter, index, _hidden_size(adapter, index), store_dtype, offload)
    for index in range(adapter.num_layers()):
        device = layer_device(adapter, index)
        hidden = _hidden_size(adapter, index)
        sandwich = adapter.sandwich_norm(index) is not None
        kind = layer_kind(adapter, index)
        if kind != "attention":
            fixed, per_token, chunk = measured.get(kind, (0, 0.0, 0))
            heads = _gated_heads(adapter, index)
            shapes.append(
                LayerShape(
                    device=device, hidden=hidden, heads=heads, sandwich=sandwich,
                    logsumexp=heads > 0 and flash and device == "cpu",
                    decomposition_fixed=fixed, decomposition_per_token=per_token, decomposition_chunk=chunk,
                )
            )
            continue
        rule = adapter.attention_rule(index)
        attention = getattr(adapter.layer(index), "self_attn", None)
        value_dim = int(getattr(attention, "v_head_dim", None) or rule.head_dim)
        owns = key_value_layer(adapter, index) == index
        records = (
            flash and device == "cpu" and plain_causal(rule) and rule.sink_logits is None and value_dim == rule.head_dim
        )
        shapes.append(
            LayerShape(
                device=device, hidden=hidden, heads=rule.num_heads,
                kv_heads=rule.num_kv_heads if owns else 0, key_dim=rule.head_dim, value_dim=value_dim,
                sandwich=sandwich, logsumexp=records,
            )
        )
    return shapes


def layer_device(adapter: ArchitectureAdapter, index: int) -> str:
    """Where layer ``index`` runs: its parameters' device, or for a layer whose weights accelerate keeps
    offloaded (on the meta device until its forward), the execution device of its hook."""
    layer = adapter.layer(index)
    device = next(layer.parameters()).device
    hook = getattr(layer, "_hf_hook", None)
    if device.type == "meta" and getattr(hook, "execution_device", None) is not None:
        return str(torch.device(hook.execution_device))
    return str(device)


def _hidden_size(adapter: ArchitectureAdapter, index: int) -> int:
    """D: the width of the residual entering layer ``index`` (from the config, else the embedding)."""
    config = getattr(adapter.base_model(), "config", None)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    if hidden is None:
        hidden = adapter.base_model().get_input_embeddings().embedding_dim
    return int(hidden)


def _gated_heads(adapter: ArchitectureAdapter, index: int) -> int:
    """Softmax query heads inside a hybrid layer (gated attention, Falcon-H1's parallel attention), else 0."""
    attention = getattr(adapter.layer(index), "self_attn", None)
    config = getattr(attention, "config", None)
    return int(getattr(config, "num_attention_heads", 0) or 0) if attention is not None else 0


def _measure_decomposition(
    adapter: ArchitectureAdapter, index: int, hidden: int, store_dtype: torch.dtype | None, offload: bool
) -> tuple[int, float, int]:
    """``(fixed bytes, bytes per token, chunk)`` of layer ``index``'s decomposition, built at ``PROBE_LENGTHS``
    (``chunk`` 0 where the size is a straight line in N, else the first length, to which N is rounded up)."""
    parameter = next(adapter.layer(index).parameters())
    generator = torch.Generator().manual_seed(0)
    sizes = []
    for length in PROBE_LENGTHS:
        store = torch.device("cpu") if offload else parameter.device
        x = torch.randn(length, hidden, generator=generator).to(device=store, dtype=store_dtype or parameter.dtype)
        count = adapter.num_layers()
        capture = Capture(
            input_ids=torch.zeros(length, dtype=torch.long),
            x_in=[x] * count,
            x_mid=[x] * count,
            sandwich_scale=[torch.ones(length, device=store)] * count,
            logsumexp=[None] * count,
        )
        with torch.inference_mode():
            layer = adapter.mixing_layer(index, capture)  # type: ignore[attr-defined]
            # what a trace computes once and keeps on the layer (chunk factors, bias terms) is part of its size
            sinks = torch.arange(length - 4, length)
            layer.span_parts(sinks, torch.ones(4), length, 128, Workspace())
            layer.residual(sinks)
        sizes.append(held_bytes(layer, shared=[x, *capture.sandwich_scale[:1]]))
    (short, long, between), (small, large, middle) = PROBE_LENGTHS, sizes
    per_token = (large - small) / (long - short)
    fixed = round(small - per_token * short)
    return fixed, per_token, 0 if middle == fixed + round(per_token * between) else short


def held_bytes(obj: object, *, shared: list[torch.Tensor] = (), depth: int = 2) -> int:  # type: ignore[assignment]
    """Bytes of the distinct storages behind the tensors ``obj`` holds in its attributes (``depth`` levels down,
    as ``layers.dispatch.tensor_bytes`` walks), leaving out those of ``shared`` (e.g. the capture's own)."""
    seen = {tensor.untyped_storage().data_ptr() for tensor in shared}
    total = 0

    def walk(value: object, level: int) -> None:
        nonlocal total
        for item in getattr(value, "__dict__", {}).values():
            if isinstance(item, torch.Tensor):
                storage = item.untyped_storage()
                if storage.data_ptr() not in seen:
                    seen.add(storage.data_ptr())
                    total += storage.nbytes()
            elif level > 0 and hasattr(item, "__dict__") and not isinstance(item, torch.nn.Module):
                walk(item, level - 1)

    walk(obj, depth)
    return total


def _intermediate(adapter: ArchitectureAdapter) -> int:
    """The MLP width the forward pass materialises (a dense MLP's, else an expert's, else 4·D)."""
    config = getattr(adapter.base_model(), "config", None)
    for name in ("intermediate_size", "moe_intermediate_size", "n_inner", "ffn_hidden_size"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 4 * _hidden_size(adapter, 0)


# Each adapter's layer shapes, per (store dtype, offload): a hybrid's are measured by building decompositions.
_SHAPES: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], list[LayerShape]]] = (
    weakref.WeakKeyDictionary()
)


def plan_capture(
    adapter: ArchitectureAdapter,
    tokens: int,
    *,
    store_dtype: torch.dtype | None = None,
    offload: bool = False,
    chunk_size: int = 128,
) -> MemoryPlan:
    """The plan of ``capture_residuals(adapter, ids of length tokens, store_dtype=…, store_device="cpu" if
    offload)`` and of the traces on it."""
    model_dtype = next(adapter.base_model().parameters()).dtype
    stored = store_dtype or model_dtype
    first = next(adapter.base_model().parameters())
    key = (store_dtype, offload, str(first.device), first.dtype)  # a model moved or cast is measured again
    try:
        known = _SHAPES.setdefault(adapter, {})
    except TypeError:  # an adapter that cannot be weakly referenced: measured again each time
        known = {}
    if key not in known:
        known[key] = layer_shapes(adapter, store_dtype=store_dtype, offload=offload)
    shapes = known[key]
    return plan_memory(
        shapes, tokens, store_bytes=_element_size(stored), model_bytes=_element_size(model_dtype), offload=offload,
        chunk_size=chunk_size, intermediate=_intermediate(adapter), store_dtype=str(stored).removeprefix("torch."),
    )


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def free_bytes(device: str) -> int:
    """Free memory of ``device`` in bytes: ``torch.cuda.mem_get_info`` for CUDA, available RAM for the CPU."""
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    if device.startswith("cpu"):
        try:
            import psutil

            return int(psutil.virtual_memory().available)
        except ImportError:  # psutil is optional: the kernel's own count of available pages
            return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    return 1 << 62  # a device whose free memory torch cannot tell (mps, meta, disk): not planned


def check_plan(
    plan: MemoryPlan, *, free: Callable[[str], int] | Mapping[str, int] | None = None, headroom: float = HEADROOM
) -> list[str]:
    """The devices short of memory for ``plan`` (with ``headroom`` kept free), after reading ``free`` into it."""
    read = free.get if isinstance(free, Mapping) else (free or free_bytes)  # looked up now: tests replace it
    short = []
    for name, needed in plan.devices.items():
        available = read(name)
        available = 1 << 62 if available is None else int(available)
        plan.free[name] = available
        if needed.total > available * (1 - headroom):
            short.append(name)
    return short


def planned_capture(
    adapter: ArchitectureAdapter,
    tokens: int,
    *,
    store_dtype: torch.dtype | None,
    offload: bool,
    chunk_size: int = 128,
    free: Callable[[str], int] | Mapping[str, int] | None = None,
) -> MemoryPlan:
    """The plan to capture ``tokens`` tokens of ``adapter``'s model as asked (see ``fit``)."""

    def make(store: torch.dtype | None, cpu: bool) -> MemoryPlan:
        return plan_capture(adapter, tokens, store_dtype=store, offload=cpu, chunk_size=chunk_size)

    return fit(make, store_dtype=store_dtype, offload=offload, free=free)


def fit(
    make: Callable[[torch.dtype | None, bool], MemoryPlan],
    *,
    store_dtype: torch.dtype | None,
    offload: bool,
    free: Callable[[str], int] | Mapping[str, int] | None = None,
) -> MemoryPlan:
    """``make(store_dtype, offload)`` if it fits every device; else, where an accelerator is short, the same with
    the capture offloaded to the CPU (exact: only where the capture is kept changes), marked in ``fallback``;
    else ``MemoryPlanError`` saying what is needed, what is free, and which option would make it fit."""
    plan = make(store_dtype, offload)
    short = check_plan(plan, free=free)
    if not short:
        return plan
    if not offload and any(name != "cpu" for name in short):
        moved = make(store_dtype, True)
        if not check_plan(moved, free=free):
            moved.fallback = "offload=True: the capture is kept on the CPU"
            return moved
    # a smaller store dtype changes the scores a little: offered, never chosen for the user
    options = []
    if plan.store_dtype not in ("bfloat16", "float16"):
        options.append(((torch.bfloat16, offload), "store_dtype=torch.bfloat16"))
        if not offload:
            options.append(((torch.bfloat16, True), "store_dtype=torch.bfloat16 and offload=True"))
    way = "trace fewer tokens, or free memory on that device"
    for (store, cpu), words in options:
        if not check_plan(make(store, cpu), free=free):
            way = f"pass {words} to make it fit, or trace fewer tokens"
            break
    name = short[0]
    needed, available = plan.devices[name], plan.free[name]
    part = f"capture {_gib(needed.capture)}, cache {_gib(needed.cache)}, working {_gib(needed.working)}"
    raise MemoryPlanError(
        f"a trace of {plan.tokens} tokens needs {_gib(needed.total)} on {name} ({part}) but only "
        f"{_gib(available)} is free there; {way}"
    )


def _gib(count: float) -> str:
    """A byte count in GiB, or MiB / KiB where it is smaller."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if count >= scale:
            return f"{count / scale:.2f} {unit}"
    return f"{count / 2**10:.2f} KiB"
