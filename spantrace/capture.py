"""One forward pass that keeps only the residual stream of every layer.

``x_in[l]`` is the residual entering layer l (input of its attention norm) and ``x_mid[l]`` the
residual after attention (input of its MLP norm). For sandwich-norm architectures we also keep the
per-sink scale ``1 / rms(a_i)`` of the post-attention norm (one number per token and layer).
Attention probabilities are never requested: they are recomputed per layer when needed. What the
forward pass computes anyway is kept where it is free: a float32 model on the CPU whose layer calls sdpa
with a plain causal mask gets, from the same flash-attention kernel sdpa itself runs, each row's
log-sum-exp (``logsumexp[l]``, [H, N]), which lets the trace sum rows over sinks in one fused call
(``kernels.rows.fused_row_sum``). The layer's output is bit for bit what sdpa returns.

Every kept tensor is checked to be finite as it is captured (``isfinite`` of its float32 sum, which any NaN or
infinity makes non-finite; read once after the forward pass, so no device sync per layer; a sum that overflows
on finite values is confirmed element by element before anything is raised): a forward that went NaN or
infinite stops with ``NonFiniteError`` naming where (the embedding and its token, or layer k) and the dtype,
instead of giving scores of garbage.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch

from .contract import ArchitectureAdapter
from .errors import InputError, NonFiniteError
from .kernels.rows import CPU_FLASH_ATTENTION
from .offload import execution_device, is_dispatched, materialized

# What a run may keep its residuals in: the kernels compute from floating point (upcast to float32).
STORE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class Capture:
    """Residual stream of one forward pass over ``input_ids``."""

    input_ids: torch.Tensor  # [N] long, on CPU
    x_in: list[torch.Tensor]  # L x [N, D]
    x_mid: list[torch.Tensor]  # L x [N, D]
    sandwich_scale: list[torch.Tensor | None]  # L x ([N] float32, or None without a sandwich norm)
    # L x ([H, N] float32 log-sum-exp of each row of the layer's softmax, or None where it was not recorded)
    logsumexp: list[torch.Tensor | None]
    # With model inputs (images): the position ids the model's rotary module was called with (M-RoPE: [3, 1, N]),
    # and the bidirectional blocks its mask used; None and () on a text-only run (the adapter's own positions).
    position_ids: torch.Tensor | None = None
    bidirectional_blocks: tuple[tuple[int, int], ...] = ()
    # With model inputs, on a model whose image features also join the residual after its first layers (Qwen3-VL's
    # deepstack): the image positions ([N] bool) and the features added there after layer k (entry k: [n, D]), as
    # the text model was called with them; None otherwise (a text run keeps nothing).
    deepstack: tuple[torch.Tensor, tuple[torch.Tensor, ...]] | None = None

    @property
    def num_layers(self) -> int:
        return len(self.x_in)

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor:
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    return kwargs["hidden_states"]


@torch.inference_mode()
def capture_residuals(
    adapter: ArchitectureAdapter,
    input_ids: torch.Tensor,
    *,
    store_dtype: torch.dtype | None = None,
    store_device: torch.device | str | None = None,
    model_inputs: Mapping[str, torch.Tensor] | None = None,
) -> Capture:
    """Run ``adapter``'s model once over ``input_ids [N]`` and keep ``x_in``/``x_mid`` per layer.

    ``store_dtype`` (e.g. ``torch.float16``) and ``store_device`` (e.g. ``"cpu"`` for a GPU model)
    shrink what is kept; the arithmetic later upcasts to float32. A forward pass that goes non-finite raises
    ``NonFiniteError`` saying where. ``model_inputs`` (e.g. ``pixel_values``,
    ``image_grid_thw``) go as given to the forward of the adapter's ``input_model()`` (a vision-language
    model's base, which merges the image features into the embeddings), whose position ids are kept.
    """
    check_store_dtype(store_dtype)
    num_layers = adapter.num_layers()
    x_in: list[torch.Tensor | None] = [None] * num_layers
    x_mid: list[torch.Tensor | None] = [None] * num_layers
    scales: list[torch.Tensor | None] = [None] * num_layers
    base = adapter.base_model()
    # On a model dispatched by accelerate, what a layer keeps goes where that layer runs (its trace work runs there).
    dispatched = is_dispatched(base)
    homes = [execution_device(adapter.layer(i)) if dispatched else None for i in range(num_layers)]

    watch = _FiniteWatch()

    def keep(t: torch.Tensor, index: int, where: str) -> torch.Tensor:
        t = t[0].detach()  # drop the batch axis: [N, D]
        stored = t.to(dtype=store_dtype or t.dtype, device=store_device or homes[index] or t.device)
        watch.check(where, t, stored)
        if stored.dtype == torch.float16 and t.dtype != torch.float16:  # a narrower range: it may overflow
            watch.check(where, stored, stored, stored=True)
        return stored.clone() if stored.data_ptr() == t.data_ptr() else stored

    recorder = _LogSumExpRecorder(num_layers, store_device)
    handles = []
    for index in range(num_layers):

        def keep_in(module, args, kwargs, index=index):
            # the input of layer 0 is the embedding; of layer k, layer k-1's output
            where = "the embedding" if index == 0 else f"layer {index - 1}"
            x_in[index] = keep(_first_tensor(args, kwargs), index, where)
            recorder.layer = index

        def keep_mid(module, args, kwargs, index=index):
            x_mid[index] = keep(_first_tensor(args, kwargs), index, f"layer {index}'s token mixing (attention)")
            recorder.layer = None

        handles.append(adapter.layer(index).register_forward_pre_hook(keep_in, with_kwargs=True))
        handles.append(adapter.mid_hook_module(index).register_forward_pre_hook(keep_mid, with_kwargs=True))
        with materialized(adapter.layer(index)):  # the adapter may read the norm's gain here
            sandwich = adapter.sandwich_norm(index)
        if sandwich is not None:

            def keep_scale(module, args, kwargs, index=index, eps=sandwich.eps):
                attention_out = _first_tensor(args, kwargs)[0].float()  # [N, D]
                scale = torch.rsqrt(attention_out.pow(2).mean(-1) + eps)  # [N]
                scales[index] = scale.to(store_device) if store_device is not None else scale

            handles.append(sandwich.module.register_forward_pre_hook(keep_scale, with_kwargs=True))

    device = execution_device(base) or torch.device("cpu")
    extra: dict[str, torch.Tensor] = {}
    positions: list[torch.Tensor] = []
    blocks: tuple[tuple[int, int], ...] = ()
    deepstack: list[tuple[torch.Tensor, tuple[torch.Tensor, ...]]] = []
    if model_inputs:
        base, extra = input_model(adapter), {k: _to(v, device) for k, v in model_inputs.items()}
        position_module = getattr(adapter, "position_module", None)
        if position_module is not None:

            def keep_positions(module, args, kwargs):
                if not positions:  # the first call; a model may call it once per layer type with the same ids
                    found = args[1] if len(args) > 1 else kwargs["position_ids"]
                    positions.append(found.detach().to(store_device or found.device))

            handles.append(position_module().register_forward_pre_hook(keep_positions, with_kwargs=True))
        finder = getattr(adapter, "bidirectional_blocks", None)
        blocks = tuple(finder(input_ids, model_inputs)) if finder is not None else ()
        deepstack_module = getattr(adapter, "deepstack_module", None)
        if deepstack_module is not None:

            def keep_deepstack(module, args, kwargs):
                # the text model's own arguments: where (batch of one) and what the wrapper adds after early layers
                mask, features = kwargs.get("visual_pos_masks"), kwargs.get("deepstack_visual_embeds")
                if mask is not None and features is not None:
                    kept = tuple(f.detach().to(store_device or f.device) for f in features)
                    deepstack.append((mask[0].detach().to(store_device or mask.device), kept))

            handles.append(deepstack_module().register_forward_pre_hook(keep_deepstack, with_kwargs=True))
    try:
        with recording_logsumexp(recorder):
            output = base(input_ids=input_ids[None].to(device), use_cache=False, **extra)
    finally:
        for handle in handles:
            handle.remove()
    last = getattr(output, "last_hidden_state", None)
    if isinstance(last, torch.Tensor):  # the last layer's output, through the final norm
        watch.check(f"layer {num_layers - 1} or the final norm", last[0], last[0])
    watch.raise_first(input_ids)
    missing = [i for i in range(num_layers) if x_in[i] is None or x_mid[i] is None]
    if missing:
        raise RuntimeError(f"capture hooks did not fire for layers {missing}; the adapter's hook points are wrong")
    return Capture(
        input_ids=input_ids.detach().cpu(),
        x_in=list(x_in),  # type: ignore[arg-type]
        x_mid=list(x_mid),  # type: ignore[arg-type]
        sandwich_scale=scales,
        logsumexp=recorder.kept(),
        position_ids=positions[0] if positions else None,
        bidirectional_blocks=blocks,
        deepstack=deepstack[0] if deepstack else None,
    )


def check_store_dtype(store_dtype: object) -> None:
    """Refuse a ``store_dtype`` the kernels cannot compute from (integer, bool, complex, float8), in one line."""
    if store_dtype is not None and store_dtype not in STORE_DTYPES:
        names = ", ".join(f"torch.{str(d).removeprefix('torch.')}" for d in STORE_DTYPES)
        raise InputError(f"store_dtype {store_dtype!r} cannot hold the residuals: use one of {names}, or None")


class _FiniteWatch:
    """Finiteness of every kept tensor, in the order the forward pass made them; read once at the end."""

    def __init__(self) -> None:
        self.checks: list[tuple[str, torch.Tensor, torch.dtype, bool]] = []  # (where, all finite?, dtype, stored?)
        self.kept: list[torch.Tensor] = []  # per check, the kept tensor to find the first bad token in

    def check(self, where: str, tensor: torch.Tensor, kept: torch.Tensor, *, stored: bool = False) -> None:
        """Note whether ``tensor`` (made at ``where``) is finite, without reading the answer yet."""
        # one reduction, no [N, D] mask: a tenth of isfinite().all()'s time on the CPU
        self.checks.append((where, torch.isfinite(tensor.sum(dtype=torch.float32)), tensor.dtype, stored))
        self.kept.append(kept)

    def raise_first(self, input_ids: torch.Tensor) -> None:
        """Raise NonFiniteError for the first check that failed, with the first non-finite token position."""
        if not self.checks:
            return
        device = self.checks[0][1].device
        finite = torch.stack([flag.to(device) for _, flag, _, _ in self.checks]).tolist()  # one sync
        for index in (i for i, ok in enumerate(finite) if not ok):
            where, _, dtype, stored = self.checks[index]
            rows = ~torch.isfinite(self.kept[index]).reshape(self.kept[index].shape[0], -1).all(-1)
            if not rows.any():  # only the sum overflowed: every value is finite
                continue
            position = int(rows.nonzero()[0, 0])
            raise NonFiniteError(non_finite_message(where, position, int(input_ids[position]), dtype, stored=stored))


def non_finite_message(where: str, position: int, token: int, dtype: torch.dtype, *, stored: bool = False) -> str:
    """The one line of a non-finite forward: where, which token, which dtype, and what to do."""
    name = str(dtype).removeprefix("torch.")
    if stored:
        return (
            f"the residual after {where} (token position {position}) overflows store_dtype {name}: "
            "use store_dtype=torch.bfloat16 or torch.float32"
        )
    if where == "the embedding":
        advice = f"the embedding row of token id {token} is NaN or infinite: the checkpoint is corrupt, re-download it"
    elif dtype == torch.float16:
        advice = "float16 overflows past 65504: load it in float32 or bfloat16 (dtype=torch.bfloat16)"
    elif dtype == torch.bfloat16:
        advice = "its weights may be corrupt (re-download the checkpoint), or load it in float32 to rule out overflow"
    else:
        advice = "its weights may be corrupt: re-download the checkpoint (spantrace.load checks every weight)"
    return (
        f"the model's forward went non-finite at {where}, token position {position} (token id {token}, "
        f"dtype {name}): {advice}"
    )


def input_model(adapter: ArchitectureAdapter) -> torch.nn.Module:
    """The module that takes ``input_ids`` with model inputs (images), or a one-line refusal: the one check of
    ``model_inputs`` against the model, for ``Model.run`` before any work and for a capture called directly."""
    finder = getattr(adapter, "input_model", None)
    module = finder() if finder is not None else None
    if module is not None:
        return module
    config = getattr(getattr(adapter, "model", None), "config", None)
    if getattr(config, "vision_config", None) is not None:  # an image-text wrapper traced on its text stack
        raise InputError(
            f"spantrace traces {adapter.name} on its text only: it takes no images (model_inputs) here; leave them "
            "out (the types that take images: docs/vision.md)"
        )
    raise InputError(f"{adapter.name} takes no model_inputs (a text-only model); leave `model_inputs` out")


def _to(value: object, device: torch.device) -> object:
    """A model input on the model's device (tensors only; anything else as given)."""
    return value.to(device) if isinstance(value, torch.Tensor) else value


