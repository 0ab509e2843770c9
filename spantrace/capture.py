"""One forward pass that keeps only the residual stream of every layer.

``x_in[l]`` is the residual entering layer l (input of its attention norm) and ``x_mid[l]`` the
residual after attention (input of its MLP norm). For sandwich-norm architectures we also keep the
per-sink scale ``1 / rms(a_i)`` of the post-attention norm (one number per token and layer).
Attention probabilities are never requested: they are recomputed per layer when needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .model.adapter import ArchitectureAdapter


@dataclass(frozen=True)
class Capture:
    """Residual stream of one forward pass over ``input_ids``."""

    input_ids: torch.Tensor  # [N] long, on CPU
    x_in: list[torch.Tensor]  # L x [N, D]
    x_mid: list[torch.Tensor]  # L x [N, D]
    sandwich_scale: list[torch.Tensor | None]  # L x ([N] float32, or None without a sandwich norm)

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
) -> Capture:
    """Run ``adapter``'s model once over ``input_ids [N]`` and keep ``x_in``/``x_mid`` per layer.

    ``store_dtype`` (e.g. ``torch.float16``) and ``store_device`` (e.g. ``"cpu"`` for a GPU model)
    shrink what is kept; the arithmetic later upcasts to float32.
    """
    num_layers = adapter.num_layers()
    x_in: list[torch.Tensor | None] = [None] * num_layers
    x_mid: list[torch.Tensor | None] = [None] * num_layers
    scales: list[torch.Tensor | None] = [None] * num_layers

    def keep(t: torch.Tensor) -> torch.Tensor:
        t = t[0].detach()  # drop the batch axis: [N, D]
        stored = t.to(dtype=store_dtype or t.dtype, device=store_device or t.device)
        return stored.clone() if stored.data_ptr() == t.data_ptr() else stored

    handles = []
    for index in range(num_layers):

        def keep_in(module, args, kwargs, index=index):
            x_in[index] = keep(_first_tensor(args, kwargs))

        def keep_mid(module, args, kwargs, index=index):
            x_mid[index] = keep(_first_tensor(args, kwargs))

        handles.append(adapter.layer(index).register_forward_pre_hook(keep_in, with_kwargs=True))
        handles.append(adapter.mid_hook_module(index).register_forward_pre_hook(keep_mid, with_kwargs=True))
        sandwich = adapter.sandwich_norm(index)
        if sandwich is not None:

            def keep_scale(module, args, kwargs, index=index, eps=sandwich.eps):
                attention_out = _first_tensor(args, kwargs)[0].float()  # [N, D]
                scale = torch.rsqrt(attention_out.pow(2).mean(-1) + eps)  # [N]
                scales[index] = scale.to(store_device) if store_device is not None else scale

            handles.append(sandwich.module.register_forward_pre_hook(keep_scale, with_kwargs=True))

    base = adapter.base_model()
    device = next(base.parameters()).device
    try:
        base(input_ids=input_ids[None].to(device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    missing = [i for i in range(num_layers) if x_in[i] is None or x_mid[i] is None]
    if missing:
        raise RuntimeError(f"capture hooks did not fire for layers {missing}; the adapter's hook points are wrong")
    return Capture(
        input_ids=input_ids.detach().cpu(),
        x_in=list(x_in),  # type: ignore[arg-type]
        x_mid=list(x_mid),  # type: ignore[arg-type]
        sandwich_scale=scales,
    )