class _LogSumExpRecorder:
    """Where the sdpa calls of one capture put their rows' log-sum-exp: one slot per layer, filled by the single
    plain call made between the layer's input hook and its mid hook (a layer with several calls keeps none)."""

    def __init__(self, num_layers: int, store_device: torch.device | str | None) -> None:
        self.layer: int | None = None
        self.slots: list[torch.Tensor | None] = [None] * num_layers
        self.calls = [0] * num_layers
        self.store_device = store_device

    def record(self, logsumexp: torch.Tensor) -> None:
        if self.layer is None:
            return
        self.calls[self.layer] += 1
        stored = logsumexp[0] if self.store_device is None else logsumexp[0].to(self.store_device)
        self.slots[self.layer] = stored

    def kept(self) -> list[torch.Tensor | None]:
        return [slot if calls == 1 else None for slot, calls in zip(self.slots, self.calls, strict=True)]


_PATCH_LOCK = threading.Lock()


@contextlib.contextmanager
def recording_logsumexp(recorder: _LogSumExpRecorder) -> Iterator[None]:
    """While inside, ``torch.nn.functional.scaled_dot_product_attention`` calls that sdpa would send to its CPU
    flash-attention kernel (float32, batch 1, causal, no mask, no dropout, as many keys as queries) go to that
    kernel directly, which returns the same output and each row's log-sum-exp; every other call is untouched.
    """
    functional = torch.nn.functional
    original = functional.scaled_dot_product_attention

    def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        plain = (
            recorder.layer is not None
            and attn_mask is None
            and dropout_p == 0.0
            and is_causal
            and query.device.type == "cpu"
            and query.dtype == key.dtype == value.dtype == torch.float32
            and query.dim() == 4
            and query.shape[0] == 1
            and query.shape[2] == key.shape[2] == value.shape[2]
            and query.shape[-1] == key.shape[-1] == value.shape[-1]
            and (query.shape[1] == key.shape[1] or (enable_gqa and query.shape[1] % key.shape[1] == 0))
        )
        if not plain:
            return original(
                query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                enable_gqa=enable_gqa,
            )
        output, logsumexp = CPU_FLASH_ATTENTION(query, key, value, 0.0, True, scale=scale)
        recorder.record(logsumexp)
        return output

    with _PATCH_LOCK:
        functional.scaled_dot_product_attention = sdpa
        try:
            yield
        finally:
            functional.scaled_dot_product_attention = original
